"""The worker images: hadolint clean, non-root, installing exactly requirements.txt.

No Docker engine runs on the development machines; the images are built in CI elsewhere
(README, "Docker images")."""

import re
import shutil
import subprocess

import pytest

from tests.conftest import REPO

DOCKERFILES = sorted((REPO / "docker").glob("*.Dockerfile"))


def test_both_images_exist():
    assert {p.name for p in DOCKERFILES} == {"pipeline.Dockerfile", "trainer.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_is_clean(dockerfile):
    hadolint = shutil.which("hadolint") or str(REPO / ".venv" / "bin" / "hadolint")
    proc = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_install_requirements_txt_and_nothing_else(dockerfile):
    text = dockerfile.read_text()
    assert "COPY requirements.txt ." in text
    installs = re.findall(r"pip install[^\n]*", text)
    assert installs == ["pip install --no-cache-dir -r requirements.txt"]
    users = re.findall(r"^USER (\S+)", text, flags=re.M)
    assert users and users[-1] not in {"root", "0", "0:0"}


def test_pipeline_image_is_the_pinned_beam_sdk():
    pinned = re.search(
        r"^apache-beam\[?[\w,]*\]?==(\S+)$", (REPO / "requirements.txt").read_text(), flags=re.M
    ).group(1)
    text = (REPO / "docker" / "pipeline.Dockerfile").read_text()
    assert f"FROM apache/beam_python3.11_sdk:{pinned}" in text
