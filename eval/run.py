r"""Linear-SVM evaluation of a network's hidden layers (or the MFCC baseline) on a dataset's own
folds, beside the paper's table.

    python -m eval.run --checkpoint original:soundnet8 --dataset esc50 --subset esc10 \
        --root ../shared/data/esc10 --layer all [--protocol paper] [--out DIR]
    python -m eval.run --features mfcc --dataset esc50 --root ESC-50

`--checkpoint` takes RUN/last.pt, original:soundnet8, random:soundnet8|soundnet5 or a Torch7
`.t7` release file. Writes results.json, results.md, confusion.png and layers.png to --out
(default runs/eval-DATASET-SOURCE-PROTOCOL plus the options given: --layer, --folds, --C,
--seconds; SOURCE is RUN-last for RUN/last.pt; one holding the results of another checkpoint or
dataset folder is refused, not overwritten) and prints the mean accuracy last.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix
from tqdm import tqdm

from eval import cli
from eval.audio import AudioError
from eval.datasets import DATASETS, Dataset, DatasetError, load_dataset
from eval.features import DEFAULT_SECONDS, extract_features, resolve_layers, set_threads
from eval.mfcc import extract_mfcc
from eval.report import plot_confusion, plot_layers, results_markdown, write_json
from eval.svm import PAPER_C, PROTOCOLS, FoldResult, clip_samples, cross_validate
from models.checkpoint import CheckpointError
from models.pretrained import load_pretrained
from models.weights import PretrainedError
from runtime import keep_freed_memory
from runtime.arguments import at_least_one, positive
from schemas.io import write_text_atomic


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m eval.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", help="RUN/last.pt, original:soundnet8, random:ARCH or a .t7")
    p.add_argument("--features", choices=("network", "mfcc"), default="network")
    p.add_argument("--dataset", choices=DATASETS, default="esc50")
    p.add_argument("--root", required=True, type=Path, help="the dataset's folder")
    p.add_argument("--subset", choices=("esc10",), help="ESC-50's ESC-10 subset")
    p.add_argument("--meta", type=Path, help="generic layout: CSV of filename,fold,label")
    p.add_argument(
        "--layer",
        help="conv4..conv8, pool5, ... or 'all' (default: pool5, or the deepest hidden layer "
        "of a model without it: conv4 of SoundNet-5 and the autoencoder)",
    )
    p.add_argument("--protocol", choices=PROTOCOLS, default="pooled")
    p.add_argument("--C", type=positive, help="fixed SVM C (default: inner CV; paper: 0.01)")
    p.add_argument(
        "--folds",
        type=cli.fold_numbers,
        help="only these folds, e.g. 1,2 (leave one out among them)",
    )
    p.add_argument(
        "--seconds", type=positive, help=f"tile clips to this (default {DEFAULT_SECONDS:g})"
    )
    p.add_argument("--batch-size", type=at_least_one, default=4)
    p.add_argument(
        "--jobs",
        type=cli.jobs,
        help="parallel SVM fits: inner-CV fits, or the folds with a fixed C (joblib n_jobs; "
        "-1: every core)",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="output folder (default runs/eval-DATASET-SOURCE-PROTOCOL[-options])",
    )
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.features == "network" and not args.checkpoint:
        p.error("--checkpoint is required (or --features mfcc)")
    if args.features == "mfcc" and args.protocol == "paper":
        p.error("--protocol paper needs frame features; the MFCC baseline is one vector a clip")
    # an option that is given but never read would still name the output folder, or mislead
    if args.features == "mfcc":
        unused = [f"--{o}" for o in ("checkpoint", "layer", "seconds") if vars(args)[o] is not None]
        if unused:
            p.error(f"{', '.join(unused)}: not used by --features mfcc (the network's options)")
    if args.meta is not None and args.dataset != "generic":
        p.error(f"--meta is for --dataset generic; --dataset {args.dataset} reads ROOT/meta/")
    if args.subset is not None and args.dataset == "generic":
        p.error("--subset is ESC-50's; --dataset generic evaluates every row of its CSV")
    if args.seconds is None:  # None until here: given or not is told apart above
        args.seconds = DEFAULT_SECONDS
    if args.out and (problem := cli.not_a_folder(args.out)):
        p.error(f"--out {args.out}: {problem}")
    return args


def _description(args: argparse.Namespace) -> str:
    return "SVM on MFCC + ZCR" if args.features == "mfcc" else str(args.checkpoint)


def _slug(text: str) -> str:
    return re.sub(r"[^\w.]+", "-", text).strip("-.")


def default_out(args: argparse.Namespace, dataset: str) -> Path:
    """runs/eval-DATASET-SOURCE-PROTOCOL, then the options that change the numbers where given:
    distinct evaluations, distinct folders. SOURCE: `mfcc` (whose one protocol is left out),
    a weights spec (original-soundnet8), or a file's folder and stem (RUN-last: every trainer
    run writes a last.pt)."""
    if args.features == "mfcc":
        parts = [dataset, "mfcc"]
    else:
        spec = Path(args.checkpoint)
        source = f"{spec.resolve().parent.name}-{spec.stem}" if spec.is_file() else spec.name
        parts = [dataset, source, args.protocol]
    if args.layer:
        parts.append(args.layer)
    if args.folds:
        parts.append("folds" + "-".join(map(str, args.folds)))
    if args.C is not None:
        parts.append(f"C{args.C:g}")
    if args.seconds != DEFAULT_SECONDS:
        parts.append(f"{args.seconds:g}s")
    return Path("runs") / ("eval-" + "-".join(_slug(part) for part in parts))


def _same_file(a: str | None, b: str | Path | None) -> bool:
    """Whether two paths (or weight specs) name the same file. A default folder is under the
    working folder, so the relative paths of a results.json in it are read from there too."""
    if a is None or b is None:
        return a is b
    return Path(a).resolve() == Path(b).resolve()


def other_evaluation(out: Path, args: argparse.Namespace) -> str | None:
    """What the results.json in `out` evaluated, where that is another checkpoint or dataset
    folder than the options' (their default folders can be the same: a/run1/last.pt and
    b/run1/last.pt are both run1-last), else None."""
    try:
        done = json.loads((out / "results.json").read_text())
    except (OSError, ValueError):  # none yet, or unreadable: nothing to keep
        return None
    if not isinstance(done, dict):
        return None
    checkpoint = args.checkpoint if args.features == "network" else None
    if _same_file(done.get("checkpoint"), checkpoint) and _same_file(done.get("root"), args.root):
        return None
    return f"{done.get('checkpoint') or done.get('features')} on {done.get('root')}"


def compute_samples(
    args: argparse.Namespace, dataset: Dataset
) -> tuple[dict[str, Callable[[], list[np.ndarray]]], float]:
    """{layer: a function giving its per-clip SVM samples} and the feature seconds per clip.
    Samples are made one layer at a time: the paper protocol's windows of every layer at once
    would not fit in memory on ESC-50."""
    paths = [clip.path for clip in dataset.clips]
    progress = not args.no_progress
    start = time.perf_counter()
    if args.features == "mfcc":
        vectors = [v[None] for v in extract_mfcc(paths, progress)]
        samples = {"mfcc": lambda: vectors}
    else:
        model, _ = load_pretrained(args.checkpoint)
        layers = resolve_layers(model, args.layer)
        features = extract_features(
            model, paths, layers, args.seconds, args.batch_size, progress=progress
        )
        samples = {
            name: functools.partial(clip_samples, features[name], args.protocol) for name in layers
        }
    return samples, (time.perf_counter() - start) / max(1, len(paths))


# what a user's options or files can get wrong: reported as one line, not a traceback
USER_ERRORS = (DatasetError, AudioError, PretrainedError, CheckpointError, ValueError)


def selected_dataset(args: argparse.Namespace) -> Dataset:
    """The dataset the options name, cut to their --folds; one without clips or with fewer
    than two folds is refused here, before the features."""
    return load_dataset(args.dataset, args.root, args.subset, args.meta).select_folds(args.folds)


def evaluate(args: argparse.Namespace, dataset: Dataset | None = None) -> dict[str, Any]:
    """The results of the options' evaluation (of `dataset`, their selected_dataset)."""
    set_threads()
    if dataset is None:
        dataset = selected_dataset(args)
    samples, per_clip = compute_samples(args, dataset)
    progress = not args.no_progress
    protocol = args.protocol  # the MFCC baseline's one vector a clip: always "pooled"
    C = args.C if args.C is not None else (PAPER_C if protocol == "paper" else None)
    start = time.perf_counter()
    per_layer: dict[str, list[FoldResult]] = {}
    for layer, make_samples in tqdm(
        samples.items(), desc="svm", unit="layer", disable=not progress
    ):
        per_layer[layer] = cross_validate(
            make_samples(), dataset.labels, dataset.folds, C, protocol, args.jobs
        )
    svm_seconds = time.perf_counter() - start
    layers = {
        layer: {
            "accuracy_per_fold": [r.accuracy for r in folds],
            "accuracy_mean": float(np.mean([r.accuracy for r in folds])),
            "C_per_fold": [r.C for r in folds],
        }
        for layer, folds in per_layer.items()
    }
    headline = (
        "pool5" if "pool5" in layers else max(layers, key=lambda k: layers[k]["accuracy_mean"])
    )
    y_true = np.concatenate([r.y_true for r in per_layer[headline]])
    y_pred = np.concatenate([r.y_pred for r in per_layer[headline]])
    return {
        "dataset": dataset.name,
        "root": str(args.root),
        "features": args.features,
        "checkpoint": args.checkpoint if args.features == "network" else None,
        "description": _description(args),
        "layer": headline,
        "protocol": protocol,
        "C": C if C is not None else "inner-cv",
        "accuracy_per_fold": layers[headline]["accuracy_per_fold"],
        "accuracy_mean": layers[headline]["accuracy_mean"],
        "layers": layers,
        "folds": sorted(int(f) for f in np.unique(dataset.folds)),
        "num_clips": len(dataset.clips),
        "classes": dataset.classes,
        "confusion_matrix": confusion_matrix(
            y_true, y_pred, labels=np.arange(len(dataset.classes))
        ).tolist(),
        "seconds": {"features_per_clip": per_clip, "svm": svm_seconds},
    }


