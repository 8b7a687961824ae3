"""The shard format and table schemas: round trips, validation, refusal of unsafe content."""

import dataclasses
import io
import json
import pickle

import numpy as np
import pyarrow as pa
import pytest

from schemas import (
    FAILURES_SCHEMA,
    INDEX_SCHEMA,
    MANIFEST_SCHEMA,
    HeadInfo,
    Sample,
    SampleError,
    SampleMetadata,
    SchemaError,
    decode_sample,
    encode_sample,
    make_video_id,
    parse_key,
    read_table,
    sample_key,
    table_from_rows,
    validate_table,
    write_table,
)
from schemas.sample import decode_targets


def make_sample(frames=2, classes=5, seconds=1.0) -> Sample:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(classes), size=frames)
    n = int(seconds * 22050)
    meta = SampleMetadata(
        video_id="clip_1234abcd",
        source="/videos/clip.mp4",
        segment=3,
        start_s=60.0,
        duration_s=n / 22050,
        num_samples=n,
        frame_times_s=[62.5, 67.5][:frames],
        heads={"objects": HeadInfo("efficientnet_lite0", "ab" * 32, "imagenet1k", classes)},
        frame_interval_s=5.0,
    )
    audio = (np.sin(np.arange(n) / 10) * 8000).astype(np.int16)
    return Sample(key="clip_1234abcd-0003", audio=audio, probs={"objects": probs}, metadata=meta)


def test_sample_round_trip_is_lossless_for_audio_and_float16_for_probs():
    sample = make_sample()
    members = encode_sample(sample)
    assert set(members) == {"__key__", "flac", "objects.npy", "json"}
    back = decode_sample(members)
    assert back.metadata == sample.metadata
    np.testing.assert_array_equal(back.audio, sample.audio)
    assert back.probs["objects"].dtype == np.float16
    np.testing.assert_allclose(back.probs["objects"], sample.probs["objects"], atol=1e-3)


def test_invalid_samples_are_refused_with_the_key_in_the_message():
    sample = make_sample()
    sample.probs["objects"] = sample.probs["objects"] * 2
    with pytest.raises(SampleError, match="clip_1234abcd-0003.*sum to 1"):
        encode_sample(sample)
    short = make_sample()
    short.audio = short.audio[:100]
    with pytest.raises(SampleError, match="audio has shape"):
        encode_sample(short)
    wrong_frames = make_sample()
    wrong_frames.probs["objects"] = wrong_frames.probs["objects"][:1]
    with pytest.raises(SampleError, match="shape"):
        encode_sample(wrong_frames)
    empty = make_sample(seconds=0.0)  # FLAC writes it; every reader refuses it
    with pytest.raises(SampleError, match="clip_1234abcd-0003: 0 samples .*needs audio"):
        encode_sample(empty)


@pytest.mark.parametrize(
    "value, problem",
    [(np.nan, "non-finite"), (np.inf, "non-finite"), (-np.inf, "non-finite"),
     (-0.25, "negative"), (0.75, "sum to 1")],
)  # fmt: skip
def test_a_bad_teacher_row_is_refused_on_decoding_and_named(value, problem):
    """Every row is checked in the stored float16 on the way back too, by the trainer's reader
    (decode_targets) as by decode_sample."""
    members = encode_sample(make_sample(frames=2))
    rows = np.load(io.BytesIO(members["objects.npy"]))
    rows[1, 2] = value  # one entry of the second row
    buf = io.BytesIO()
    np.save(buf, rows, allow_pickle=False)
    members["objects.npy"] = buf.getvalue()
    for decode in (decode_sample, decode_targets):
        with pytest.raises(SampleError, match=f"clip_1234abcd-0003: objects .*{problem}"):
            decode(members)


