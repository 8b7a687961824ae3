"""Shard bytes against the audio alone (FLAC or pcm16 members) for the same samples.

    .venv/bin/python bench/storage.py --output OUT

Everything a shard adds to the audio (teacher rows, metadata, tar headers and padding) is
overhead a trainer reads on every epoch. Each kind of member is listed (`flac`, `pcm16`, the
teachers' `.npy`, `json`), with the audio's bytes per second of audio; prints
`shard_over_audio=<ratio>` last.
"""

from __future__ import annotations

import argparse
import sys
import tarfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from schemas import AUDIO_CODECS, INDEX_FILE, SAMPLE_RATE, SHARDS_DIR  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", required=True, type=Path, help="a pipeline output directory")
    args = parser.parse_args()
    shards = sorted((args.output / SHARDS_DIR).glob("*.tar"))
    if not shards:
        sys.exit(f"no shards under {args.output / SHARDS_DIR}")
    shard_bytes = sum(p.stat().st_size for p in shards)
    by_member: Counter[str] = Counter()
    samples = 0
    for path in shards:
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                kind = member.name.split(".", 1)[1]
                by_member[kind] += member.size
                samples += kind == "json"
    audio = sum(by_member[codec] for codec in AUDIO_CODECS)
    if not audio:
        sys.exit(f"no audio members ({', '.join(AUDIO_CODECS)}) in {args.output / SHARDS_DIR}")
    print(f"shards: {len(shards)}, samples: {samples}, shard bytes: {shard_bytes:,}")
    for kind, size in sorted(by_member.items()):
        print(f"  {kind:12s} {size:>14,} bytes ({size / shard_bytes:.1%})")
    headers = shard_bytes - sum(by_member.values())
    print(f"  {'tar headers':12s} {headers:>14,} bytes ({headers / shard_bytes:.1%})")
    seconds = audio_seconds(args.output)
    for codec in AUDIO_CODECS:
        if by_member[codec] and seconds:
            raw = seconds * SAMPLE_RATE * 2  # what int16 PCM of the same audio takes
            print(f"{codec}: {by_member[codec] / seconds / 1e3:.1f} kB per second of audio "
                  f"({by_member[codec] / raw:.2f} of int16 PCM)")  # fmt: skip
    print(f"shard_over_audio={shard_bytes / audio:.3f}")


def audio_seconds(output: Path) -> float:
    """The samples' audio in seconds, from the output's index (0 without one)."""
    import pyarrow.parquet as pq

    index = output / INDEX_FILE
    return (
        sum(pq.read_table(index, columns=["duration_s"]).column(0).to_pylist())
        if index.is_file()
        else 0.0
    )


if __name__ == "__main__":
    main()
