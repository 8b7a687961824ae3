"""Write a folder of videos the benchmarks have never seen, made by ffmpeg from its own test
sources (no licence questions), in the encodings a crawl meets most.

    .venv/bin/python bench/make_videos.py OUT_DIR [--minutes 12]
    .venv/bin/python bench/pipeline.py --videos OUT_DIR

Moving test patterns (testsrc2, mandelbrot, life) with sine or noise sound; H.264 with
B-frames and long GOPs, HEVC, VP9, MPEG-4 Part 2; 360p to 1080p; 10 s clips (AudioSet and
VGGSound style) to 2-minute videos, in rounds until the folder holds --minutes of video.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

# name, lavfi video source, seconds, video codec, lavfi audio source, audio codec, container,
# copies per round (short clips come in numbers, as in a crawl)
LAYOUTS = [
    ("h264_1080p_gop250", "testsrc2=size=1920x1080:rate=30", 120,
     ["-c:v", "libx264", "-preset", "veryfast", "-g", "250", "-bf", "3"],
     "sine=frequency=330", ["-c:a", "aac", "-ac", "2", "-ar", "44100"], ".mp4", 1),
    ("h264_720p_clip10s", "mandelbrot=size=1280x720:rate=25", 10,
     ["-c:v", "libx264", "-preset", "veryfast"],
     "anoisesrc=color=pink", ["-c:a", "aac", "-ar", "48000"], ".mp4", 4),
    ("hevc_720p", "testsrc2=size=1280x720:rate=30", 60,
     ["-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "log-level=error"],
     "sine=frequency=880", ["-c:a", "aac", "-ac", "2"], ".mp4", 1),
    ("vp9_480p", "life=size=854x480:rate=30:mold=10:ratio=0.1", 60,
     ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "1M"],
     "anoisesrc=color=brown", ["-c:a", "libopus"], ".webm", 1),
    ("mpeg4_360p_clip10s", "testsrc2=size=640x360:rate=25", 10,
     ["-c:v", "mpeg4", "-q:v", "5"],
     "sine=frequency=220", ["-c:a", "libmp3lame", "-ar", "22050"], ".mkv", 4),
]  # fmt: skip
# ffmpeg's muxer of each container: the file is written under a name it cannot guess it from
MUXERS = {".mp4": "mp4", ".webm": "webm", ".mkv": "matroska"}


def make(path: Path, layout: tuple, seed: int) -> None:
    if path.exists():  # made by an earlier call: keep it
        return
    _, video, seconds, vcodec, audio, acodec, _, _ = layout
    if audio.startswith("anoisesrc"):
        audio += f":seed={seed}"
    args = ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y"]
    args += ["-f", "lavfi", "-i", video, "-f", "lavfi", "-i", audio, "-t", str(seconds)]
    # a run cut short leaves only the partial name (no media name: no bench reads it), which the
    # next call overwrites; the final name appears complete or not at all
    partial = path.with_name(path.name + ".partial")
    args += ["-pix_fmt", "yuv420p", *vcodec, *acodec, "-f", MUXERS[path.suffix], str(partial)]
    subprocess.run(args, check=True)
    partial.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--minutes", type=float, default=12.0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    total, seed = 0.0, 0
    while total < args.minutes * 60:
        for layout in LAYOUTS:
            name, _, seconds, *_, container, copies = layout
            for _ in range(copies):
                make(args.out / f"{name}_{seed:02d}{container}", layout, seed)
                total, seed = total + seconds, seed + 1
    print(f"{len(list(args.out.iterdir()))} videos, {total / 60:.1f} min in {args.out}")


if __name__ == "__main__":
    main()
