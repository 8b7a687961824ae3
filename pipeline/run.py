"""Videos -> WebDataset shards of audio + teacher distributions.

    python -m pipeline.run --runner=DirectRunner --input=VIDEOS --output=OUT [beam options]

The driver lists the inputs and writes the plan under the output (pipeline/plan.py: videos in
shard tasks), the Beam job writes every unfinished task's shards, one task per worker call
(pipeline/transforms.py), and the driver streams the finished shards' rows into index.parquet
and failures.parquet and writes labels/ and run.json. Rerunning the same command over the same
output goes on where a killed run stopped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import sys
import time

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.portability.api import beam_provision_api_pb2
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.runners.portability.portable_runner import JobServiceHandle
from apache_beam.runners.runner import PipelineRunner

from pipeline import decode, files, progress
from pipeline.inputs import InputListError, read_input_entries
from pipeline.options import (
    SoundNetOptions,
    UsageError,
    parse_args,
    print_usage_error,
    project_option_names,
)
from pipeline.plan import Plan, make_plan, remove_pending, write_pending
from pipeline.segments import SegmentPlan
from pipeline.task import RunSettings
from pipeline.teachers import (
    TeacherError,
    TeacherInfo,
    resolve_teacher,
    torch_device,
    usable_device,
)
from pipeline.transforms import WriteShardTasks
from runtime import keep_freed_memory
from schemas import FAILURES_FILE, LABELS_DIR, RUN_FILE, SCHEMA_VERSION, format_labels

log = logging.getLogger("pipeline")

DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"


def resolve_teachers(opts: SoundNetOptions) -> tuple[TeacherInfo, ...]:
    """The heads this run labels, resolved once here (weights file, digest, class names), so
    that a missing weights file stops the run before any video is touched."""
    wanted = [
        ("objects", opts.objects_teacher, opts.objects_weights, None),
        ("scenes", opts.scenes_teacher, opts.scenes_weights, opts.scenes_labels),
    ]
    teachers = tuple(
        resolve_teacher(head, name, weights, labels)
        for head, name, weights, labels in wanted
        if name and name.lower() != "none"
    )
    if not teachers:
        raise TeacherError("no teacher: give --objects-teacher and/or --scenes-teacher")
    return teachers


def content_options(
    opts: SoundNetOptions, segments: SegmentPlan, teachers: tuple[TeacherInfo, ...]
) -> dict:
    """The options that decide the output's content (with the inputs: the plan's config)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "segment_seconds": segments.segment_seconds,
        "frame_interval": segments.frame_interval,
        "min_segment_seconds": segments.min_segment_seconds,
        "shard_audio_minutes": opts.shard_audio_minutes,
        "audio_codec": opts.audio_codec,
        "heads": {t.head: [t.name, t.weights_sha256] for t in teachers},
    }


def labels_file(output: str, head: str) -> str:
    """OUT/labels/HEAD.txt, through the remote-aware join: pathlib made gs:/b of gs://b."""
    return files.join(output, LABELS_DIR, f"{head}.txt")


def check_limits(opts: SoundNetOptions) -> None:
    """The options that are not lengths, in their ranges: refused before the plan, not by every
    worker (a batch of 0) or every video (a timeout of 0) after it."""
    if not (math.isfinite(opts.shard_audio_minutes) and opts.shard_audio_minutes > 0):
        raise ValueError("--shard-audio-minutes must be a positive number")
    if opts.teacher_batch_size < 1:
        raise ValueError("--teacher-batch-size must be at least 1")
    if not (math.isfinite(opts.decode_timeout) and opts.decode_timeout > 0):
        raise ValueError("--decode-timeout must be a positive number of seconds")
    if not 0 <= opts.max_failed_fraction <= 1:
        raise ValueError("--max-failed-fraction must be between 0 and 1")


