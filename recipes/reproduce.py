"""`make reproduce`: the paper's recipe end to end, from a folder of videos to one table.

    python -m recipes.reproduce --videos DIR --esc DIR --out DIR [--steps N] [--batch-size B]
    make reproduce VIDEOS=DIR ESC=DIR OUT=DIR [STEPS=N]

1. shards: `pipeline.run` over the videos (DirectRunner, every core)   -> OUT/shards/
2. student: `trainer.main`, SoundNet-8 with the KL loss for N steps    -> OUT/train/last.pt
3. table: `eval.run` on the ESC-layout set (ESC-50, or the ESC-10 copy with .flac files) for
   the trained student, the untrained network, the MFCC baseline and the authors' SoundNet-8
   (pool5, the default protocol)                                       -> OUT/eval/ROW/
   then OUT/results.md (the four rows beside the paper's table), OUT/results.json and
   OUT/results.png.

Every stage goes on from what is on disk: the pipeline finishes a killed run and redoes
nothing of a finished one, the trainer resumes from OUT/train/last.pt (and stops at once when
it has N steps), and an evaluation is redone only when its network changed since. The same
command again finishes in seconds; a killed run started again goes on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from eval import run as eval_run
from eval.report import DATASET_COLUMN, PAPER_COLUMNS, PAPER_ROWS, plot_layers, write_json
from models.weights import original_checkpoint_path
from pipeline import run as pipeline_run
from schemas.io import write_text_atomic
from trainer import main as trainer_main


@dataclass(frozen=True)
class Row:
    """One row of the table: what eval.run is given, and the paper's row it stands beside."""

    slug: str
    name: str
    eval_args: tuple[str, ...]
    paper_row: str | None
    network: Path | None = None  # a file whose change means the row is stale


def rows(out: Path, steps: int) -> list[Row]:
    student = out / "train" / "last.pt"
    return [
        Row("student", f"SoundNet-8 distilled here ({steps} steps)",
            ("--checkpoint", str(student)), "SoundNet-8 (KL, both teachers)", student),
        Row("random", "SoundNet-8, untrained (random init)", ("--checkpoint", "random:soundnet8"),
            None),
        Row("mfcc", "SVM on MFCC", ("--features", "mfcc"), "SVM on MFCC"),
        Row("authors", "SoundNet-8, the authors' weights",
            ("--checkpoint", "original:soundnet8"), "SoundNet-8 (KL, both teachers)",
            original_checkpoint_path()),
    ]  # fmt: skip


