"""Videos -> WebDataset shards of audio + teacher distributions.

    python -m pipeline.run --runner=DirectRunner --input=VIDEOS --output=OUT [beam options]

The driver lists the inputs and plans shards, the Beam pipeline does the per-video work, and
the driver merges the finished shards' rows into index.parquet / failures.parquet and writes
labels/ and run.json. Rerunning over the same output finishes what a killed run left.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import sys
import time
from collections import Counter

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from pipeline import media, writer
from pipeline.inputs import InputListError, VideoTask, plan_tasks, read_input_entries
from pipeline.options import SoundNetOptions
from pipeline.segments import SegmentPlan
from pipeline.teachers import TeacherError, teacher_info
from pipeline.transforms import (
    FAILED,
    FRAMES,
    DecodeVideos,
    LabelFrames,
    TeacherSpec,
    WriteShards,
    WriteVideoParts,
)
from schemas import RUN_FILE, SCHEMA_VERSION, format_labels, labels_path

log = logging.getLogger("pipeline")

DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"


def teacher_specs(opts: SoundNetOptions) -> list[TeacherSpec]:
    """The heads this run labels, with their label names and weight digests (checked up front,
    so that a missing weights file stops the run before any video is touched)."""
    wanted = [
        ("objects", opts.objects_teacher, opts.objects_weights, None),
        ("scenes", opts.scenes_teacher, opts.scenes_weights, opts.scenes_labels),
    ]
    specs = []
    for head, name, weights, labels in wanted:
        if not name or name.lower() == "none":
            continue
        desc = teacher_info(head, name, weights, labels)
        specs.append(TeacherSpec(head, name, weights, labels, desc.head_info(), tuple(desc.labels)))
    if not specs:
        raise TeacherError("no teacher: give --objects-teacher and/or --scenes-teacher")
    return specs


def run_config(
    opts: SoundNetOptions, plan: SegmentPlan, specs: list[TeacherSpec], tasks: list[VideoTask]
) -> dict:
    """What decides the output's content; a rerun over the same output must match it."""
    listing = "\n".join(f"{t.uri}\t{t.video_id}" for t in tasks).encode()
    return {
        "schema_version": SCHEMA_VERSION,
        "segment_seconds": plan.segment_seconds,
        "frame_interval": plan.frame_interval,
        "min_segment_seconds": plan.min_segment_seconds,
        "videos_per_shard": opts.videos_per_shard,
        "heads": {s.head: [s.info.teacher, s.info.weights_sha256] for s in specs},
        "inputs_sha256": hashlib.sha256(listing).hexdigest(),
    }


def check_or_record_config(output: str, config: dict) -> None:
    path = writer.join(output, writer.PROGRESS_DIR, "config.json")
    if writer.exists(path):
        previous = json.loads(writer.read_bytes(path))
        if previous != config:
            changed = sorted(k for k in config if previous.get(k) != config[k])
            raise InputListError(
                f"{output} holds a run with different {', '.join(changed)}; "
                "rerun with the same inputs and options, or use a new --output"
            )
        return
    writer.write_atomic(path, json.dumps(config, indent=1, sort_keys=True).encode())


