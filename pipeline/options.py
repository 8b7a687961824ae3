"""The pipeline's own options, parsed alongside Beam's (--runner, --direct_num_workers, ...)."""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions

from schemas import AUDIO_CODECS, DEFAULT_AUDIO_CODEC


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
            default=100,
            help="most videos in one shard task: one worker call writes a task's shards",
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
            help="the shards' audio: flac (half the bytes; the loader decodes it, about 100 "
            "20 s samples/s a core) or pcm16 (raw int16: costs no decoding, for GPU training)",
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
