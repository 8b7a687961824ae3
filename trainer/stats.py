"""What a training run measures and where it goes: each step's statistics (summed over the
ranks once), the prior baseline, the window behind each `train` line, the loaders' reports;
RUN/metrics.jsonl (+ TensorBoard) and RUN/run.json."""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from schemas.io import write_text_atomic
from trainer.distributed import Summed, gather

log = logging.getLogger("trainer")

METRICS = "metrics.jsonl"


@dataclass
class StepStats(Summed):
    """One training step's numbers on this rank (or, after `all_sum`, over all ranks)."""

    loss: torch.Tensor
    nonfinite: torch.Tensor  # 1 where the loss is NaN or infinite
    shard_errors: torch.Tensor  # shards and samples the loader skipped since the last batch
    sample_errors: torch.Tensor
    head_loss: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_sums: dict[str, torch.Tensor] = field(default_factory=dict)  # for the prior

    @classmethod
    def of(
        cls,
        loss: torch.Tensor,
        head_loss: Mapping[str, torch.Tensor],
        targets: Mapping[str, torch.Tensor],
        events: Mapping[str, list],
    ) -> StepStats:
        def count(n: int) -> torch.Tensor:
            return torch.tensor(float(n), device=loss.device)

        return cls(
            loss=loss.detach(),
            nonfinite=(~torch.isfinite(loss.detach())).double(),
            shard_errors=count(len(events["shard_errors"])),
            sample_errors=count(len(events["sample_errors"])),
            head_loss=dict(head_loss),
            teacher_sums={h: t.sum(dim=(0, 1)) for h, t in targets.items()},
        )


@dataclass
class Prior:
    """The prior baseline: always predicting the mean teacher distribution of everything
    trained on so far, so that validation shows whether the student learned anything."""

    sums: dict[str, torch.Tensor]  # per head, the teacher rows trained on, summed (float64)
    rows: int = 0

    @classmethod
    def empty(cls, heads: Mapping[str, int]) -> Prior:
        return cls({h: torch.zeros(n, dtype=torch.float64) for h, n in heads.items()})

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Prior:
        return cls({h: t.double() for h, t in state["sum"].items()}, int(state["rows"]))

    def add(self, sums: Mapping[str, torch.Tensor], rows: int) -> None:
        for head in self.sums:
            self.sums[head] += sums[head]
        self.rows += rows

    def distributions(self) -> dict[str, torch.Tensor]:
        return {h: (s / max(1, self.rows)).float() for h, s in self.sums.items()}

    def state(self) -> dict[str, Any]:
        """What checkpoints keep of it."""
        return {"sum": {h: t.float() for h, t in self.sums.items()}, "rows": self.rows}


class Metrics:
    """RUN/metrics.jsonl (appended; on resume, lines past the checkpoint are dropped) and
    TensorBoard scalars. Only rank 0 writes."""

    def __init__(self, out: Path, enabled: bool, tensorboard: bool, resume_step: int | None):
        self.path, self.enabled, self.tb = out / METRICS, enabled, None
        if not enabled:
            return
        if resume_step is not None and self.path.is_file():
            kept = [
                line
                for line in self.path.read_text(errors="replace").splitlines()
                if (record := self.parsed(line)) and record.get("step", 0) <= resume_step
            ]
            write_text_atomic(self.path, "".join(f"{line}\n" for line in kept))
        elif self.path.is_file():
            self.path.unlink()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.info("tensorboard is not installed: metrics.jsonl only")
            else:
                self.tb = SummaryWriter(str(out / "tensorboard"))

    def parsed(self, line: str) -> dict[str, Any] | None:
        """A line of an earlier run; None for a blank or torn one (a kill mid-write)."""
        if not line.strip():
            return None
        try:
            record = json.loads(line)
        except ValueError:
            log.warning("%s: dropping a torn line %.60r", self.path, line)
            return None
        return record if isinstance(record, dict) else None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for name, value in flatten(record).items():
                if isinstance(value, int | float) and name != "step":
                    self.tb.add_scalar(f"{record['kind']}/{name}", value, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


class TrainWindow:
    """The steps since the last `train` line of metrics.jsonl: their mean losses and speed."""

    def __init__(self, heads: list[str]):
        self.heads = heads
        self.reset()

    def reset(self) -> None:
        self.loss, self.head_loss, self.steps = 0.0, dict.fromkeys(self.heads, 0.0), 0
        self.tick = time.time()

    def add(self, total: StepStats, world: int) -> None:
        self.loss += total.loss.item() / world
        for head, value in total.head_loss.items():
            self.head_loss[head] += value.item() / world
        self.steps += 1

    def record(self, step: int, lr: float, samples_per_step: int, **totals: Any) -> dict[str, Any]:
        """The `train` line of these steps: mean losses, lr, samples/s, then the run's totals;
        the window starts again."""
        n = self.steps
        rate = n * samples_per_step / max(time.time() - self.tick, 1e-9)
        losses = {"loss": self.loss / n, **{f"loss_{h}": v / n for h, v in self.head_loss.items()}}
        self.reset()
        return {"kind": "train", "step": step, **losses, "lr": lr, "samples_per_s": rate, **totals}


class DataLog:
    """What the loaders report with each batch: the shards read (for run.json), and bad shards
    and samples (counted, and one `data_error` line per shard in metrics.jsonl)."""

    def __init__(self, metrics: Metrics, rank: int):
        self.metrics, self.rank = metrics, rank
        self.shards_read: Counter[str] = Counter()
        self.reported: set[str] = set()
        self.pending: list[dict[str, Any]] = []  # data_error lines not yet written
        self.skipped = {"shards": 0, "samples": 0}

    def note(self, events: Mapping[str, list], step: int) -> None:
        self.shards_read.update(events["shards"])
        for url, message in events["shard_errors"] + events["sample_errors"]:
            if url not in self.reported:
                self.reported.add(url)
                self.pending.append({"kind": "data_error", "step": step, "url": url,
                                     "error": message, "rank": self.rank})  # fmt: skip

    def flush(self) -> None:
        """Every rank's new data errors into metrics.jsonl, which rank 0 writes: all ranks call
        it at the same steps."""
        for rank_lines in gather(self.pending):
            for line in rank_lines:
                self.metrics.write(line)
        self.pending = []

    def totals(self) -> dict[str, int]:
        return {
            "skipped_shards": self.skipped["shards"],
            "skipped_samples": self.skipped["samples"],
        }

    def count(self, total: StepStats) -> None:
        """Every rank's skips, summed in the step's all-reduce."""
        self.skipped["shards"] += int(total.shard_errors)
        self.skipped["samples"] += int(total.sample_errors)


def run_record(
    args: argparse.Namespace,
    heads: dict[str, int],
    num_shards: int,
    data_log: DataLog,
    ranks: list,
    **progress: Any,
) -> dict[str, Any]:
    """RUN/run.json: the config, how the run went, what it skipped and which shards it read."""
    return {"config": vars(args), **progress, **data_log.totals(), "heads": heads,
            "shards": num_shards, "ranks": ranks, "torch": torch.__version__}  # fmt: skip
