"""The pipeline's own options, parsed alongside Beam's (--runner, --direct_num_workers, ...).

`parse_args` is the command line's one entry: it answers --help (the project's options with their
defaults) and --help-beam (every option of every Beam options class installed), and refuses,
before any work, an argument that neither the project nor any installed Beam options class
knows, naming it and the closest known option (Beam itself would only log "Discarding
unparseable args" and run with the defaults).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import sys

from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

from schemas import AUDIO_CODECS, DEFAULT_AUDIO_CODEC

PROG = "python -m pipeline.run"
USAGE = f"{PROG} --runner=DirectRunner --input=VIDEOS --output=OUT [options] [Beam options]"


class SoundNetOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        add = parser.add_argument
        # Not argparse-required: Beam parses every registered options class for every pipeline
        # in the process, so a required flag here would break pipelines that are not ours.
        add(
            "--input",
            help="directory (searched recursively), glob, .txt list of URIs, or CSV/Parquet "
            "manifest with a 'uri' column (optional 'id')",
        )
        add("--output", help="output directory (local path or gs://, s3://)")
        add(
            "--segment-seconds",
            dest="segment_seconds",
            type=float,
            default=20.0,
            help="length of one training sample",
        )
        add(
            "--frame-interval",
            dest="frame_interval",
            type=float,
            default=5.0,
            help="teachers see the frame at the centre of every step of this many seconds",
        )
        add(
            "--min-segment-seconds",
            dest="min_segment_seconds",
            type=float,
            default=1.0,
            help="a trailing piece shorter than this is dropped",
        )
        add(
            "--objects-teacher",
            dest="objects_teacher",
            default="efficientnet_lite0",
            help="ImageNet teacher for the 'objects' head ('none' to leave the head out)",
        )
        add(
            "--objects-weights",
            dest="objects_weights",
            default=None,
            help="weights file for --objects-teacher (efficientnet_lite0 ships its own)",
        )
        add(
            "--scenes-teacher",
            dest="scenes_teacher",
            default="none",
            help="Places365 teacher for the 'scenes' head, e.g. places365_resnet18",
        )
        add(
            "--scenes-weights",
            dest="scenes_weights",
            default=None,
            help="CSAIL Places365 checkpoint, e.g. resnet18_places365.pth.tar",
        )
        add(
            "--scenes-labels",
            dest="scenes_labels",
            default=None,
            help="categories_places365.txt (default: beside --scenes-weights)",
        )
        add(
            "--teacher-batch-size",
            dest="teacher_batch_size",
            type=int,
            default=32,
            help="most frames per teacher forward pass (batches span videos)",
        )
        add("--device", default="cpu", help="torch device for the teachers (cpu, cuda)")
        add(
            "--videos-per-shard",
            dest="videos_per_shard",
            type=int,
            default=0,
            help="most videos in one shard task (one worker call writes a task's shards); "
            "0: ceil(videos / 64), from 4 to 1000, so that small corpora spread over 64 "
            "workers and shards of short clips fill up",
        )
        add(
            "--shard-audio-minutes",
            dest="shard_audio_minutes",
            type=float,
            default=120.0,
            help="a shard is closed once it holds this much audio (about 200 MB of FLAC); "
            "a task of long videos rolls over to a new shard",
        )
        add(
            "--audio-codec",
            dest="audio_codec",
            choices=AUDIO_CODECS,
            default=DEFAULT_AUDIO_CODEC,
            help="the shards' audio: flac (about 0.6 of pcm16's bytes on real sound; the "
            "loader decodes it, about 500 20 s samples/s a core) or pcm16 (raw int16, 44.1 kB "
            "an audio-second: costs no decoding, for GPU training with few cores a GPU)",
        )
        add(
            "--decode-timeout",
            dest="decode_timeout",
            type=float,
            default=600.0,
            help=(
                "seconds one decoding step (audio, frames; in-process or an ffprobe/ffmpeg "
                "call) may take before the input counts as failed"
            ),
        )
        add(
            "--max-failed-fraction",
            dest="max_failed_fraction",
            type=float,
            default=1.0,
            help="exit non-zero when more than this fraction of inputs fail",
        )


class UsageError(ValueError):
    """The command line is wrong; the message says how (exit status 2)."""


def _beam_parser() -> _BeamArgumentParser:
    """The parser Beam builds from every registered options class (runners' included)."""
    with contextlib.suppress(ImportError):  # DaskOptions registers when its runner is imported
        import apache_beam.runners.dask.dask_runner  # noqa: F401
    parser = _BeamArgumentParser(prog=PROG, allow_abbrev=False)
    classes = {str(cls): cls for cls in PipelineOptions.__subclasses__()}
    for cls in classes.values():
        cls._add_argparse_args(parser)
    return parser


def _project_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage=USAGE,
        description="Videos -> WebDataset shards of their audio and the visual teachers' "
        "class distributions (README, 'Stage 1').",
        epilog="Every Beam option passes through as well (--runner, --direct_running_mode, "
        "--direct_num_workers, Dataflow's, Flink's, Spark's, Dask's, ...): "
        f"`{PROG} --help-beam` lists them.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    SoundNetOptions._add_argparse_args(parser)
    parser.add_argument("--help-beam", action="store_true", help="list Beam's options")
    return parser


def project_option_names() -> set[str]:
    """The dests of the project's own options (--segment-seconds -> segment_seconds, ...)."""
    return {a.dest for a in _project_parser()._actions} - {"help", "help_beam"}


def parse_args(argv: list[str]) -> PipelineOptions:
    """Beam's PipelineOptions for `argv`; SystemExit(0) after --help / --help-beam; UsageError
    for an argument nobody knows."""
    if any(a in ("-h", "--help") for a in argv):
        _project_parser().print_help()
        raise SystemExit(0)
    beam = _beam_parser()
    if "--help-beam" in argv:
        beam.print_help()
        raise SystemExit(0)
    _, unknown = beam.parse_known_args(argv)  # wrong values are argparse's errors (exit 2)
    if unknown:
        known = [s for s in beam._option_string_actions if s.startswith("--")]
        name = unknown[0].split("=", 1)[0]
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else f" (see {PROG} --help)"
        what = "option" if name.startswith("-") else "argument"
        raise UsageError(f"unknown {what} {unknown[0]!r}{hint}")
    return PipelineOptions(argv)


def print_usage_error(err: UsageError) -> int:
    print(f"{PROG}: error: {err}", file=sys.stderr)
    return 2
