"""The worker images: hadolint clean, non-root, installing exactly requirements.txt and the
project (without dependencies of its own).

No Docker engine runs on the development machines; the images are built in CI elsewhere
(README, "Docker images")."""

import re
import shutil
import subprocess

import pytest

from tests.conftest import REPO
from tests.test_architecture import import_graph

DOCKERFILES = sorted((REPO / "docker").glob("*.Dockerfile"))


def test_both_images_exist():
    assert {p.name for p in DOCKERFILES} == {"pipeline.Dockerfile", "trainer.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_is_clean(dockerfile):
    hadolint = shutil.which("hadolint") or str(REPO / ".venv" / "bin" / "hadolint")
    proc = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_install_requirements_txt_and_the_project_and_nothing_else(dockerfile):
    text = dockerfile.read_text()
    assert "COPY requirements.txt ." in text
    installs = re.findall(r"pip install[^\n]*", text)
    assert installs == [
        "pip install --no-cache-dir -r requirements.txt",
        "pip install --no-cache-dir --no-deps .",
    ]
    users = re.findall(r"^USER (\S+)", text, flags=re.M)
    assert users and users[-1] not in {"root", "0", "0:0"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_set_the_allocator_settings_the_programs_apply(dockerfile):
    from runtime import SETTINGS

    text = dockerfile.read_text()
    env = dict(re.findall(r"(MALLOC_\w+)=(\S+)", " ".join(re.findall(r"^ENV (.+)$", text, re.M))))
    assert env == {variable: str(value) for _, value, variable in SETTINGS}


def test_pipeline_image_is_the_pinned_beam_sdk():
    pinned = re.search(
        r"^apache-beam\[?[\w,]*\]?==(\S+)$", (REPO / "requirements.txt").read_text(), flags=re.M
    ).group(1)
    text = (REPO / "docker" / "pipeline.Dockerfile").read_text()
    assert f"FROM apache/beam_python3.11_sdk:{pinned}" in text


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_project_installs_from_what_the_image_copies(dockerfile, tmp_path):
    """No engine here: replay the image's COPY lines into a folder and build the project's
    wheel from it, as its `pip install --no-deps .` does."""
    import sys
    import zipfile

    context = tmp_path / "image"
    for sources, _ in re.findall(r"^COPY (.+) (\S+)$", dockerfile.read_text(), flags=re.M):
        for source in sources.split():
            path = REPO / source.rstrip("/")
            target = context / path.relative_to(REPO)
            if path.is_dir():
                shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, target)
    copied = {p.name for p in context.iterdir() if p.is_dir()}
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "wheel"), str(context)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = (tmp_path / "wheel").glob("soundnet-*.whl")
    packages = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
    assert copied and copied <= packages
    # and what the copied packages import of the project is copied too
    graph = import_graph(REPO)
    imported = {t.split(".")[0] for m, ts in graph.items() if m.split(".")[0] in copied for t in ts}
    assert imported <= copied, (
        f"{dockerfile.name} copies {sorted(copied)}, needs {sorted(imported)}"
    )