def test_a_pickled_npy_member_is_refused_never_unpickled():
    members = encode_sample(make_sample())
    buf = io.BytesIO()
    np.save(buf, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    members["objects.npy"] = buf.getvalue()
    with pytest.raises(SampleError, match="refused or unreadable"):
        decode_sample(members)
    members["json"] = pickle.dumps({"schema_version": 1})
    with pytest.raises(SampleError):
        decode_sample(members)


@pytest.mark.parametrize(
    "field, value",
    [("num_samples", "22050"), ("num_samples", 22050.0), ("segment", True), ("start_s", "60"),
     ("duration_s", None), ("frame_interval_s", 0), ("frame_times_s", ["62.5"]),
     ("frame_times_s", 62.5), ("video_id", 7), ("heads", {"objects": {"teacher": "t",
     "weights_sha256": "0", "label_set": "l", "num_classes": "5"}})],
)  # fmt: skip
def test_metadata_of_the_wrong_type_is_a_sample_error(field, value):
    """A count written as '22050' or 22050.0 failed far away (slicing, comparing) and killed the
    loader; it is the sample's problem, named, like any other."""
    members = encode_sample(make_sample())
    raw = json.loads(members["json"])
    raw[field] = value
    members["json"] = json.dumps(raw).encode()
    for decode in (decode_sample, decode_targets):
        with pytest.raises(SampleError, match=f"clip_1234abcd-0003: metadata .*{field}"):
            decode(members)


@pytest.mark.parametrize(
    "change, problem",
    [({"frame_interval_s": None}, "schema_version 2 without frame_interval_s"),
     ({"heads": {}}, "no teacher heads")],
)  # fmt: skip
def test_version_2_metadata_without_its_interval_or_heads_is_refused(change, problem):
    """Only version 1 lacks the interval, and no sample lacks teachers: on writing, the pipeline's
    bug; on reading, a sample the trainer cannot align or train on."""
    members = encode_sample(make_sample())
    raw = json.loads(members["json"])
    raw.update(change)
    members["json"] = json.dumps(raw).encode()
    if not raw["heads"]:
        del members["objects.npy"]
    for decode in (decode_sample, decode_targets):
        with pytest.raises(SampleError, match=f"clip_1234abcd-0003: {problem}"):
            decode(members)
    bad = make_sample()
    bad.metadata = dataclasses.replace(bad.metadata, **change)
    if not change.get("heads", True):
        bad.probs = {}
    with pytest.raises(SampleError, match=problem):
        encode_sample(bad)


@pytest.mark.parametrize("cut", [0, 20, 140])  # empty, in the header, in the data
def test_an_empty_or_cut_short_npy_member_is_a_sample_error(cut):
    members = encode_sample(make_sample())
    members["objects.npy"] = members["objects.npy"][:cut]
    with pytest.raises(SampleError, match="objects.npy"):
        decode_targets(members)


def test_keys_are_safe_and_parse_back():
    vid = make_video_id("/data/My Video.final (1).mp4")
    assert "." not in vid and "/" not in vid and " " not in vid
    assert vid.startswith("My_Video_final_1_")
    assert make_video_id("/a/x.mp4") != make_video_id("/b/x.mp4")
    assert make_video_id("/a/x.mp4", explicit_id="../../etc/passwd") == "etc_passwd"
    assert parse_key(sample_key(vid, 12)) == (vid, 12)
    with pytest.raises(SampleError):
        sample_key("a.b", 0)
    with pytest.raises(SampleError):
        parse_key("nosegment")


def test_tables_validate_and_round_trip(tmp_path):
    rows = [
        {
            "key": "v-0000",
            "shard": "shard-000000.tar",
            "video_id": "v",
            "source": "/v.mp4",
            "segment": 0,
            "start_s": 0.0,
            "duration_s": 20.0,
            "num_frames": 4,
        }
    ]
    path = tmp_path / "index.parquet"
    write_table(table_from_rows(rows, INDEX_SCHEMA), path, INDEX_SCHEMA)
    assert read_table(path, INDEX_SCHEMA).to_pylist() == rows
    assert not list(tmp_path.glob("*.tmp-*"))
    with pytest.raises(SchemaError, match="missing column"):
        validate_table(pa.table({"key": ["x"]}), INDEX_SCHEMA)
    with pytest.raises(SchemaError, match="unknown stage"):
        validate_table(
            table_from_rows(
                [{"source": "a", "stage": "nowhere", "error_type": "E", "message": "m"}],
                FAILURES_SCHEMA,
            ),
            FAILURES_SCHEMA,
        )
    manifest = validate_table(pa.table({"uri": ["a.mp4"]}), MANIFEST_SCHEMA)
    assert manifest.column("id").to_pylist() == [None]
    with pytest.raises(SchemaError, match="empty values"):
        validate_table(
            pa.table({"uri": [None]}, schema=pa.schema([("uri", pa.string())])), MANIFEST_SCHEMA
        )


def test_version_2_records_the_frame_interval_and_version_1_still_reads():
    import json

    sample = make_sample(frames=2)
    members = encode_sample(sample)
    meta = json.loads(members["json"])
    assert meta["schema_version"] == 2 and meta["frame_interval_s"] == 5.0
    assert meta["audio_codec"] == "flac"
    assert decode_sample(members).metadata.frame_interval() == 5.0
    # a version-1 sample: no interval, no codec; the interval is read off its frame times
    for key in ("frame_interval_s", "audio_codec"):
        del meta[key]
    meta["schema_version"] = 1
    old = decode_sample({**members, "json": json.dumps(meta).encode()})
    assert old.metadata.frame_interval_s is None and old.metadata.audio_codec == "flac"
    assert old.metadata.frame_interval() == 5.0  # 62.5 and 67.5 s
    one = dict(meta, frame_times_s=[61.25], duration_s=1.0)  # a 2.5 s step's centre
    assert SampleMetadata.from_json(json.dumps(one)).frame_interval() == 2.5
    middle = dict(meta, frame_times_s=[60.5], duration_s=1.0)  # shorter than a step
    assert SampleMetadata.from_json(json.dumps(middle)).frame_interval() is None
    with pytest.raises(SampleError, match="schema_version 3"):
        SampleMetadata.from_json(json.dumps(dict(meta, schema_version=3)))


def test_the_imagenet_names_are_torchvisions():
    from torchvision.models import ResNet18_Weights

    from schemas.labels import imagenet_labels

    names = imagenet_labels()
    assert names == list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
    assert len(names) == len(set(names)) == 1000


def test_pcm16_samples_hold_raw_int16_and_decode_to_the_same_sample_as_flac():
    import dataclasses

    flac = make_sample(seconds=2.0)
    pcm = dataclasses.replace(
        flac, metadata=dataclasses.replace(flac.metadata, audio_codec="pcm16")
    )
    members = encode_sample(pcm)
    assert set(members) == {"__key__", "pcm16", "objects.npy", "json"}
    assert members["pcm16"] == flac.audio.astype("<i2").tobytes()  # little-endian int16
    back, from_flac = decode_sample(members), decode_sample(encode_sample(flac))
    assert back.metadata.audio_codec == "pcm16" and from_flac.metadata.audio_codec == "flac"
    np.testing.assert_array_equal(back.audio, from_flac.audio)
    assert back.audio.dtype == np.int16
    np.testing.assert_array_equal(back.probs["objects"], from_flac.probs["objects"])
    assert decode_sample(members, audio=False).audio.shape == back.audio.shape


def test_an_audio_member_that_does_not_match_the_recorded_codec_is_refused():
    import json

    members = encode_sample(make_sample())  # audio_codec "flac", a flac member
    meta = json.loads(members["json"])
    says_pcm16 = {**members, "json": json.dumps(dict(meta, audio_codec="pcm16")).encode()}
    with pytest.raises(SampleError, match="clip_1234abcd-0003: .*'pcm16' .*'flac' member instead"):
        decode_sample(says_pcm16)
    with pytest.raises(SampleError, match="clip_1234abcd-0003: .*'pcm16' .*'flac' member instead"):
        decode_sample(says_pcm16, audio=False)  # checked without decoding the audio too
    renamed = {k: v for k, v in members.items() if k != "flac"} | {"pcm16": members["flac"]}
    with pytest.raises(SampleError, match="clip_1234abcd-0003: .*'flac' .*'pcm16' member instead"):
        decode_sample(renamed)
    with pytest.raises(SampleError, match="clip_1234abcd-0003: a 'flac' and a 'pcm16' member"):
        decode_sample({**members, "pcm16": b"\0\0"})
    unknown = {**members, "json": json.dumps(dict(meta, audio_codec="mp3")).encode()}
    with pytest.raises(SampleError, match="clip_1234abcd-0003: audio_codec 'mp3'"):
        decode_sample(unknown)
    torn = encode_sample(make_sample())
    pcm_meta = json.dumps(dict(meta, audio_codec="pcm16")).encode()
    odd = {k: v for k, v in torn.items() if k != "flac"} | {"pcm16": b"\0" * 3, "json": pcm_meta}
    with pytest.raises(SampleError, match="clip_1234abcd-0003: pcm16 member of 3 bytes"):
        decode_sample(odd)


def test_npy_members_read_in_place_equal_np_load_and_others_still_go_through_it():
    from schemas.sample import decode_npy

    rows = np.random.default_rng(1).dirichlet(np.ones(7), size=3).astype(np.float16)
    for array in (rows, np.asfortranarray(rows.astype(np.float32)), rows[:0]):
        buf = io.BytesIO()
        np.save(buf, array, allow_pickle=False)
        got = decode_npy(buf.getvalue())
        np.testing.assert_array_equal(got, np.load(io.BytesIO(buf.getvalue())))
        assert got.dtype == array.dtype and got.shape == array.shape
    buf = io.BytesIO()
    np.save(buf, rows)
    with pytest.raises(SampleError, match="refused or unreadable"):
        decode_npy(buf.getvalue()[:-2])  # a torn member: numpy's own error