def main(argv: list[str] | None = None) -> int:
    keep_freed_memory()  # first: before the runner starts threads or worker processes
    setup_logging()
    started = time.time()
    args = list(argv if argv is not None else sys.argv[1:])
    try:
        options = parse_args(args)
        opts = options.view_as(SoundNetOptions)
        if not opts.input or not opts.output:
            raise UsageError("--input and --output are required (see --help)")
        output = opts.output = opts.output.rstrip("/")
        if not files.is_remote(output):  # workers may run elsewhere than this directory
            output = opts.output = os.path.abspath(output)
        if not files.is_remote(output) and os.path.exists(output) and not os.path.isdir(output):
            raise UsageError(f"--output {output}: is a file, not a directory")
    except UsageError as err:
        return print_usage_error(err)
    use_all_cores(options, args)

    # Plan: inputs -> shard tasks, written under the output (or checked against its plan)
    try:
        segments = SegmentPlan(opts.segment_seconds, opts.frame_interval, opts.min_segment_seconds)
        check_limits(opts)
        if runs_here(options):  # its GPUs are this machine's: not found out after the plan
            usable_device(opts.device)
        else:  # a cluster's workers have the GPUs, not necessarily this driver
            torch_device(opts.device)
        teachers = resolve_teachers(opts)
        entries = read_input_entries(opts.input)
        plan = make_plan(
            output, entries, opts.videos_per_shard, content_options(opts, segments, teachers)
        )
    except (InputListError, TeacherError, ValueError) as err:
        return print_usage_error(UsageError(err))
    for t in teachers:
        files.write_atomic(labels_file(output, t.head), format_labels(list(t.labels)).encode())

    # The Beam job: every unfinished task, each written whole by one worker call
    settings = RunSettings(
        output, segments, teachers, opts.device, opts.teacher_batch_size, opts.decode_timeout,
        opts.shard_audio_minutes * 60, opts.audio_codec,
    )  # fmt: skip
    files.remove_temporaries(output)
    remove_pending(output)
    for name in progress.forget_lost_shards(output):
        log.warning("%s was finished but is gone: its task writes it again", name)
    finished = progress.finished_tasks(output)
    log.info("%d inputs in %d shard tasks: %d to do, %d finished before", plan.videos,
             plan.tasks, plan.tasks - len(finished), len(finished))  # fmt: skip
    beam_started = time.time()
    if len(finished) < plan.tasks:
        pending = write_pending(output, plan, finished)
        with beam.Pipeline(runner=runner_for(options), options=options) as p:
            p | "Shards" >> WriteShardTasks(pending, settings)
        remove_pending(output)
        files.remove_temporaries(output)  # a worker killed in the job (its task redone) left them
    beam_seconds = time.time() - beam_started

    # Record: the merged tables, run.json, a summary
    totals = progress.merge(output)
    counts = summarize(plan, totals)
    this_run = {
        "argv": args,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "tasks_written": plan.tasks - len(finished),
        "total_s": round(time.time() - started, 3),
    }
    record = {
        "schema_version": SCHEMA_VERSION,
        "argv": args,
        "options": own_options(options),
        "teachers": {t.head: {**vars(t), "labels": len(t.labels)} for t in teachers},
        "versions": versions(),
        "counts": counts,
        "timings": {
            "total_s": round(time.time() - started, 3),
            "pipeline_s": round(beam_seconds, 3),
        },
        "runs": earlier_runs(output) + [this_run],  # a resumed output's every invocation
    }
    files.write_atomic(
        files.join(output, RUN_FILE),
        json.dumps(record, indent=1, sort_keys=True, default=str).encode(),
    )
    print_summary(counts, output)
    failed_fraction = counts["videos_failed"] / max(1, counts["videos"])
    if failed_fraction > opts.max_failed_fraction:
        print(
            f"error: {failed_fraction:.1%} of inputs failed, more than "
            f"--max-failed-fraction={opts.max_failed_fraction:g}",
            file=sys.stderr,
        )
        return 1
    return 0


def earlier_runs(output: str) -> list[dict]:
    """The invocations recorded in the output's run.json before this one (a rerun rewrites
    the file: without them a resumed run's first command and its timings were lost)."""
    path = files.join(output, RUN_FILE)
    if not files.exists(path):
        return []
    try:
        record = json.loads(files.read_bytes(path))
    except ValueError as err:
        log.warning("%s is not JSON (%s): its earlier runs are not kept", path, err)
        return []
    if "runs" in record:
        return record["runs"]
    # written before run.json kept the list: its one run
    return [{"argv": record.get("argv"), "total_s": record.get("timings", {}).get("total_s")}]


