"""The same code on real distributed engines, on this machine (issue 9).

- `pipeline.run` on Beam's DaskRunner against a dask.distributed cluster started with the
  `dask scheduler` / `dask worker` commands (2 worker processes, 1 thread each), and through the
  portable job API (Beam's Python job server, LOOPBACK workers): the samples, index rows and
  failures equal the DirectRunner's (the session's `pipeline_output`) for the same clips.
- A Dask worker process SIGKILLed mid-run: the engine reruns its tasks, the run completes
  equal to an uninterrupted run, and no half-written file is ever visible.
- The teacher is built once per worker process, not per element or bundle (a spy on each
  worker logs the real calls).
- The trainer across two torchrun "nodes" (separate agents, c10d rendezvous on 127.0.0.1)
  reading shards over HTTP from a local server, then `--resume` on the same two nodes.

Everything a test starts runs in its own process group, which the test kills when it ends,
pass or fail, and is told to listen on 127.0.0.1 only: the dask scheduler, nannies and workers
(their HTTP ports too), the HTTP server, the job server's API (`localhost`), the rendezvous
endpoint. Two listeners offer no such option: the gRPC ports Beam's job server opens for its
SDK workers, and torch's c10d TCPStore; both listen on all interfaces, on ephemeral ports
(or the rendezvous port), for the few seconds a test runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from schemas import FAILURES_SCHEMA, INDEX_SCHEMA, decode_sample, read_table, shard_name
from tests.conftest import REPO, assert_same_sample, run_module

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("distributed")]

BIN = Path(sys.executable).parent
DASK_RUNNER = "--runner=apache_beam.runners.dask.dask_runner.DaskRunner"
# Odd encodings (VP8/VP9/Opus, MPEG-1, MPEG-4 AVI, rotation, fragmented MP4, HEVC, 5.1 audio,
# 8 kHz and 12 kHz audio, portrait), a 70 s clip of four segments, two clips too short to
# give a segment, and two broken files.
CLIPS = [
    "mdn-sa_tears-of-steel-battle-clip-medium.webm",
    "tmh_bear-vp9-opus.webm",
    "grid_lipnet-bbaf2n.mpg",
    "pymediainfo_sample.mp4",
    "media3_sample.avi",
    "media3_internal_emulator_transformer_output_270_rotated.mp4",
    "media3_sample_with_increasing_timestamps_320w_240h_fragmented.mp4",
    "media3_bbb_960x540_60fps_vp8.webm",
    "media3_hdr10-video-with-sdr-container.mp4",
    "torchcodec_nasa_13013.mp4",
    "media3_8k24fps_300ms.mp4",
    "videollama_skateboarding_dog.mp4",
    "media3_sample_sef_slow_motion.mp4",
]
BAD = ["random.mkv", "empty.mp4"]  # made by the pipeline_output fixture (conftest)
KILL_CLIPS = [
    "videollama_dog_barking.mp4",
    "mdn-la_elf.webm",
    "grid_lipnet-brbk7n.mpg",
    "retalking_2.mp4",
    "mmaction2_test.avi",
    "media3_sample_gamma2.2.mp4",
    "liveportrait_d20.mp4",
    "exoplayer_video_big_buck_bunny.mp4",
]
PORTABLE_CLIPS = [
    "mdn-ie_friday.mp4",
    "media3_sample.avi",
    "tmh_bear-vp9-opus.webm",
    "media3_sample_with_color_info.mp4",
    "imageio_realshort.mp4",
]

# Loaded by every Dask worker (`dask worker --preload`): logs, per worker process, each call of
# the functions that build or use the heavy objects. The real functions still run.
SPY = """
import functools
import os


