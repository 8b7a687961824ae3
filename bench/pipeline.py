"""Pipeline wall time against plain decoding of the same videos on the same cores.

    .venv/bin/python bench/pipeline.py --videos ../shared/data/videos [-- extra pipeline options]

The clips are repeated under distinct names (symlinks) until they hold at least --min-minutes of
video, so the pipeline's start-up is amortised; start-up itself (a run over one short clip) is
reported on its own line. The reference is `ffmpeg -i F -f null -` over every copy: a full
decode of video and audio, which the pipeline should beat by decoding only what it needs.
One video a shard task unless the extra options say otherwise: the decoding work is the same
whatever the task size, and the runner hands tasks to its threads in fixed shares, so single
videos of very different lengths (a 2-minute 1080p clip beside 10 s ones) keep every core busy
to the end of a 10-minute corpus (measured on the unseen clips: 0.70 with tasks of 1, 0.84 with
tasks of 8). Prints `pipeline_over_decode=<ratio>` last.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline import decode  # noqa: E402
from pipeline.inputs import is_media_name  # noqa: E402


def video_seconds(paths: list[Path]) -> dict[Path, float]:
    out = {}
    for p in paths:
        try:
            out[p] = decode.probe(str(p)).duration_s or 0.0
        except Exception:  # noqa: BLE001 - unreadable clips still count in both timings
            out[p] = 0.0
    return out


def make_copies(
    clips: dict[Path, float], folder: Path, min_seconds: float
) -> tuple[list[Path], float]:
    total, copies, k = 0.0, [], 0
    while total < min_seconds or k == 0:
        for clip, seconds in clips.items():
            link = folder / f"copy{k:02d}_{clip.name}"
            link.symlink_to(clip.resolve())
            copies.append(link)
            total += seconds
        k += 1
    return copies, total


def decode_time(paths: list[Path]) -> float:
    start = time.perf_counter()
    for p in paths:
        subprocess.run(
            ["ffmpeg", "-nostdin", "-v", "quiet", "-i", str(p), "-f", "null", "-"], check=False
        )
    return time.perf_counter() - start


def pipeline_time(input_dir: Path, output: Path, extra: list[str]) -> tuple[float, dict]:
    cmd = [
        sys.executable,
        "-m",
        "pipeline.run",
        "--runner=DirectRunner",
        f"--input={input_dir}",
        f"--output={output}",
        *extra,
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"pipeline failed:\n{proc.stderr[-3000:]}")
    return elapsed, json.loads((output / "run.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--videos", required=True, type=Path)
    parser.add_argument("--min-minutes", type=float, default=10.0)
    parser.add_argument("extra", nargs="*", help="extra pipeline options (after --)")
    args = parser.parse_args()
    if not any(a.startswith("--videos-per-shard") for a in args.extra):
        args.extra.append("--videos-per-shard=1")

    clips = sorted(p for p in args.videos.iterdir() if is_media_name(p.name))
    seconds = video_seconds(clips)
    # the start-up run's clip; also what makes the copies add up to --min-minutes at all
    longer = [p for p in clips if seconds[p] > 1]
    if not longer:
        raise SystemExit(f"--videos {args.videos}: no readable clip longer than 1 s "
                         f"(of {len(clips)} media files)")  # fmt: skip
    shortest = min(longer, key=lambda p: seconds[p])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "videos").mkdir()
        copies, total_video = make_copies(seconds, work / "videos", args.min_minutes * 60)
        one = work / "one"
        one.mkdir()
        (one / shortest.name).symlink_to(shortest.resolve())

        startup_s, _ = pipeline_time(one, work / "out-one", args.extra)
        decode_s = decode_time(copies)
        pipe_s, record = pipeline_time(work / "videos", work / "out", args.extra)
        shutil.rmtree(work / "out", ignore_errors=True)

    counts = record["counts"]
    print(
        f"machine: {os.cpu_count()} cores; videos: {len(copies)} "
        f"({len(clips)} clips repeated), {total_video / 60:.1f} min of video"
    )
    print(
        f"written: {counts['videos_written']} videos, {counts['samples']} samples, "
        f"{counts['videos_failed']} failed"
    )
    print(f"startup_s={startup_s:.2f}  (a whole run over one {seconds[shortest]:.1f} s clip)")
    print(f"decode_s={decode_s:.2f}  (ffmpeg -i F -f null - over every copy)")
    print(f"pipeline_s={pipe_s:.2f}")
    print(f"pipeline_over_decode={pipe_s / decode_s:.3f}")


if __name__ == "__main__":
    main()
