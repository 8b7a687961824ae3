"""Planning a corpus, and the Beam job it makes, at 1,000 and 1,000,000 manifest rows.

    .venv/bin/python bench/plan.py [--rows 1000000]

For each size, in a fresh process: read a CSV manifest of that many rows (`uri` only; the files
need not exist: planning never opens them), write the plan under a temporary output
(pipeline/plan.py: video ids, tasks, _plan/*.parquet), and build the pipeline's Beam job graph
(its runner API proto, what a runner such as Dataflow is sent). Prints the wall time and peak
memory of planning and the graph's size; `graph_ratio=` (the large graph's bytes over the small
one's) last: the plan is on disk, so the job should not grow with the corpus.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Run in a child process, so that its peak memory is planning's alone.
CHILD = """
import json, resource, sys, time
sys.path.insert(0, {repo!r})
import apache_beam as beam
from pipeline.inputs import read_input_entries
from pipeline.plan import make_plan, write_pending
from pipeline.segments import SegmentPlan
from pipeline.task import RunSettings
from pipeline.teachers import resolve_teacher
from pipeline.transforms import WriteShardTasks

teacher = resolve_teacher("objects", "efficientnet_lite0")
start = time.perf_counter()
entries = read_input_entries({manifest!r})
plan = make_plan({output!r}, entries, 100, {{}})
plan_s = time.perf_counter() - start
pending = write_pending({output!r}, plan, set())
p = beam.Pipeline(runner="DirectRunner")
p | WriteShardTasks(pending, RunSettings({output!r}, SegmentPlan(), (teacher,)))
graph = len(p.to_runner_api().SerializeToString())
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"plan_s": plan_s, "peak": peak, "graph": graph, "tasks": plan.tasks}}))
"""


def measure(rows: int, folder: Path) -> dict:
    manifest = folder / f"manifest-{rows}.csv"
    with manifest.open("w") as f:
        f.write("uri\n")
        f.writelines(f"/corpus/{i // 1000:04d}/video{i:07d}.mp4\n" for i in range(rows))
    code = CHILD.format(repo=str(REPO), manifest=str(manifest), output=str(folder / f"out-{rows}"))
    # Beam's Pipeline() makes a temporary folder that only run() removes: keep it in ours
    env = {**os.environ, "TMPDIR": str(folder)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="soundnet-plan-") as tmp:
        for rows in (1000, args.rows):
            r = results[rows] = measure(rows, Path(tmp))
            print(
                f"rows={rows}: planning {r['plan_s']:.1f} s, peak memory "
                f"{r['peak'] / 2**30:.2f} GiB, {r['tasks']} tasks, job graph {r['graph']:,} bytes",
                flush=True,
            )
    print(f"graph_ratio={results[args.rows]['graph'] / results[1000]['graph']:.3f}")


if __name__ == "__main__":
    main()