def dask_setup(worker):
    from pipeline import decode, task, transforms
    from pipeline.teachers import handler

    log = os.environ["SOUNDNET_WORKER_EVENTS"]

    def note(event, detail):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\\t{event}\\t{detail}\\n")

    def spy(owner, name, describe):
        real = getattr(owner, name, None)
        if real is None:  # renamed: the assertions on its events say so
            note("missing", name)
            return

        @functools.wraps(real)
        def wrapper(*args, **kwargs):
            note(name, describe(*args, **kwargs))
            return real(*args, **kwargs)

        setattr(owner, name, wrapper)

    spy(handler, "build_teacher", lambda info, *a, **k: info.head)
    spy(handler.TeacherModelHandler, "probabilities", lambda self, frames, model: len(frames))
    spy(decode, "probe", lambda path, *a, **k: path)
    spy(transforms._WriteTaskFn, "setup", lambda self: "setup")
    spy(task.TaskWriter, "write", lambda self, shard_task: shard_task.task)
"""


# ---------------------------------------------------------------------------------------------
# Processes that are always stopped


@contextlib.contextmanager
def started(command: list[str], log: Path, env: dict | None = None) -> Iterator[subprocess.Popen]:
    """Run `command` in its own process group; kill the whole group on the way out."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            command,
            cwd=REPO,
            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # and whatever of the group is left
    proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, ready, timeout: float, procs: tuple = ()) -> None:
    deadline = time.time() + timeout
    while not ready():
        for proc in procs:
            assert proc.poll() is None, f"{proc.args[:3]} exited with {proc.returncode}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


# ---------------------------------------------------------------------------------------------
# Outputs, compared with the DirectRunner's


def read_samples(output: Path) -> dict:
    shards = sorted(str(p) for p in (output / "shards").glob("*.tar"))
    return {m["__key__"]: decode_sample(m) for m in wds.WebDataset(shards, shardshuffle=False)}


@pytest.fixture(scope="module")
def direct(pipeline_output) -> dict:
    """The DirectRunner's samples, index rows and failure rows, by source."""
    index = read_table(pipeline_output / "index.parquet", INDEX_SCHEMA).to_pylist()
    failures = read_table(pipeline_output / "failures.parquet", FAILURES_SCHEMA).to_pylist()
    return {"samples": read_samples(pipeline_output), "index": index, "failures": failures}


def listing(folder: Path, names: list[str], shared_videos: Path, pipeline_output: Path) -> Path:
    bad = pipeline_output.parent / "bad-inputs"
    paths = [bad / n if n in BAD else shared_videos / n for n in names]
    assert all(p.exists() for p in paths)
    path = folder / "videos.txt"
    path.write_text("".join(f"{p}\n" for p in paths))
    return path


