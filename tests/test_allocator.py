"""runtime/allocator.py: freed batches are reused, not mapped and faulted in afresh."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from runtime import GLIBC
from tests.conftest import REPO

pytestmark = pytest.mark.skipif(not GLIBC, reason="glibc's malloc")

# "Batches" in a worker thread, as Beam's runner threads run the teachers: tensors of a teacher
# batch's sizes (EfficientNet-Lite0, 32 frames: its input, first and expanded activations, 19 to
# 154 MB) allocated, every page written, freed. (Tensors, not numpy arrays: numpy asks for huge
# pages, 512 times fewer faults, torch does not.)
BATCHES = textwrap.dedent("""
    import json, os, resource, sys, threading
    import torch
    from runtime import keep_freed_memory
    kept = sys.argv[1] == "kept" and keep_freed_memory()
    faults = []
    def batches():
        for _ in range(8):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for mb in (19, 51, 154, 51, 154, 26):
                torch.ones(mb * 2**20 // 4)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    worker = threading.Thread(target=batches)
    worker.start()
    worker.join()
    env = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    print(json.dumps({"kept": kept, "faults": faults, "env": env}))
""")


def batches(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    proc = subprocess.run(
        [sys.executable, "-c", BATCHES, mode], cwd=REPO, capture_output=True, text=True,
        env={**clean, **env}, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_a_freed_batch_is_reused_instead_of_faulted_in_again():
    pages = (19 + 51 + 154 + 51 + 154 + 26) * 2**20 // os.sysconf("SC_PAGE_SIZE")
    default = batches("default")
    assert not default["kept"] and default["env"] == {}
    # glibc's default: tensors over 32 MB mapped afresh, every page of every batch faulted in again
    assert all(f > 0.6 * pages for f in default["faults"]), default
    kept = batches("kept")
    assert kept["kept"]
    assert kept["faults"][0] > 0.3 * pages  # the first batch's pages are new
    assert max(kept["faults"][-4:]) < 0.01 * pages, kept  # then the same pages serve each batch
    # the processes it starts (Beam's multi-processing workers) begin with the same settings
    assert kept["env"] == {
        "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 30), "MALLOC_ARENA_MAX": "1",
    }  # fmt: skip


def test_settings_a_user_put_in_the_environment_are_kept():
    got = batches("kept", MALLOC_ARENA_MAX="4")
    assert got["env"]["MALLOC_ARENA_MAX"] == "4"
    assert got["env"]["MALLOC_MMAP_MAX_"] == "0"


# Each program's main, asked only for its help: the settings come first, before any option is read
# (and so before any thread or worker process is made).
PROGRAMS = textwrap.dedent("""
    import contextlib, importlib, io, json, os, sys
    applied = {}
    for name in sys.argv[1:]:
        for variable in [v for v in os.environ if v.startswith("MALLOC_")]:
            del os.environ[variable]
        main = importlib.import_module(name).main
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
            main(["--help"])
        applied[name] = os.environ.get("MALLOC_MMAP_MAX_")
    print(json.dumps(applied))
""")


def test_every_program_applies_the_settings_first():
    programs = ["pipeline.run", "trainer.main", "eval.run", "eval.predict"]
    scripts = (REPO / "pyproject.toml").read_text()
    assert all(f'"{name}:main"' in scripts for name in programs)  # the installed commands too
    proc = subprocess.run([sys.executable, "-c", PROGRAMS, *programs], cwd=REPO,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == dict.fromkeys(programs, "0")