def runs_here(options: PipelineOptions) -> bool:
    """The job runs in this process's machine: Beam's DirectRunner (--runner's default)."""
    return options.view_as(StandardOptions).runner in (None, "DirectRunner", "direct")


def runner_for(options: PipelineOptions) -> PipelineRunner | None:
    """None (Beam makes the runner --runner names), but for Beam's DaskRunner our subclass of
    it, which fixes its translation of this pipeline (pipeline/dask_runner.py), and for the
    DirectRunner the engine it runs this batch pipeline on, without its detour (local_runner)."""
    if runs_here(options):
        return local_runner(options)
    if options.view_as(StandardOptions).runner != DASK_RUNNER:
        return None
    from pipeline.dask_runner import DaskRunner  # imports dask only when it is used

    return DaskRunner()


def local_runner(options: PipelineOptions) -> PipelineRunner:
    """The FnApiRunner, given the options as Beam's DirectRunner gives them (its workers read
    them). Beam 2.77's DirectRunner first tries its Prism runner, a Go binary it downloads from
    GitHub on every run: nothing may be downloaded at run time, offline the attempt fails and
    leaves an empty /tmp/beam-temp* folder, and online the pipeline would run on an engine it
    was never tested or measured on."""
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    info = fn_runner.ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)
    )
    return fn_runner.FnApiRunner(provision_info=info)


def use_all_cores(options: PipelineOptions, argv: list[str]) -> None:
    """The DirectRunner runs one bundle at a time unless told otherwise; videos spend most of
    their time in PyAV/ffmpeg and torch, which release the GIL, so threads overlap them."""
    if not runs_here(options):
        return
    direct = options.view_as(DirectOptions)
    # each default only where its own option is absent: --direct_num_workers=4 alone had
    # left Beam's in_memory mode, which runs one bundle at a time
    if not _given(argv, "--direct_running_mode"):
        direct.direct_running_mode = "multi_threading"
    if not _given(argv, "--direct_num_workers"):
        direct.direct_num_workers = os.cpu_count() or 1


def _given(argv: list[str], option: str) -> bool:
    return any(a == option or a.startswith(f"{option}=") for a in argv)


def setup_logging() -> None:
    """Our progress lines at INFO on stderr; Beam's own chatter stays at its WARNING default."""
    logger = logging.getLogger("pipeline")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def own_options(options: PipelineOptions) -> dict:
    """The project's options plus the runner (Beam's full option set is mostly defaults)."""
    own = project_option_names() | {"runner", "direct_running_mode", "direct_num_workers"}
    return {k: v for k, v in options.get_all_options().items() if k in own}


def summarize(plan: Plan, totals: progress.Totals) -> dict:
    return {
        "videos": plan.videos,
        "videos_written": totals.videos_written,
        "videos_failed": totals.videos_failed,
        "samples": totals.samples,
        "shards": totals.shards,
        "audio_hours": round(totals.audio_s / 3600, 4),
        "failures_by_stage": dict(totals.failures_by_stage),
    }


def versions() -> dict:
    """What decoded and labelled the data: decoders of other versions give slightly different
    samples."""
    import av
    import torch

    libavcodec = ".".join(map(str, av.library_versions["libavcodec"]))
    return {
        "python": platform.python_version(),
        "apache_beam": beam.__version__,
        "torch": torch.__version__,
        "pyav": av.__version__,
        "libavcodec (PyAV)": libavcodec,
        "ffmpeg (fallback)": decode.ffmpeg_version(),
    }


def print_summary(counts: dict, output: str) -> None:
    print(
        f"{counts['videos']} videos: {counts['videos_written']} written as "
        f"{counts['samples']} samples in {counts['shards']} shards "
        f"({counts['audio_hours'] * 60:.1f} min of audio), {counts['videos_failed']} failed"
    )
    if counts["videos_failed"]:
        with files.open_file(files.join(output, FAILURES_FILE)) as f:
            first = next(pq.ParquetFile(f).iter_batches(batch_size=20), None)
            for row in first.to_pylist() if first is not None else []:
                print(f"  failed [{row['stage']}] {row['message']}")
        if counts["videos_failed"] > 20:
            print(f"  ... and {counts['videos_failed'] - 20} more in {output}/{FAILURES_FILE}")
    print(f"output: {output}")


if __name__ == "__main__":
    sys.exit(main())
