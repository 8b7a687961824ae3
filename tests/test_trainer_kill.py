"""SIGKILL during training, then --resume: training continues from the last complete checkpoint."""

from __future__ import annotations

import filecmp
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from shardfactory import factory_output  # noqa: F401  (a fixture)
from test_trainer import FAST, REPO, run_module

from models.checkpoint import load_checkpoint


def published(step_file, last) -> bool:
    """last.pt is step_file (a hard link, or a copy where links are not to be had)."""
    try:
        return os.path.samefile(step_file, last) or filecmp.cmp(step_file, last, shallow=False)
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_sigkill_mid_training_then_resume_continues_from_the_last_checkpoint(
    factory_output,  # noqa: F811
    tmp_path,
):
    run = tmp_path / "RUN"
    args = [f"--shards={factory_output}", f"--out={run}", "--batch-size=4", "--log-every=1",
            "--checkpoint-every=3", "--val-every=0", *FAST]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "trainer.main", *args, "--steps=1000"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 240
        # step-6.pt is renamed into place a moment before last.pt is linked to it: wait for both
        while not published(run / "step-6.pt", run / "last.pt"):
            assert proc.poll() is None and time.time() < deadline, "training never reached step 6"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    resumed_from = load_checkpoint(run / "last.pt")["step"]  # whole, loadable, weights_only
    assert resumed_from >= 6 and resumed_from % 3 == 0
    for path in run.glob("step-*.pt"):
        load_checkpoint(path)

    run_module(*args, "--resume", f"--steps={resumed_from + 3}")
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in lines if r["kind"] == "train"]
    assert steps == list(range(1, resumed_from + 4))  # lines past the checkpoint were dropped
    assert load_checkpoint(run / "last.pt")["step"] == resumed_from + 3