def assert_equals_direct(out: Path, inputs: Path, direct: dict, videos_per_shard: int) -> None:
    """Same keys, identical audio and metadata, teacher rows within 1e-3, the same index rows
    (in input order, sharded by input position) and the same failure rows."""
    sources = inputs.read_text().split()
    order = {s: i for i, s in enumerate(sources)}
    got = read_samples(out)
    want = {k: s for k, s in direct["samples"].items() if s.metadata.source in order}
    assert sorted(got) == sorted(want)
    assert list(got) == sorted(got, key=lambda k: (order[got[k].metadata.source], k))
    for key, sample in want.items():
        assert_same_sample(got[key], sample)
        heads = got[key].metadata.heads  # the DirectRunner's heads, and maybe more
        assert {h: heads[h] for h in sample.metadata.heads} == sample.metadata.heads
        assert replace(got[key].metadata, heads=sample.metadata.heads) == sample.metadata
    index = read_table(out / "index.parquet", INDEX_SCHEMA).to_pylist()
    assert [r["key"] for r in index] == list(got)  # duplicate-free, in shard order
    for row in index:  # one shard per task: short clips, far from the audio target
        assert row.pop("shard") == shard_name(order[row["source"]] // videos_per_shard, 0)
    want_index = {r["key"]: {k: v for k, v in r.items() if k != "shard"} for r in direct["index"]}
    assert index == [want_index[r["key"]] for r in index]
    failures = read_table(out / "failures.parquet", FAILURES_SCHEMA).to_pylist()
    want_failures = [r for r in direct["failures"] if r["source"] in order]
    assert failures == sorted(want_failures, key=lambda r: order[r["source"]])  # input order
    record = json.loads((out / "run.json").read_text())
    assert record["counts"]["videos"] == len(sources)
    assert record["counts"]["videos_failed"] == len(failures)
    assert record["counts"]["samples"] == len(got)
    # nothing half-written or left over is visible
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert not list(out.glob("_plan/pending-*"))


def run_pipeline(inputs: Path, out: Path, *options: str, timeout: float = 600) -> str:
    log = out.parent / f"{out.name}.log"
    command = [sys.executable, "-m", "pipeline.run", f"--input={inputs}", f"--output={out}"]
    with started([*command, *options], log) as proc:
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the pipeline ran over {timeout} s:\n{tail(log)}")
    assert code == 0, tail(log)
    return log.read_text()


# ---------------------------------------------------------------------------------------------
# A Dask cluster: `dask scheduler` and `dask worker` (2 processes under nannies), on 127.0.0.1


@dataclass
class DaskCluster:
    address: str
    client: object  # dask.distributed.Client
    events: Path  # the workers' spy log

    def worker_pids(self) -> dict[str, int]:
        return self.client.run(os.getpid)

    def read_events(self, since: int = 0) -> list[tuple[int, str, str]]:
        if not self.events.exists():
            return []
        lines = self.events.read_text().splitlines()[since:]
        rows = (line.split("\t") for line in lines)
        return [(int(r[0]), r[1], r[2]) for r in rows if len(r) == 3]  # (a line being written)


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory) -> Iterator[DaskCluster]:
    from dask.distributed import Client

    root = tmp_path_factory.mktemp("dask")
    scheduler_file = root / "scheduler.json"
    spy = root / "soundnet_spy.py"
    spy.write_text(SPY)
    events = root / "events.tsv"
    env = {"PYTHONPATH": str(REPO), "SOUNDNET_WORKER_EVENTS": str(events)}
    # every listener on 127.0.0.1, the HTTP (dashboard/metrics) ones included
    dask = [sys.executable, "-m", "dask"]
    local = ["--host=127.0.0.1", "--no-dashboard", "--dashboard-address=127.0.0.1:0"]
    scheduler = [*dask, "scheduler", *local, "--port=0", f"--scheduler-file={scheduler_file}"]
    workers = [*dask, "worker", *local, f"--scheduler-file={scheduler_file}", "--nworkers=2",
               "--nthreads=1", f"--local-directory={root / 'work'}", f"--preload={spy}"]  # fmt: skip
    with started(scheduler, root / "scheduler.log", env) as s:
        wait_for("the scheduler", scheduler_file.exists, 120, (s,))
        with started(workers, root / "workers.log", env) as w:
            client = Client(scheduler_file=str(scheduler_file), timeout=60)
            try:
                client.wait_for_workers(2, timeout=180)
                address = json.loads(scheduler_file.read_text())["address"]
                assert address.startswith("tcp://127.0.0.1:")
                assert all(a.startswith("tcp://127.0.0.1:") for a in client.nthreads())
                yield DaskCluster(address.removeprefix("tcp://"), client, events)
            finally:
                client.close()
                assert w.poll() is None, tail(root / "workers.log")


