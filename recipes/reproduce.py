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
it has N steps), and an evaluation is redone only when its network or its eval.run options
changed since. The same command again finishes in seconds; a killed run started again goes on.
Options are checked before any work: the ESC folder, --steps, --batch-size and every
--trainer-option and --eval-option (a typo fails at once, not after the shards).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from eval import run as eval_run
from eval.cli import not_a_folder
from eval.report import DATASET_COLUMN, PAPER_COLUMNS, PAPER_ROWS, plot_layers, write_json
from models.checkpoint import CheckpointError, load_checkpoint
from models.weights import original_checkpoint_path
from pipeline import run as pipeline_run
from runtime.arguments import at_least_one
from schemas.io import write_text_atomic
from trainer import main as trainer_main

# beside each row's results.json: the eval.run options they were computed with
EVAL_OPTIONS_FILE = "reproduce-options.json"
# eval.run options that change how fast or how verbosely, never the numbers
EVAL_OPTIONS_IGNORED = frozenset({"no_progress", "jobs"})


@dataclass(frozen=True)
class Row:
    """One row of the table: what eval.run is given, and the paper's row it stands beside."""

    slug: str
    name: str
    eval_args: tuple[str, ...]
    paper_row: str | None
    network: Path | None = None  # a file whose change means the row is stale