def build_pipeline(
    p: beam.Pipeline,
    pending: list[VideoTask],
    ready: list[tuple[int, tuple]],
    opts: SoundNetOptions,
    plan: SegmentPlan,
    specs: list[TeacherSpec],
) -> None:
    decoded = (
        p
        | "Videos" >> beam.Create(pending)
        | "Spread" >> beam.Reshuffle()
        | "Decode" >> DecodeVideos(plan, opts.decode_timeout)
    )
    labelled, errors = {}, []
    for spec in specs:
        probs, errs = decoded[FRAMES] | f"Label[{spec.head}]" >> LabelFrames(
            spec, opts.device, opts.teacher_batch_size
        )
        labelled[spec.head] = probs
        errors.append(errs)
    teacher_errors = errors | "TeacherErrors" >> beam.Flatten()
    parts = (decoded.videos, labelled, teacher_errors) | "WriteParts" >> WriteVideoParts(
        opts.output, {s.head: s.info for s in specs}, plan.frame_interval
    )
    reused = p | "ReusedParts" >> beam.Create(ready)
    (
        (parts, decoded[FAILED], reused)
        | "PerShard" >> beam.Flatten()
        | "WriteShards" >> WriteShards(opts.output)
    )


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    started = time.time()
    options = PipelineOptions(argv)
    use_all_cores(options, argv if argv is not None else sys.argv[1:])
    opts = options.view_as(SoundNetOptions)
    if not opts.input or not opts.output:
        print("error: --input and --output are required (see --help)", file=sys.stderr)
        return 2
    output = opts.output.rstrip("/")
    opts.output = output
    plan = SegmentPlan(opts.segment_seconds, opts.frame_interval, opts.min_segment_seconds)
    try:
        specs = teacher_specs(opts)
        tasks = plan_tasks(read_input_entries(opts.input), opts.videos_per_shard)
        check_or_record_config(output, run_config(opts, plan, specs, tasks))
    except (InputListError, TeacherError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for spec in specs:
        writer.write_atomic(
            str(labels_path(output, spec.head)), format_labels(list(spec.label_names)).encode()
        )

    # Resume: finished shards are skipped, finished videos of unfinished shards reused.
    done = finished_shards(output, tasks)
    writer.remove_stale_files(output, done)
    todo = [t for t in tasks if t.shard_id not in done]
    ready, pending = [], []
    for t in todo:
        part = writer.part_path(output, t.shard_id, t.video_id)
        if writer.exists(part):
            ready.append((t.shard_id, ("part", t.order, part)))
        else:
            pending.append(t)
    log.info(
        "%d inputs in %d shards: %d to decode, %d already decoded, %d in finished shards",
        len(tasks),
        len({t.shard_id for t in tasks}),
        len(pending),
        len(ready),
        len(tasks) - len(todo),
    )
    beam_started = time.time()
    if todo:
        with beam.Pipeline(runner=runner_for(options), options=options) as p:
            build_pipeline(p, pending, ready, opts, plan, specs)
    beam_seconds = time.time() - beam_started

    index, failures = writer.merge_progress(output)
    writer.remove_stale_files(output, finished_shards(output, tasks))
    counts = summarize(tasks, index, failures)
    record = {
        "schema_version": SCHEMA_VERSION,
        "argv": list(argv if argv is not None else sys.argv[1:]),
        "options": own_options(options),
        "teachers": {s.head: s.info.__dict__ for s in specs},
        "versions": versions(),
        "counts": counts,
        "timings": {
            "total_s": round(time.time() - started, 3),
            "pipeline_s": round(beam_seconds, 3),
        },
    }
    writer.write_atomic(
        writer.join(output, RUN_FILE),
        json.dumps(record, indent=1, sort_keys=True, default=str).encode(),
    )
    print_summary(counts, failures, output)
    failed_fraction = counts["videos_failed"] / max(1, counts["videos"])
    if failed_fraction > opts.max_failed_fraction:
        print(
            f"error: {failed_fraction:.1%} of inputs failed, more than "
            f"--max-failed-fraction={opts.max_failed_fraction:g}",
            file=sys.stderr,
        )
        return 1
    return 0


def runner_for(options: PipelineOptions):
    """None (Beam makes the runner --runner names), but for Beam's DaskRunner our subclass of
    it, which fixes its translation of this pipeline (pipeline/dask_runner.py)."""
    if options.view_as(StandardOptions).runner != DASK_RUNNER:
        return None
    from pipeline.dask_runner import DaskRunner  # imports dask only when it is used

    return DaskRunner()


def use_all_cores(options: PipelineOptions, argv: list[str]) -> None:
    """The DirectRunner runs one bundle at a time unless told otherwise; videos spend most of
    their time in PyAV/ffmpeg and torch, which release the GIL, so threads overlap them."""
    runner = options.view_as(StandardOptions).runner
    if runner not in (None, "DirectRunner", "direct"):
        return
    if any(a.startswith(("--direct_running_mode", "--direct_num_workers")) for a in argv):
        return
    direct = options.view_as(DirectOptions)
    direct.direct_running_mode = "multi_threading"
    direct.direct_num_workers = os.cpu_count() or 1


def finished_shards(output: str, tasks: list[VideoTask]) -> set[int]:
    return {s for s in {t.shard_id for t in tasks} if writer.shard_done(output, s)}


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
    parser = argparse.ArgumentParser()
    SoundNetOptions._add_argparse_args(parser)
    own = {a.dest for a in parser._actions} | {
        "runner",
        "direct_running_mode",
        "direct_num_workers",
    }
    return {k: v for k, v in options.get_all_options().items() if k in own}


def summarize(tasks: list[VideoTask], index, failures) -> dict:
    durations = index.column("duration_s").to_pylist()
    return {
        "videos": len(tasks),
        "videos_written": len(set(index.column("video_id").to_pylist())),
        "videos_failed": failures.num_rows,
        "samples": index.num_rows,
        "shards": len(set(index.column("shard").to_pylist())),
        "audio_hours": round(sum(durations) / 3600, 4),
        "failures_by_stage": dict(Counter(failures.column("stage").to_pylist())),
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
        "ffmpeg (fallback)": media.ffmpeg_version(),
    }


def print_summary(counts: dict, failures, output: str) -> None:
    print(
        f"{counts['videos']} videos: {counts['videos_written']} written as "
        f"{counts['samples']} samples in {counts['shards']} shards "
        f"({counts['audio_hours'] * 60:.1f} min of audio), {counts['videos_failed']} failed"
    )
    for row in failures.to_pylist()[:20]:
        print(f"  failed [{row['stage']}] {row['message']}")
    if failures.num_rows > 20:
        print(f"  ... and {failures.num_rows - 20} more in {output}/failures.parquet")
    print(f"output: {output}")


if __name__ == "__main__":
    sys.exit(main())