def places365_checkpoint(folder: Path) -> Path:
    """A Places365 ResNet-18 checkpoint in the CSAIL release's layout (random weights: no
    Places365 weights exist offline), with categories_places365.txt beside it."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=365)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    path = folder / "resnet18_places365.pth.tar"
    torch.save({"epoch": 90, "arch": "resnet18", "state_dict": state}, path)
    lines = [f"/c/class_{i:03d} {i}" for i in range(365)]
    (folder / "categories_places365.txt").write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def dask_run(dask_cluster, shared_videos, pipeline_output, tmp_path_factory) -> dict:
    """One run over CLIPS + BAD on the 2-worker cluster, 4 videos a shard, with both teacher
    heads: the default objects teacher and a Places365 scenes teacher."""
    folder = tmp_path_factory.mktemp("dask-run")
    inputs = listing(folder, [*CLIPS, *BAD], shared_videos, pipeline_output)
    out = folder / "out"
    scenes = places365_checkpoint(folder)
    before = len(dask_cluster.read_events())
    pids = dask_cluster.worker_pids()
    started_at = time.time()
    log = run_pipeline(inputs, out, DASK_RUNNER, f"--dask_client_address={dask_cluster.address}",
                       "--videos-per-shard=4", "--teacher-batch-size=8",
                       "--scenes-teacher=places365_resnet18",
                       f"--scenes-weights={scenes}")  # fmt: skip
    seconds = time.time() - started_at
    events = dask_cluster.read_events(before)
    return {"inputs": inputs, "out": out, "log": log, "events": events, "pids": pids,
            "seconds": seconds}  # fmt: skip


def test_dask_runner_output_equals_the_direct_runners(dask_run, direct):
    assert_equals_direct(dask_run["out"], dask_run["inputs"], direct, videos_per_shard=4)
    for sample in read_samples(dask_run["out"]).values():  # the second head, on every sample
        scenes = sample.probs["scenes"].astype(np.float32)
        assert scenes.shape == (len(sample.metadata.frame_times_s), 365)
        np.testing.assert_allclose(scenes.sum(axis=1), 1, atol=1e-2)
        assert sample.metadata.heads["scenes"].teacher == "places365_resnet18"
    assert "dask: " in dask_run["log"] and "(2 worker threads)" in dask_run["log"]
    # both worker processes really did the work
    decoded = Counter(pid for pid, event, _ in dask_run["events"] if event == "probe")
    assert set(decoded) == set(dask_run["pids"].values()), decoded
    assert sum(decoded.values()) == len(CLIPS) + len(BAD)


def test_dask_workers_build_each_teacher_once_not_per_element(dask_run):
    """Per worker process, each teacher's model is built once, for all of its tasks and
    batches, although Beam's Dask translation sets the writing DoFn up for every bundle
    (the models outlive it in Beam's Shared cache)."""
    events = dask_run["events"]
    assert not [d for _, e, d in events if e == "missing"], "the spy lost track of a function"
    builds = Counter((pid, head) for pid, event, head in events if event == "build_teacher")
    setups = Counter(pid for pid, event, _ in events if event == "setup")
    tasks = Counter(pid for pid, event, _ in events if event == "write")
    batches, frames = Counter(), Counter()
    for pid, event, detail in events:
        if event == "probabilities":
            batches[pid] += 1
            frames[pid] += int(detail)
    summary = {
        pid: {
            "teacher builds": {h: builds[pid, h] for h in ("objects", "scenes")},
            "DoFn setups": setups[pid],
            "tasks": tasks[pid],
            "batches": batches[pid],
            "frames": frames[pid],
        }
        for pid in dask_run["pids"].values()
    }
    print("per worker process:", json.dumps(summary))
    workers = set(tasks)
    assert workers == set(dask_run["pids"].values()), summary  # both did tasks
    assert {pid for pid, _ in builds} == workers  # who wrote tasks built the teachers
    assert all(n == 1 for n in builds.values()), summary  # ... once each
    assert len(builds) == 2 * len(workers)  # both heads
    assert max(tasks.values()) >= 2, summary  # and reused them across tasks
    assert sum(tasks.values()) == -(-len(CLIPS + BAD) // 4)  # every task written once


def test_a_killed_dask_worker_reruns_and_the_output_equals_an_uninterrupted_run(
    dask_cluster, shared_videos, pipeline_output, direct, tmp_path
):
    """SIGKILL a worker process while it decodes (its running task and in-memory results are
    lost) and, when the run is still going, another one once the first shard is written;
    the nannies restart them and the scheduler reruns what was lost. Every shard that is
    visible while the run goes on is whole."""
    inputs = listing(tmp_path, KILL_CLIPS, shared_videos, pipeline_output)
    out = tmp_path / "out"
    log = tmp_path / "out.log"
    before = len(dask_cluster.read_events())
    command = [sys.executable, "-m", "pipeline.run", f"--input={inputs}", f"--output={out}",
               DASK_RUNNER, f"--dask_client_address={dask_cluster.address}",
               "--videos-per-shard=2", "--teacher-batch-size=4"]  # fmt: skip
    killed: list[str] = []
    seen_shards: dict[str, int] = {}
    with started(command, log) as proc:
        deadline = time.time() + 600
        while proc.poll() is None:
            assert time.time() < deadline, f"the run took too long:\n{tail(log)}"
            events = dask_cluster.read_events(before)
            if not killed:
                decoding = [(pid, uri) for pid, event, uri in events if event == "probe"]
                if len(decoding) >= 2:  # a worker is on its second video
                    first_victim, in_flight = decoding[-1]
                    os.kill(first_victim, signal.SIGKILL)
                    killed.append("while decoding")
            elif len(killed) == 1 and list(out.glob("_progress/done/shard-*")):
                live = set(dask_cluster.worker_pids().values())
                victims = sorted(live - {first_victim})
                if victims and proc.poll() is None:
                    os.kill(victims[0], signal.SIGKILL)
                    killed.append("after the first shard was written")
            for shard in out.glob("shards/*.tar"):
                if seen_shards.get(shard.name) != shard.stat().st_ino:
                    with tarfile.open(shard) as tar:  # whole, under its final name
                        assert len(tar.getmembers()) % 3 == 0
                    seen_shards[shard.name] = shard.stat().st_ino
            time.sleep(0.05)
        assert proc.returncode == 0, tail(log)
    print("killed a worker:", killed)
    assert killed[:1] == ["while decoding"]
    probes = Counter(uri for _, event, uri in dask_cluster.read_events(before) if event == "probe")
    assert probes[in_flight] >= 2, probes  # the task the killed worker was running ran again
    assert set(probes) == set(inputs.read_text().split())
    assert_equals_direct(out, inputs, direct, videos_per_shard=2)
    assert len(list(out.glob("shards/*.tar"))) == 4
    # the nannies brought both worker processes back
    dask_cluster.client.wait_for_workers(2, timeout=120)


# ---------------------------------------------------------------------------------------------
# The portable job API: Beam's Python job server, LOOPBACK workers


def test_portable_runner_through_the_job_server_equals_the_direct_runner(
    shared_videos, pipeline_output, direct, tmp_path
):
    port = free_port()
    server = [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
              f"--port={port}"]  # fmt: skip
    server_log = tmp_path / "job-server.log"
    inputs = listing(tmp_path, [*PORTABLE_CLIPS, "random.mkv"], shared_videos, pipeline_output)
    out = tmp_path / "out"
    with started(server, server_log) as job_server:
        wait_for("the job server", lambda: "Listening for beam jobs" in tail(server_log), 120,
                 (job_server,))  # fmt: skip
        run_pipeline(inputs, out, "--runner=PortableRunner", f"--job_endpoint=localhost:{port}",
                     "--environment_type=LOOPBACK", "--videos-per-shard=3")  # fmt: skip
        # the job really ran in the job server, with a worker the pipeline process served
        log = tail(server_log, 1_000_000)
        assert "Running job" in log and "Completed job" in log and "state DONE" in log
    assert_equals_direct(out, inputs, direct, videos_per_shard=3)


# ---------------------------------------------------------------------------------------------
# The trainer on two torchrun nodes, shards over HTTP


def torchrun_node(node: int, rdzv_port: int, *args: str) -> list[str]:
    return [str(BIN / "torchrun"), "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{rdzv_port}", "--rdzv-id=soundnet-test",
            f"--rdzv-conf=is_host={'true' if node == 0 else 'false'}", f"--node-rank={node}",
            "--max-restarts=0", "-m", "trainer.main", *args]  # fmt: skip


def train_on_two_nodes(folder: Path, name: str, args: list[str]) -> None:
    rdzv = free_port()
    env = {"PYTHONPATH": str(REPO), "GLOO_SOCKET_IFNAME": "lo"}
    logs = [folder / f"{name}-node{n}.log" for n in (0, 1)]
    with (
        started(torchrun_node(0, rdzv, *args), logs[0], env) as node0,
        started(torchrun_node(1, rdzv, *args), logs[1], env) as node1,
    ):
        for proc, log in ((node0, logs[0]), (node1, logs[1])):
            try:
                code = proc.wait(timeout=300)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{log.name} ran over 300 s:\n{tail(log)}")
            assert code == 0, f"{log.name}:\n{tail(log)}\n{tail(logs[1 - logs.index(log)])}"


def test_two_torchrun_nodes_train_from_shards_over_http_and_resume(pipeline_output, tmp_path):
    shards = sorted(p.name for p in (pipeline_output / "shards").glob("*.tar"))
    assert len(shards) >= 4
    http = free_port()
    server = [sys.executable, "-m", "http.server", str(http), "--bind=127.0.0.1",
              f"--directory={pipeline_output}"]  # fmt: skip
    server_log = tmp_path / "http.log"
    base = f"http://127.0.0.1:{http}"
    pattern = f"{base}/shards/shard-{{000000..{len(shards) - 1:06d}}}-0000.tar"
    run = tmp_path / "RUN"
    common = [f"--shards={pattern}", f"--out={run}", "--batch-size=2", "--no-resample",
              "--crop-seconds=5", "--workers=1", "--log-every=1", "--checkpoint-every=0",
              "--no-progress", "--no-tensorboard", "--device=cpu"]  # fmt: skip
    with started(server, server_log):
        wait_for("the HTTP server", lambda: "Serving HTTP" in tail(server_log), 60)
        train_on_two_nodes(tmp_path, "train", [*common, "--steps=3"])
        record = json.loads((run / "run.json").read_text())
        assert record["world_size"] == 2
        ranks = sorted(record["ranks"], key=lambda r: r["rank"])
        read = [set(r["shards_read"]) for r in ranks]
        assert read[0] and read[1] and read[0].isdisjoint(read[1]), read
        assert all(url.startswith(f"{base}/shards/shard-") for url in read[0] | read[1])
        assert sorted(p.name for p in run.glob("*.pt")) == ["last.pt", "step-3.pt"]  # one writer
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        train = [m for m in metrics if m["kind"] == "train"]
        assert [m["step"] for m in train] == [1, 2, 3]
        assert train[-1]["samples"] == 3 * 2 * 2  # both ranks' samples, every step
        import torch

        ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
        assert ckpt["step"] == 3 and ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
        labels = (pipeline_output / "labels" / "objects.txt").read_text().splitlines()
        assert ckpt["labels"]["objects"] == labels  # read over HTTP too

        train_on_two_nodes(tmp_path, "resume", [*common, "--steps=5", "--resume"])
        record = json.loads((run / "run.json").read_text())
        assert (record["world_size"], record["start_step"], record["end_step"]) == (2, 3, 5)
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [m["step"] for m in metrics if m["kind"] == "train"] == [1, 2, 3, 4, 5]
        resumed = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
        assert resumed["step"] == 5 and int(resumed["optimizer"]["state"][0]["step"]) == 5
        assert sorted(p.name for p in run.glob("*.pt")) == ["last.pt", "step-3.pt", "step-5.pt"]
    requests = tail(server_log, 1_000_000)
    assert "GET /shards/shard-" in requests and "GET /labels/objects.txt" in requests


# ---------------------------------------------------------------------------------------------
# `make cluster-demo`


def test_cluster_demo_starts_a_dask_cluster_runs_the_sample_and_stops_it(tmp_path):
    """The command behind `make cluster-demo`, as a user runs it (needs nothing beside the repo)."""
    done = run_module(
        "recipes.cluster_demo",
        f"--output={tmp_path / 'out'}",
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    lines = done.stdout.splitlines()
    address = next(line for line in lines if line.startswith("dask scheduler at ")).split()[3]
    assert address.startswith("127.0.0.1:")
    assert "4 videos: 4 written as 5 samples in 1 shards (0.7 min of audio), 0 failed" in lines
    assert any("mdn-ie_friday.mp4" in line and "television" in line for line in lines)
    assert lines[-1] == "dask scheduler and workers stopped"
    host, port = address.split(":")
    with pytest.raises(OSError), socket.create_connection((host, int(port)), timeout=5):
        pass  # nothing listens there any more