def rows(out: Path, steps: int | None) -> list[Row]:
    """The four rows; `steps`: the student's, as trained (None: not trained)."""
    student = out / "train" / "last.pt"
    trained = "not trained" if steps is None else f"{steps} steps"
    return [
        Row("student", f"SoundNet-8 distilled here ({trained})",
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


def trainer_argv(args: argparse.Namespace) -> list[str]:
    return [f"--shards={args.out / 'shards'}", f"--out={args.out / 'train'}",
            f"--steps={args.steps}", f"--batch-size={args.batch_size}",
            f"--checkpoint-every={max(1, args.steps // 4)}", "--keep-checkpoints=2",
            "--resume", *args.trainer_option]  # fmt: skip


def check_trainer(args: argparse.Namespace) -> None:
    """The trainer's command line through its own parser, before the shards are made: a bad
    --trainer-option fails now, in one line, not after the pipeline stage."""
    parser = trainer_main.build_parser()

    def refuse(message: str) -> None:  # in place of argparse's usage-and-exit
        raise SystemExit(f"reproduce: --trainer-option: {message}")

    parser.error = refuse
    parser.parse_args(trainer_argv(args))


def train(args: argparse.Namespace) -> None:
    trainer_main.main(trainer_argv(args))


def trained_with(checkpoint: Path) -> tuple[int, int] | None:
    """(steps, batch size) the checkpoint was trained with, from the checkpoint itself: a
    resumed or earlier run may differ from this command's --steps and --batch-size."""
    try:
        payload = load_checkpoint(checkpoint)
    except CheckpointError as err:
        print(f"reproduce: the student's steps are unknown: {err}")
        return None
    return int(payload["step"]), int(payload["config"]["batch_size"])


# eval.run options of a network's features, which it refuses with --features mfcc
NETWORK_ONLY = ("--checkpoint", "--layer", "--seconds")


def for_row(row: Row, options: list[str]) -> list[str]:
    """--eval-option as the row takes it: the MFCC row leaves out the networks' options."""
    if "mfcc" not in row.eval_args:
        return options
    kept, skip_value = [], False
    for option in options:
        if skip_value:
            skip_value = False
        elif option.split("=", 1)[0] in NETWORK_ONLY:
            skip_value = "=" not in option  # `--layer conv5`: its value is the next item
        else:
            kept.append(option)
    return kept


def eval_options(args: argparse.Namespace, row: Row, folder: Path) -> argparse.Namespace:
    return eval_run.parse_args([*row.eval_args, "--dataset=esc50", f"--root={args.esc}",
                                f"--out={folder}", *for_row(row, args.eval_option)])  # fmt: skip


def comparable(options: argparse.Namespace) -> dict:
    """The eval.run options as JSON (Paths and tuples as JSON has them), less those that
    cannot change the results."""
    chosen = {k: v for k, v in vars(options).items() if k not in EVAL_OPTIONS_IGNORED}
    return json.loads(json.dumps(chosen, default=str))


def check_esc(args: argparse.Namespace) -> None:
    """The ESC folder and --eval-option folds readable before hours of shards and training."""
    if not args.esc.is_dir():  # said plainly, not as the metadata file it lacks
        raise SystemExit(f"reproduce: --esc: {args.esc}: no such folder")
    # every row's options parsed now: a bad one fails before the shards, not at its row
    parsed = [eval_options(args, row, args.out / "eval") for row in rows(args.out, args.steps)]
    options = parsed[0]
    try:
        eval_run.selected_dataset(options)
    except eval_run.USER_ERRORS as err:
        raise SystemExit(f"reproduce: --esc: {err}") from err


def stale(row: Row, folder: Path, options: dict) -> str | None:
    """Why the row's results on disk cannot be reused (None: they can)."""
    done, used = folder / "results.json", folder / EVAL_OPTIONS_FILE
    if not done.is_file():
        return "no results yet"
    if row.network is not None and row.network.stat().st_mtime >= done.stat().st_mtime:
        return f"{row.network} changed since"
    if not used.is_file():
        return f"no {EVAL_OPTIONS_FILE} beside them"
    before = json.loads(used.read_text())
    changed = sorted(k for k in before.keys() | options.keys() if before.get(k) != options.get(k))
    if changed:
        return "eval options changed: " + ", ".join(
            f"{k} {before.get(k)!r} -> {options.get(k)!r}" for k in changed
        )
    return None


def evaluate(args: argparse.Namespace, row: Row) -> dict | None:
    """The row's results: read back when they are newer than its network and were computed
    with the same eval.run options, else computed (and the options stored beside them)."""
    folder = args.out / "eval" / row.slug
    if row.network is not None and not row.network.is_file():
        print(f"{row.name}: skipped, {row.network} is missing")
        return None
    options = eval_options(args, row, folder)
    wanted = comparable(options)
    why = stale(row, folder, wanted)
    if why is None:
        results = json.loads((folder / "results.json").read_text())
        print(f"{row.name}: {100 * results['accuracy_mean']:.1f} % (done before)")
        return results
    if (folder / "results.json").is_file():
        print(f"{row.name}: evaluating again ({why})")
    try:
        results = eval_run.evaluate(options)
    except eval_run.USER_ERRORS as err:
        raise SystemExit(f"reproduce: evaluating {row.name} failed: {err}") from err
    eval_run.write_outputs(folder, results)
    # after the results: a run killed between the two finds no options file and redoes the row
    write_json(folder / EVAL_OPTIONS_FILE, wanted)
    print(f"{row.name}: {100 * results['accuracy_mean']:.1f} % ({results['layer']})")
    return results


def table(
    args: argparse.Namespace,
    results: dict[str, tuple[Row, dict | None]],
    trained: tuple[int, int] | None,
) -> str:
    """results.md: our four rows beside the paper's, in the dataset's column; `trained`: the
    student's (steps, batch size), as its checkpoint has them."""
    dataset = next((r["dataset"] for _, r in results.values() if r), "esc50")
    column = DATASET_COLUMN.get(dataset, dataset)
    index = PAPER_COLUMNS.index(column) if column in PAPER_COLUMNS else None
    student = (
        "no SoundNet-8 distilled"
        if trained is None
        else f"SoundNet-8 distilled for {trained[0]} steps of {trained[1]} samples"
    )
    lines = [
        f"# The paper's recipe on {column}",
        "",
        f"Shards from `{args.videos}`, {student}, linear SVMs on pool5 (mean and max over "
        "time) with C by inner cross-validation over the official folds. Accuracy (%).",
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
    p.add_argument("--steps", type=at_least_one, default=100, help="training steps")
    p.add_argument("--batch-size", type=at_least_one, default=16, help="training batch")
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
    if problem := not_a_folder(args.out):
        p.error(f"--out {args.out}: {problem}")
    # every check before the output folder exists: a refused command leaves nothing behind
    check_esc(args)
    check_trainer(args)
    args.out.mkdir(parents=True, exist_ok=True)

    started = stage("1. videos -> shards")
    make_shards(args)
    timings = {"shards_s": time.perf_counter() - started}
    started = stage(f"2. shards -> SoundNet-8 ({args.steps} steps)")
    train(args)
    timings["train_s"] = time.perf_counter() - started
    started = stage("3. the table")
    trained = trained_with(args.out / "train" / "last.pt")
    steps, batch_size = trained or (None, None)
    results = {row.slug: (row, evaluate(args, row)) for row in rows(args.out, steps)}
    timings["eval_s"] = time.perf_counter() - started

    write_text_atomic(args.out / "results.md", table(args, results, trained))
    accuracy = {row.slug: r["accuracy_mean"] for row, r in results.values() if r}
    write_json(args.out / "results.json", {
        "videos": str(args.videos), "esc": str(args.esc), "steps": steps,
        "batch_size": batch_size, "accuracy": accuracy, "seconds": timings,
    })  # fmt: skip
    plot_layers(args.out / "results.png", accuracy, f"pool5 on {args.esc.name}")
    print(f"\nwrote {args.out / 'results.md'}, results.json, results.png")
    print((args.out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
