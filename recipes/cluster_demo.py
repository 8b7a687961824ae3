"""`make cluster-demo`: the pipeline on a Dask cluster that this command starts and stops.

    python -m recipes.cluster_demo [--input samples/videos] [--output DIR] [--workers 2]

Starts `dask scheduler` and `dask worker` (N worker processes, one thread each) on 127.0.0.1,
runs `pipeline.run` on them through Beam's DaskRunner, prints the run's summary and what the
teacher saw, and stops the cluster. On a real cluster the same pipeline command is given the
scheduler's address (README, "Scale-out").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from pipeline import run
from recipes.demo import sample_videos
from runtime.arguments import at_least_one


@contextlib.contextmanager
def started(command: list[str], log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """A process in its own process group, killed with its children on the way out."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_for(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None or time.time() > deadline:
            tail = log.read_text(errors="replace")[-3000:]
            raise SystemExit(f"the dask scheduler did not start:\n{tail}")
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recipes.cluster_demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--input", help="videos (any pipeline --input; default: samples/videos of a checkout)"
    )
    parser.add_argument("--output", help="output directory (default: a temporary one)")
    # 0 workers would leave wait_for_workers nothing to wait for and the pipeline no one to run it
    parser.add_argument("--workers", type=at_least_one, default=2, help="dask worker processes")
    args = parser.parse_args(argv)
    videos = args.input or sample_videos(parser)

    with tempfile.TemporaryDirectory(prefix="soundnet-dask-") as tmp:
        root = Path(tmp)
        output = args.output or str(root / "out")
        scheduler_file = root / "scheduler.json"
        # the workers import the installed project (make setup; on a cluster: the image
        # from docker/, or `pip install` of this repository on each worker)
        env = dict(os.environ)
        dask = [sys.executable, "-m", "dask"]
        # every listener on 127.0.0.1, the HTTP (dashboard/metrics) ones included
        local = ["--host=127.0.0.1", "--no-dashboard", "--dashboard-address=127.0.0.1:0"]
        scheduler = [*dask, "scheduler", *local, "--port=0", f"--scheduler-file={scheduler_file}"]
        workers = [*dask, "worker", *local, f"--scheduler-file={scheduler_file}",
                   f"--nworkers={args.workers}", "--nthreads=1",
                   f"--local-directory={root / 'work'}"]  # fmt: skip
        with started(scheduler, root / "scheduler.log", env) as s:
            wait_for(scheduler_file, s, root / "scheduler.log")
            address = json.loads(scheduler_file.read_text())["address"].removeprefix("tcp://")
            with started(workers, root / "workers.log", env):
                from dask.distributed import Client

                with Client(address, timeout=60) as client:
                    client.wait_for_workers(args.workers, timeout=180)
                print(f"dask scheduler at {address} with {args.workers} worker processes")
                code = run.main([
                    f"--runner={run.DASK_RUNNER}", f"--dask_client_address={address}",
                    f"--input={videos}", f"--output={output}",
                ])  # fmt: skip
                if code == 0:
                    from recipes.demo import teacher_top3

                    print("what the visual teacher saw (objects head, mean over frames):")
                    for source, top in sorted(teacher_top3(Path(output)).items()):
                        classes = ", ".join(f"{name} {p:.2f}" for name, p in top)
                        print(f"  {Path(source).name:36s} {classes}")
        print("dask scheduler and workers stopped")
        if not args.output:
            print("(the output was a temporary directory, now removed: --output keeps it)")
    return code


if __name__ == "__main__":
    sys.exit(main())
