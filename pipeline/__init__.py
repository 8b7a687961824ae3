"""Stage 1: videos -> WebDataset shards of their audio and the visual teachers' distributions."""

import logging


class _QuietBeamImport(logging.Filter):
    """Importing Beam warns, on the root logger, that Google's apitools is missing, though
    nothing here uses BigQuery: keep that line off every run's output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "apitools not found" not in record.getMessage()


logging.getLogger().addFilter(_QuietBeamImport())
