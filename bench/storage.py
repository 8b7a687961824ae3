"""Shard bytes against the FLAC audio alone for the same samples.

    .venv/bin/python bench/storage.py --output OUT

Everything a shard adds to the audio (teacher rows, metadata, tar headers and padding) is
overhead a trainer reads on every epoch. Prints `shard_over_flac=<ratio>` last.
"""

from __future__ import annotations

import argparse
import sys
import tarfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from schemas import SHARDS_DIR  # noqa: E402


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
    flac = by_member["flac"]
    print(f"shards: {len(shards)}, samples: {samples}, shard bytes: {shard_bytes:,}")
    for kind, size in sorted(by_member.items()):
        print(f"  {kind:12s} {size:>14,} bytes ({size / shard_bytes:.1%})")
    headers = shard_bytes - sum(by_member.values())
    print(f"  {'tar headers':12s} {headers:>14,} bytes ({headers / shard_bytes:.1%})")
    print(f"shard_over_flac={shard_bytes / flac:.3f}")


if __name__ == "__main__":
    main()
