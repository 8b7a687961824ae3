"""Shared fixtures. Tests that need ../shared/data skip without it, and fail under CI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


def _shared(sub: str) -> Path:
    path = SHARED_DATA / sub
    if not path.is_dir():
        message = f"{path} is missing (the developers' test data beside the checkout)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; under CI it must be there")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def shared_videos() -> Path:
    """../shared/data/videos: 59 real clips with natural sound and odd encodings."""
    return _shared("videos")


@pytest.fixture(scope="session")
def shared_esc10() -> Path:
    """../shared/data/esc10: ESC-10 as mono 22050 Hz FLAC with meta/esc10.csv."""
    return _shared("esc10")
