"""The commands as a user meets them: an installed package, options that cannot be mistyped,
help that lists the options, one-line errors for wrong paths."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from pipeline.options import SoundNetOptions, _project_parser
from tests.conftest import REPO, run_module, run_pipeline
from tests.test_architecture import FORBIDDEN

PACKAGES = set(FORBIDDEN)  # the packages of the architecture


def pipeline_run(*args: str) -> subprocess.CompletedProcess:
    return run_module("pipeline.run", *args, timeout=120)


def test_a_mistyped_option_stops_the_run_before_any_work(tmp_path):
    out = tmp_path / "out"
    proc = pipeline_run(f"--input={REPO / 'samples' / 'videos'}", f"--output={out}",
                        "--runner=DirectRunner", "--segment-second=10",
                        "--objects-teachr=resnet50")  # fmt: skip
    assert proc.returncode == 2
    assert "unknown option '--segment-second=10'" in proc.stderr
    assert "did you mean --segment-seconds?" in proc.stderr
    assert not out.exists()  # nothing planned, nothing read
    assert "apitools" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_beam_options_of_every_runner_pass_through(tmp_path):
    """Options of the direct, Dataflow, Flink, Spark and Dask runners are known; the run goes
    on to the next check (here: an input folder without media)."""
    (tmp_path / "in").mkdir()
    proc = pipeline_run(f"--input={tmp_path / 'in'}", f"--output={tmp_path / 'out'}",
                        "--runner=DirectRunner", "--direct_num_workers=2",
                        "--direct_running_mode=multi_threading", "--project=p",
                        "--dataflow_service_options=x", "--flink_master=localhost:8081",
                        "--spark_master_url=local[2]", "--dask_client_address=localhost:8786",
                        "--experiments=a", "--experiments=b")  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"python -m pipeline.run: error: --input '{tmp_path / 'in'}': no media in it "
        "(looked for files named .3g2, .3gp, .asf, .avi, .flv, .m2ts, ...)"
    ]


def test_help_lists_every_project_option_with_its_default():
    proc = pipeline_run("--help")
    assert proc.returncode == 0 and proc.stderr == ""
    text = " ".join(proc.stdout.split())  # argparse wraps lines
    for action in _project_parser()._actions:
        flag = max(action.option_strings, key=len)
        assert flag in text
    options = [a for a in _project_parser()._actions if a.dest not in ("help", "help_beam")]
    assert len(options) == len(_options_of(SoundNetOptions)) >= 14
    for action in options:
        assert f"(default: {action.default})" in text, action.dest
    assert "--help-beam" in text
    beam = pipeline_run("--help-beam")
    assert beam.returncode == 0 and "--direct_num_workers" in beam.stdout


def _options_of(cls) -> list[str]:
    import argparse

    parser = argparse.ArgumentParser()
    cls._add_argparse_args(parser)
    return [a.dest for a in parser._actions if a.dest != "help"]


def test_wrong_paths_are_one_line_errors(tmp_path):
    a_file = tmp_path / "out.txt"
    a_file.write_text("not a folder")
    proc = pipeline_run(f"--input={REPO / 'samples' / 'videos'}", f"--output={a_file}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"python -m pipeline.run: error: --output {a_file}: is a file, not a directory"
    ]
    listing = tmp_path / "none.txt"
    listing.write_text("# nothing listed\n")
    proc = pipeline_run(f"--input={listing}", f"--output={tmp_path / 'out'}")
    assert proc.returncode == 2 and "no media in it" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "option, message",
    [("--teacher-batch-size=0", "--teacher-batch-size must be at least 1"),
     ("--decode-timeout=0", "--decode-timeout must be a positive number"),
     ("--shard-audio-minutes=nan", "--shard-audio-minutes must be a positive number"),
     ("--max-failed-fraction=1.5", "--max-failed-fraction must be between 0 and 1"),
     ("--segment-seconds=inf", "must be finite"),
     ("--frame-interval=0.00002", "under one audio sample")],
)  # fmt: skip
def test_options_out_of_range_stop_the_run_before_any_work(tmp_path, capsys, option, message):
    """Each had gone on to fail in every worker (a batch of 0: a traceback), every video (a
    timeout of 0, an infinite segment: failures rows and exit 0) or every rerun (NaN != NaN)."""
    out = tmp_path / "out"
    code = run_pipeline(f"--input={REPO / 'samples' / 'videos'}", f"--output={out}", option)
    assert code == 2 and message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_a_missing_cuda_device_stops_a_local_run_before_any_work(tmp_path):
    """Not found out by the first worker after the plan is written, in a page of tracebacks; a
    cluster's driver need not have its workers' GPUs, so there it is left to them."""
    out = tmp_path / "out"
    proc = pipeline_run(f"--input={REPO / 'samples' / 'videos'}", f"--output={out}",
                        "--device=cuda")  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "python -m pipeline.run: error: device cuda was asked for, but no CUDA device is usable "
        "here"
    ]
    assert not out.exists()


def test_the_project_is_installed_and_imports_from_any_folder(tmp_path):
    """`make setup` installs it (editable) into .venv: programs in .venv/bin import it."""
    proc = subprocess.run(
        [sys.executable, "-c", "import eval.hear, pipeline.run, recipes.demo; print(eval.__file__)"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    scripts = Path(sys.executable).parent
    for name in ("soundnet-pipeline", "soundnet-train", "soundnet-eval", "soundnet-reproduce"):
        assert (scripts / name).is_file(), name
    help_text = subprocess.run([scripts / "soundnet-train", "--help"], cwd=tmp_path,
                               capture_output=True, text=True, timeout=120)  # fmt: skip
    assert help_text.returncode == 0 and "--shards" in help_text.stdout


@pytest.mark.slow
def test_pip_wheel_builds_a_wheel_holding_every_package(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("soundnet-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.startswith("soundnet-")} == PACKAGES
    for package in PACKAGES:  # every module of every package, not just the folders
        modules = {p.relative_to(REPO).as_posix() for p in (REPO / package).rglob("*.py")}
        assert modules <= set(names), modules - set(names)
    assert "schemas/imagenet1k.txt" in names  # data the code reads
    metadata = next(n for n in names if n.endswith("METADATA"))
    requires = re.findall(r"^Requires-Dist: (\S+)$", zipfile.ZipFile(wheel).read(metadata).decode(),
                          flags=re.M)  # fmt: skip
    pinned = [line.split()[0] for line in (REPO / "requirements.txt").read_text().splitlines()
              if line and not line.startswith("#")]  # fmt: skip
    assert requires == pinned  # the runtime pins, exactly
