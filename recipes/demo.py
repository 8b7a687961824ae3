"""`make demo`: run the pipeline on the bundled sample videos and show what it wrote.

python -m recipes.demo --output demo-out
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import webdataset as wds

from pipeline import run
from schemas import (
    FAILURES_FILE,
    FAILURES_SCHEMA,
    INDEX_FILE,
    INDEX_SCHEMA,
    SHARDS_DIR,
    decode_sample,
    labels_path,
    read_labels,
    read_table,
)

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "videos"


def sample_videos(parser: argparse.ArgumentParser) -> str:
    """The bundled clips, or a usage error saying where to get them: they sit beside the
    packages in a source checkout and are not in the wheel, so an installed `soundnet-demo`
    has none."""
    if not SAMPLES.is_dir():
        parser.error(
            f"the bundled sample videos ({SAMPLES}) come with a source checkout, not with the "
            "installed package: git clone the repository and run `make demo` there, or give "
            "videos of your own with --input DIR"
        )
    return str(SAMPLES)


def teacher_top3(output: Path, head: str = "objects") -> dict[str, list[tuple[str, float]]]:
    """Per video, the head's classes with the highest mean probability over its frames."""
    names = read_labels(labels_path(output, head))
    rows: dict[str, list[np.ndarray]] = defaultdict(list)
    shards = sorted(str(p) for p in (output / SHARDS_DIR).glob("*.tar"))
    for members in wds.WebDataset(shards, shardshuffle=False, empty_check=False):
        sample = decode_sample(members, audio=False)
        rows[sample.metadata.source].append(sample.probs[head].astype(np.float32))
    top = {}
    for source, parts in rows.items():
        mean = np.concatenate(parts).mean(axis=0)
        top[source] = [(names[i], float(mean[i])) for i in np.argsort(mean)[::-1][:3]]
    return top


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recipes.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output", default="demo-out", help="the pipeline's output folder")
    parser.add_argument(
        "--input", help="videos (any pipeline --input; default: samples/videos of a checkout)"
    )
    args = parser.parse_args(argv)
    videos = args.input or sample_videos(parser)
    code = run.main(["--runner=DirectRunner", f"--input={videos}", f"--output={args.output}"])
    if code:
        return code
    output = Path(args.output)
    index = read_table(output / INDEX_FILE, INDEX_SCHEMA)
    failures = read_table(output / FAILURES_FILE, FAILURES_SCHEMA)
    seconds = sum(index.column("duration_s").to_pylist())
    print("\n== SoundNet demo ==")
    print(
        f"videos written: {len(set(index.column('video_id').to_pylist()))}, "
        f"segments: {index.num_rows}, audio: {seconds / 3600:.4f} h ({seconds:.1f} s), "
        f"failures: {failures.num_rows}"
    )
    saw = teacher_top3(output)  # reads every shard: once
    heard = authors_network_hears(sorted(saw))
    print(
        "what the visual teacher saw (objects, mean over frames) | what the authors' "
        "SoundNet-8 hears (objects; scenes):"
    )
    for source, top in sorted(saw.items()):
        classes = ", ".join(f"{name} {p:.2f}" for name, p in top)
        print(f"  {Path(source).name}\n    saw:   {classes}")
        if source in heard:
            print(f"    hears: {heard[source]}")
    return 0


def authors_network_hears(sources: list[str]) -> dict[str, str]:
    """Top-3 objects and scenes of original:soundnet8 per clip (empty when the weights are
    missing: `make setup` fetches them)."""
    from eval.audio import load_audio
    from eval.predict import predict_wave
    from models.pretrained import load_pretrained
    from models.weights import PretrainedError

    try:
        model, labels = load_pretrained("original:soundnet8")
    except PretrainedError as err:
        print(f"(the authors' network is not shown: {err})")
        return {}
    heard = {}
    for source in sources:
        result = predict_wave(model, labels, load_audio(source), top=3)
        heard[source] = "; ".join(
            ", ".join(f"{t['label']} {t['prob']:.2f}" for t in result["heads"][head]["clip"])
            for head in ("objects", "scenes")
            if head in result["heads"]
        )
    return heard


if __name__ == "__main__":
    sys.exit(main())