def stage(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def make_shards(args: argparse.Namespace) -> None:
    code = pipeline_run.main(["--runner=DirectRunner", f"--input={args.videos}",
                              f"--output={args.out / 'shards'}", *args.pipeline_option])  # fmt: skip
    if code != 0:
        raise SystemExit(f"reproduce: the pipeline failed (exit {code}); see above")


def train(args: argparse.Namespace) -> None:
    trainer_main.main([f"--shards={args.out / 'shards'}", f"--out={args.out / 'train'}",
                       f"--steps={args.steps}", f"--batch-size={args.batch_size}",
                       f"--checkpoint-every={max(1, args.steps // 4)}", "--keep-checkpoints=2",
                       "--resume", *args.trainer_option])  # fmt: skip


def eval_options(args: argparse.Namespace, row: Row, folder: Path) -> argparse.Namespace:
    return eval_run.parse_args([*row.eval_args, "--dataset=esc50", f"--root={args.esc}",
                                f"--out={folder}", *args.eval_option])  # fmt: skip


def check_esc(args: argparse.Namespace) -> None:
    """The ESC folder and --eval-option folds readable before hours of shards and training."""
    options = eval_options(args, rows(args.out, args.steps)[0], args.out / "eval")
    try:
        eval_run.selected_dataset(options)
    except eval_run.USER_ERRORS as err:
        raise SystemExit(f"reproduce: --esc: {err}") from err


def evaluate(args: argparse.Namespace, row: Row) -> dict | None:
    """The row's results: read back when they are newer than its network, else computed."""
    folder = args.out / "eval" / row.slug
    done = folder / "results.json"
    if row.network is not None and not row.network.is_file():
        print(f"{row.name}: skipped, {row.network} is missing")
        return None
    if done.is_file():
        results = json.loads(done.read_text())
        fresh = row.network is None or row.network.stat().st_mtime < done.stat().st_mtime
        if fresh and results["root"] == str(args.esc):
            print(f"{row.name}: {100 * results['accuracy_mean']:.1f} % (done before)")
            return results
    try:
        results = eval_run.evaluate(eval_options(args, row, folder))
    except eval_run.USER_ERRORS as err:
        raise SystemExit(f"reproduce: evaluating {row.name} failed: {err}") from err
    eval_run.write_outputs(folder, results)
    print(f"{row.name}: {100 * results['accuracy_mean']:.1f} % ({results['layer']})")
    return results


def table(args: argparse.Namespace, results: dict[str, tuple[Row, dict | None]]) -> str:
    """results.md: our four rows beside the paper's, in the dataset's column."""
    dataset = next((r["dataset"] for _, r in results.values() if r), "esc50")
    column = DATASET_COLUMN.get(dataset, dataset)
    index = PAPER_COLUMNS.index(column) if column in PAPER_COLUMNS else None
    lines = [
        f"# The paper's recipe on {column}",
        "",
        f"Shards from `{args.videos}`, SoundNet-8 distilled for {args.steps} steps of "
        f"{args.batch_size} samples, linear SVMs on pool5 (mean and max over time) with C by "
        "inner cross-validation over the official folds. Accuracy (%).",
        "",
        f"| network | ours ({column}) | the paper ({column}) |",
        "|---|---|---|",
    ]
    for row, result in results.values():
        ours = f"**{100 * result['accuracy_mean']:.1f}**" if result else "not run"
        paper = PAPER_ROWS[row.paper_row][index] if row.paper_row and index is not None else None
        lines.append(f"| {row.name} | {ours} | {'' if paper is None else f'{paper:.1f}'} |")
    lines += ["", f"The paper's table ({column}):", "", "| | paper |", "|---|---|"]
    for name, values in PAPER_ROWS.items():
        if index is not None and values[index] is not None:
            lines.append(f"| {name} | {values[index]:.1f} |")
    lines += ["", "Per-row details (folds, confusion matrices, layers): `eval/*/results.md`."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recipes.reproduce", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--videos", required=True, type=Path, help="any pipeline --input")
    p.add_argument("--esc", required=True, type=Path, help="an ESC-50-layout folder")
    p.add_argument("--out", required=True, type=Path, help="where every stage writes")
    p.add_argument("--steps", type=int, default=100, help="training steps")
    p.add_argument("--batch-size", type=int, default=16, help="training batch")
    p.add_argument(
        "--pipeline-option",
        action="append",
        default=[],
        metavar="OPT",
        help="passed to pipeline.run (repeatable), e.g. --pipeline-option=--device=cuda",
    )
    p.add_argument(
        "--trainer-option",
        action="append",
        default=[],
        metavar="OPT",
        help="passed to trainer.main (repeatable)",
    )
    p.add_argument(
        "--eval-option",
        action="append",
        default=[],
        metavar="OPT",
        help="passed to eval.run (repeatable), e.g. --eval-option=--folds=1,2",
    )
    args = p.parse_args(argv)
    args.videos, args.esc = args.videos.resolve(), args.esc.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    check_esc(args)

    started = stage("1. videos -> shards")
    make_shards(args)
    timings = {"shards_s": time.perf_counter() - started}
    started = stage(f"2. shards -> SoundNet-8 ({args.steps} steps)")
    train(args)
    timings["train_s"] = time.perf_counter() - started
    started = stage("3. the table")
    results = {row.slug: (row, evaluate(args, row)) for row in rows(args.out, args.steps)}
    timings["eval_s"] = time.perf_counter() - started

    write_text_atomic(args.out / "results.md", table(args, results))
    accuracy = {row.slug: r["accuracy_mean"] for row, r in results.values() if r}
    write_json(args.out / "results.json", {
        "videos": str(args.videos), "esc": str(args.esc), "steps": args.steps,
        "batch_size": args.batch_size, "accuracy": accuracy, "seconds": timings,
    })  # fmt: skip
    plot_layers(args.out / "results.png", accuracy, f"pool5 on {args.esc.name}")
    print(f"\nwrote {args.out / 'results.md'}, results.json, results.png")
    print((args.out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
