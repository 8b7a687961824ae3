"""The one exception an input's processing raises: it becomes one row of failures.parquet."""

from __future__ import annotations

from schemas import STAGES


class InputError(Exception):
    """An input cannot be processed. `stage` is one of schemas.STAGES; the message says why
    in words a person understands (it is written to failures.parquet as is)."""

    def __init__(self, stage: str, message: str, error_type: str | None = None):
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
        super().__init__(message)
        self.stage = stage
        self.message = message
        self.error_type = error_type or type(self).__name__

    def row(self, source: str) -> dict:
        """This failure as a row of failures.parquet."""
        return {
            "source": source,
            "stage": self.stage,
            "error_type": self.error_type,
            "message": self.message,
        }


def unexpected(uri: str, stage: str, err: Exception) -> InputError:
    """A bug or an odd library error still becomes a row that says what happened."""
    detail = str(err).strip().splitlines()[0] if str(err).strip() else "no details"
    return InputError(stage, f"{uri}: {type(err).__name__}: {detail}", type(err).__name__)


def os_reason(err: OSError) -> str:
    """What went wrong in words ('Is a directory'), for a message that names the file itself."""
    return err.strerror or str(err) or type(err).__name__