def write_outputs(out: Path, results: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results)
    write_text_atomic(out / "results.md", results_markdown(results))
    layer = results["layer"]
    cm = np.array(results["confusion_matrix"])
    y_true = np.repeat(np.arange(len(cm)), cm.sum(axis=1))
    y_pred = np.concatenate([np.repeat(np.arange(len(row)), row) for row in cm])
    title = f"{results['dataset']}: {results['description']}, {layer}"
    plot_confusion(out / "confusion.png", y_true, y_pred, results["classes"], title)
    accuracy = {name: entry["accuracy_mean"] for name, entry in results["layers"].items()}
    plot_layers(out / "layers.png", accuracy, f"{results['dataset']}: {results['description']}")


def main(argv: list[str] | None = None) -> None:
    keep_freed_memory()  # first: each batch's activations reused, not faulted in afresh
    args = parse_args(argv)
    try:
        dataset = selected_dataset(args)
        out = args.out or default_out(args, dataset.name)
        if problem := cli.not_a_folder(out):  # before the work, not after it
            sys.exit(f"error: output folder {out}: {problem} (--out sets another)")
        if not args.out and (other := other_evaluation(out, args)):
            sys.exit(
                f"error: output folder {out} holds the results of {other}; not overwritten "
                "by another evaluation's (--out sets another folder)"
            )
        results = evaluate(args, dataset)
    except USER_ERRORS as err:
        sys.exit(f"error: {err}")
    write_outputs(out, results)
    for layer, entry in results["layers"].items():
        folds = " ".join(f"{a:.3f}" for a in entry["accuracy_per_fold"])
        print(f"{layer:>6}  {entry['accuracy_mean']:.4f}  (folds {folds})")
    print(f"wrote {out}/results.json, results.md, confusion.png, layers.png")
    print(f"mean accuracy: {results['accuracy_mean']:.4f} ({results['layer']})")


if __name__ == "__main__":
    main()
