"""Stage 1 at N and 10 x N inputs: speed, the whole process tree's peak memory, durability.

    .venv/bin/python bench/scale.py [--sizes 500 5000] [--kill-at 0.6 [--kill-size N]]
        [-- extra pipeline options]

The inputs are N hard links (distinct names, no extra disk) of one 4.9 s H.264 clip that ffmpeg
makes from its test sources (kept in build/scale-clip/ between runs), given to the README's
command, `python -m pipeline.run --runner=DirectRunner --input=DIR --output=OUT`, with
`--videos-per-shard=50` unless the extra options say otherwise. For each size it prints videos/s,
the peak resident memory of the pipeline's process tree (sampled every 0.1 s), and when the first
shard reached the disk (as a fraction of the run). The reference is `ffmpeg -i F -f null -` on
the same clip, timed on up to 200 of the links and scaled to N (every link is the same file).

`--long-video-minutes M` also runs the command on one M-minute video (made once, like the clip)
and prints its peak memory beside the smallest size's and the video's own decoded audio.

`--kill-at F` also SIGKILLs a fresh run of `--kill-size` inputs (default: the smallest size) at
F of that size's full run's wall time, reruns the same command, and prints the rerun's time over
the full run's and whether the samples equal the uninterrupted run's.

Prints `scale_rss_ratio=` (peak memory at the largest size over the smallest) last.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CLIP_SECONDS = 4.9
REFERENCE_CLIPS = 200


def make_clip(folder: Path) -> Path:
    """A 4.9 s 640x360 H.264/AAC clip of moving test patterns with pink noise."""
    clip = folder / "clip.mp4"
    if not clip.exists():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "clip.tmp.mp4"
        subprocess.run(
            ["ffmpeg", "-nostdin", "-v", "error", "-y",
             "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30",
             "-f", "lavfi", "-i", "anoisesrc=color=pink:seed=1", "-t", str(CLIP_SECONDS),
             "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "veryfast",
             "-c:a", "aac", "-ar", "44100", str(tmp)],
            check=True,
        )  # fmt: skip
        tmp.rename(clip)
    return clip


def make_long_video(folder: Path, minutes: float) -> Path:
    """One long 640x360 H.264/AAC video of moving test patterns with pink noise."""
    video = folder / f"long-{minutes:g}min.mp4"
    if not video.exists():
        tmp = folder / "long.tmp.mp4"
        subprocess.run(
            ["ffmpeg", "-nostdin", "-v", "error", "-y",
             "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25",
             "-f", "lavfi", "-i", "anoisesrc=color=pink:seed=2", "-t", str(minutes * 60),
             "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "ultrafast", "-g", "250",
             "-c:a", "aac", "-ar", "44100", str(tmp)],
            check=True,
        )  # fmt: skip
        tmp.rename(video)
    return video


def links(clip: Path, folder: Path, count: int) -> Path:
    folder.mkdir(parents=True)
    for i in range(count):
        os.link(clip, folder / f"video{i:06d}.mp4")
    return folder


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def run(inputs: Path, out: Path, extra: list[str], kill_after: float | None = None) -> dict:
    """The pipeline command; its wall time, peak tree RSS, first shard time, whether killed."""
    command = [sys.executable, "-m", "pipeline.run", "--runner=DirectRunner",
               f"--input={inputs}", f"--output={out}", *extra]  # fmt: skip
    temp = out.parent / f"{out.name}-temp"  # what a killed run cannot clean up stays with ours
    temp.mkdir(exist_ok=True)
    start = time.perf_counter()
    proc = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True, env={**os.environ, "TMPDIR": str(temp)},
    )  # fmt: skip
    watched = psutil.Process(proc.pid)
    peak, first_shard, killed = 0, None, False
    while proc.poll() is None:
        peak = max(peak, tree_rss(watched))
        now = time.perf_counter() - start
        if first_shard is None and any((out / "shards").glob("*.tar")):
            first_shard = now
        if kill_after is not None and now >= kill_after:
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.1)
    proc.wait()
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if not killed and proc.returncode != 0:
        sys.exit(f"the pipeline failed:\n{stderr[-3000:]}")
    wall = time.perf_counter() - start
    return {"wall_s": wall, "peak_rss": peak, "first_shard_s": first_shard, "killed": killed}


def reference_seconds(clip_dir: Path, count: int) -> float:
    """`ffmpeg -i F -f null -` over `count` links, timed on up to REFERENCE_CLIPS of them."""
    sample = sorted(clip_dir.iterdir())[:REFERENCE_CLIPS]
    start = time.perf_counter()
    for path in sample:
        subprocess.run(["ffmpeg", "-nostdin", "-v", "quiet", "-i", str(path), "-f", "null", "-"],
                       check=False)  # fmt: skip
    return (time.perf_counter() - start) * count / len(sample)


def samples_of(out: Path) -> dict:
    import webdataset as wds

    from schemas import decode_sample

    shards = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    return {m["__key__"]: decode_sample(m) for m in wds.WebDataset(shards, shardshuffle=False)}


def same_samples(a: Path, b: Path) -> bool:
    import numpy as np

    got, want = samples_of(a), samples_of(b)
    if list(got) != list(want):
        return False
    for key, sample in want.items():
        if not np.array_equal(got[key].audio, sample.audio):
            return False
        for head, rows in sample.probs.items():
            diff = np.abs(got[key].probs[head].astype(np.float32) - rows.astype(np.float32))
            if diff.max() > 1e-3:
                return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 5000], help="inputs a run")
    parser.add_argument("--kill-at", type=float, help="also kill a run at this fraction, rerun")
    parser.add_argument("--kill-size", type=int, help="inputs of the killed run (a --sizes one)")
    parser.add_argument("--long-video-minutes", type=float, help="also run one video this long")
    parser.add_argument("extra", nargs="*", help="extra pipeline options (after --)")
    args = parser.parse_args()
    if args.kill_size is not None and args.kill_size not in args.sizes:  # its full run is the base
        parser.error(f"--kill-size {args.kill_size} is not one of --sizes {args.sizes}")
    extra = list(args.extra)
    if not any(a.startswith("--videos-per-shard") for a in extra):
        extra.append("--videos-per-shard=50")
    clip = make_clip(REPO / "build" / "scale-clip")

    rows: dict[int, dict] = {}
    with tempfile.TemporaryDirectory(prefix="soundnet-scale-", dir=REPO / "build") as tmp:
        work = Path(tmp)
        for n in sorted(set(args.sizes)):
            inputs = links(clip, work / f"in-{n}", n)
            result = run(inputs, work / f"out-{n}", extra)
            result["reference_s"] = reference_seconds(inputs, n)
            rows[n] = result
            first = result["first_shard_s"]
            print(
                f"N={n}: {n / result['wall_s']:.1f} videos/s, wall {result['wall_s']:.1f} s, "
                f"peak tree RSS {result['peak_rss'] / 2**30:.2f} GiB, first shard at "
                f"{first / result['wall_s']:.0%} of the run, "
                f"pipeline_over_decode={result['wall_s'] / result['reference_s']:.3f}",
                flush=True,
            )
        if args.long_video_minutes:
            video = make_long_video(clip.parent, args.long_video_minutes)
            (work / "long").mkdir()
            os.link(video, work / "long" / video.name)
            long = run(work / "long", work / "out-long", extra)
            audio = args.long_video_minutes * 60 * 22050 * 2
            print(
                f"one {args.long_video_minutes:g}-minute video: wall {long['wall_s']:.1f} s, peak "
                f"tree RSS {long['peak_rss'] / 2**30:.2f} GiB (N={min(rows)}: "
                f"{rows[min(rows)]['peak_rss'] / 2**30:.2f} GiB; its audio as int16: "
                f"{audio / 2**30:.2f} GiB)",
                flush=True,
            )
        if args.kill_at:
            n = args.kill_size or min(rows)
            full = rows[n]
            killed = work / "out-killed"
            run(work / f"in-{n}", killed, extra, kill_after=args.kill_at * full["wall_s"])
            rerun = run(work / f"in-{n}", killed, extra)
            equal = same_samples(killed, work / f"out-{n}")
            print(
                f"killed at {args.kill_at:.0%} of a full run of {n}, then rerun: "
                f"{rerun['wall_s']:.1f} s, rerun_over_full={rerun['wall_s'] / full['wall_s']:.3f}, "
                f"samples equal to the uninterrupted run: {equal}"
            )
    print(f"machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB")
    small, large = rows[min(rows)], rows[max(rows)]
    print(f"scale_rss_ratio={large['peak_rss'] / small['peak_rss']:.3f}")


if __name__ == "__main__":
    main()
