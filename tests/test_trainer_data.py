"""The trainer's data: aligned crops, shard specs, label names, loaders, bad shards, rank splits."""

from __future__ import annotations

import functools
import http.server
import json
import logging
import math
import random
import shutil
import tarfile
import threading
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds
from shardfactory import clips, factory_output, make_samples  # noqa: F401  (a fixture)

from models.registry import build_model
from models.soundnet import soundnet8
from schemas import SampleError, SampleMetadata, encode_sample
from trainer import data
from trainer.data import DEFAULT_STEP_SAMPLES as STEP_SAMPLES
from trainer.data import crop_steps, make_loader, resolve_shards
from trainer.stats import Prior
from trainer.validate import validate

# ---------------------------------------------------------------------------------------------
# Crops: audio step i must always come with teacher row i


def stepped(seconds: float, frames: int | None = None):
    """Audio whose every sample holds its 5 s step's index, and one-hot rows of that index."""
    n = round(seconds * 22050)
    audio = (np.arange(n) // STEP_SAMPLES).astype(np.int16)
    frames = frames if frames is not None else max(1, n // STEP_SAMPLES)
    return audio, {"h": np.eye(16, dtype=np.float16)[:frames]}


def steps_of(wave: np.ndarray) -> list[int]:
    chunks = wave.reshape(-1, STEP_SAMPLES)
    assert (chunks == chunks[:, :1]).all(), "a crop boundary is not on a step boundary"
    return chunks[:, 0].astype(int).tolist()


def test_long_segment_gets_a_random_step_aligned_crop():
    audio, probs = stepped(40.0)  # 8 whole steps
    firsts = set()
    rng = random.Random(0)
    for _ in range(40):
        wave, rows = crop_steps(audio, probs, 4, rng)
        steps = steps_of(wave)
        assert steps == list(range(steps[0], steps[0] + 4))
        assert rows["h"].argmax(1).tolist() == steps
        firsts.add(steps[0])
    assert firsts == set(range(5))  # every aligned window is reachable
    wave, _ = crop_steps(audio, probs, 4, None)  # validation: the central window
    assert steps_of(wave) == [2, 3, 4, 5]


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(20.0, [0, 1, 2, 3]), (17.5, [0, 1, 2, 0]), (12.0, [0, 1, 0, 1]), (7.0, [0, 0, 0, 0])],
)
def test_short_segments_are_tiled_with_their_labels(seconds, expected):
    audio, probs = stepped(seconds)
    wave, rows = crop_steps(audio, probs, 4, random.Random(0))
    assert len(wave) == 4 * STEP_SAMPLES
    assert steps_of(wave) == expected
    assert rows["h"].argmax(1).tolist() == expected  # the partial trailing step is dropped


def test_segment_shorter_than_a_step_repeats_under_its_one_frame():
    audio = (np.arange(3 * 22050) % 1000).astype(np.int16)
    probs = {"h": np.eye(4, dtype=np.float16)[2:3]}
    wave, rows = crop_steps(audio, probs, 4, None)
    assert len(wave) == 4 * STEP_SAMPLES
    assert np.array_equal(wave[: len(audio)], audio)
    assert np.array_equal(wave[len(audio) : 2 * len(audio)], audio)  # cyclic repetition
    assert rows["h"].argmax(1).tolist() == [2, 2, 2, 2]


def test_fewer_frames_than_whole_steps_is_a_sample_error():
    audio, probs = stepped(20.0, frames=3)
    with pytest.raises(SampleError, match="4 whole 5 s steps but 3 h frames"):
        crop_steps(audio, probs, 4, None, where="v-0001")


# ---------------------------------------------------------------------------------------------
# Shard specs and label names


def test_shard_specs_all_find_the_same_shards(factory_output, tmp_path, caplog):  # noqa: F811
    shards = factory_output / "shards"
    expected = sorted(str(p) for p in shards.glob("*.tar"))
    assert len(expected) == 4
    for spec in (
        str(factory_output),
        str(shards),
        f"{shards}/shard-{{000000..000003}}-0000.tar",
        f"{shards}/shard-*.tar",
        f"{shards}/shard-{{000000..000001}}-0000.tar::{shards}/shard-{{000002..000003}}-0000.tar",
    ):
        source = resolve_shards(spec)
        assert source.urls == expected, spec
        assert source.root == str(factory_output), spec
    # a directory of .tar files outside a pipeline output: no label names there
    plain = tmp_path / "plain"
    shutil.copytree(shards, plain)
    source = resolve_shards(str(plain))
    assert len(source.urls) == 4 and source.root is None
    with caplog.at_level(logging.WARNING):
        names = data.read_label_names(source, {"objects": 16})
    assert names["objects"][:2] == ["objects_0000", "objects_0001"]
    assert "no label names" in caplog.text
    # a brace pattern naming more shards than exist: the rest, with a warning
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        source = resolve_shards(f"{shards}/shard-{{000000..000005}}-0000.tar")
    assert len(source.urls) == 4 and "2 of 6 shards do not exist" in caplog.text


def test_a_folder_and_a_glob_list_shards_by_task_and_part_past_9999(tmp_path):
    """'shard-000000-10000.tar' sorts before 'shard-000000-9999.tar' by name; other tars last."""
    names = ["shard-000000-10000.tar", "shard-000000-0002.tar", "extra.tar",
             "shard-1000000-0000.tar", "shard-000000-9999.tar", "shard-999999-0000.tar"]  # fmt: skip
    for name in names:
        (tmp_path / name).touch()
    expected = ["shard-000000-0002.tar", "shard-000000-9999.tar", "shard-000000-10000.tar",
                "shard-999999-0000.tar", "shard-1000000-0000.tar", "extra.tar"]  # fmt: skip
    for spec in (str(tmp_path), f"{tmp_path}/*.tar"):
        assert [Path(u).name for u in resolve_shards(spec).urls] == expected, spec


def test_urls_pass_through_to_webdataset():
    source = resolve_shards("https://host/data/OUT/shards/shard-{000000..000002}.tar")
    assert source.urls == [f"https://host/data/OUT/shards/shard-00000{i}.tar" for i in range(3)]
    assert source.root == "https://host/data/OUT"
    pipe = resolve_shards("pipe:curl -s https://host/x/shard-{0..1}.tar")
    assert pipe.urls == [f"pipe:curl -s https://host/x/shard-{i}.tar" for i in range(2)]
    assert pipe.root is None


def test_shards_and_labels_over_http(factory_output):  # noqa: F811
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=factory_output)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        source = resolve_shards(f"{base}/shards/shard-{{000000..000003}}-0000.tar")
        assert source.root == base
        heads = data.inspect_heads(source.urls)
        names = data.read_label_names(source, {h: i.num_classes for h, i in heads.items()})
        assert names["objects"][3] == "objects_class_3"
        batch = next(iter(make_loader(source.urls, ["scenes"], 2, train=False, workers=0)))
        assert batch["targets"]["scenes"].shape == (2, 4, 6)
    finally:
        server.shutdown()


def test_bad_shard_specs_are_clear_errors(tmp_path):
    with pytest.raises(data.ShardSpecError, match="no shard files match"):
        resolve_shards(str(tmp_path / "nothing-{0..3}.tar"))
    with pytest.raises(data.ShardSpecError, match="no .tar shards"):
        resolve_shards(str(tmp_path))


def test_heads_and_label_names_come_from_the_pipeline_output(factory_output):  # noqa: F811
    source = resolve_shards(str(factory_output))
    heads = data.inspect_heads(source.urls)
    assert {h: i.num_classes for h, i in heads.items()} == {"objects": 16, "scenes": 6}
    names = data.read_label_names(source, {"objects": 16, "scenes": 6})
    assert names["scenes"] == [f"scenes_class_{i}" for i in range(6)]
    with pytest.raises(data.ShardSpecError, match="has 6 class names"):
        data.read_label_names(source, {"scenes": 7})


# ---------------------------------------------------------------------------------------------
# Loaders


def test_batches_hold_scaled_20s_waves_and_aligned_rows(factory_output):  # noqa: F811
    urls = resolve_shards(str(factory_output)).urls
    batch = next(iter(make_loader(urls, ["objects", "scenes"], 3, workers=0)))
    # int16 crosses from the workers; the network gets int16 x 256 / 32768, scaled on the device
    assert batch["wave"].shape == (3, 4 * STEP_SAMPLES) and batch["wave"].dtype == torch.int16
    wave, targets = data.batch_to(batch, torch.device("cpu"))
    assert wave.dtype == torch.float32 and 1.0 < wave.abs().max() <= 256.0
    expected = batch["wave"].numpy().astype(np.float32) * np.float32(256 / 32768)  # as before
    np.testing.assert_array_equal(wave.numpy(), expected)
    assert targets["objects"] is batch["targets"]["objects"]
    assert batch["targets"]["objects"].shape == (3, 4, 16)
    assert batch["targets"]["scenes"].shape == (3, 4, 6)
    assert torch.allclose(batch["targets"]["objects"].sum(-1), torch.ones(3, 4), atol=1e-2)
    assert batch["events"]["shards"]  # the shards opened so far travel with the batch


def test_validation_loader_reads_every_sample_once(factory_output):  # noqa: F811
    urls = resolve_shards(str(factory_output)).urls
    keys = []
    for batch in make_loader(urls, ["objects"], 4, train=False, workers=0):
        keys += batch["keys"]
    index = pq.read_table(factory_output / "index.parquet").column("key").to_pylist()
    assert sorted(keys) == sorted(index)


def corrupt_copies(factory_output: Path, folder: Path) -> tuple[list[str], list[str]]:  # noqa: F811
    """The good shards plus a truncated one and one of random bytes."""
    folder.mkdir()
    good = [str(p) for p in sorted((factory_output / "shards").glob("*.tar"))]
    truncated, garbage = folder / "shard-truncated.tar", folder / "shard-garbage.tar"
    payload = Path(good[0]).read_bytes()
    truncated.write_bytes(payload[: len(payload) // 2 + 1000])
    garbage.write_bytes(np.random.default_rng(0).bytes(300_000))
    return good, [str(truncated), str(garbage)]


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_and_truncated_shards_are_skipped_and_counted(
    factory_output,  # noqa: F811
    tmp_path,
    caplog,
    workers,
):
    good, bad = corrupt_copies(factory_output, tmp_path / "bad")
    loader = make_loader(
        [bad[0], *good, bad[1]], ["objects"], 2, resample=False, workers=workers, shuffle_buffer=0
    )
    shard_errors, sample_errors, keys = [], [], []
    with caplog.at_level(logging.WARNING):
        for _, batch in zip(range(12), loader, strict=False):  # 10 samples an epoch: > 2 epochs
            shard_errors += batch["events"]["shard_errors"]
            sample_errors += batch["events"]["sample_errors"]
            keys += batch["keys"]
    failures = Counter(url for url, _ in shard_errors)
    # random bytes (not a tar at all) and a torn tar (its readable part is still used): each
    # counted once per read, over two epochs and more
    assert failures[bad[0]] >= 2 and failures[bad[1]] >= 2
    assert not set(failures) & set(good) and not sample_errors
    assert len(keys) == 24
    if workers == 0:  # worker processes log to their own stderr
        assert "skipping unreadable shard" in caplog.text


def test_a_bad_sample_is_skipped_and_counted_with_its_shard(tmp_path):
    samples = make_samples(clips(2), [5.0, 5.0])
    shard = tmp_path / "shard-000000.tar"
    with wds.TarWriter(str(shard)) as sink:
        bad = encode_sample(samples[0])
        bad["flac"] = bad["flac"][:100]  # a torn FLAC stream
        sink.write(bad)
        sink.write(encode_sample(samples[1]))
    batch = next(iter(make_loader([str(shard)], ["objects"], 1, train=False, workers=0)))
    assert batch["keys"] == [samples[1].key]
    [(url, message)] = batch["events"]["sample_errors"]
    assert url == str(shard) and samples[0].key in message and "FLAC" in message


def test_all_shards_unreadable_is_an_error_not_a_hang(tmp_path):
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"not a tar" * 1000)
    loader = make_loader([str(garbage)], ["objects"], 2, workers=0)
    with pytest.raises(RuntimeError, match="shards are unreadable"):
        next(iter(loader))


def write_shard(path: Path, members: list[dict]) -> Path:
    with wds.TarWriter(str(path)) as sink:
        for sample in members:
            sink.write(sample)
    return path


def torn_flac(samples) -> list[dict]:
    return [{**m, "flac": m["flac"][:100]} for m in map(encode_sample, samples)]


def test_a_stream_of_bad_samples_is_an_error_not_a_hang(tmp_path, caplog):
    """Every sample's audio torn: skipping them one by one went on for ever (3,000 a second,
    never a batch); 10,000 in a row stop the loader, naming one, after a few dozen log lines
    (not 10,000)."""
    shard = write_shard(tmp_path / "torn.tar", torn_flac(make_samples(clips(2), [5.0, 5.0])))
    loader = make_loader([str(shard)], ["objects"], 2, workers=0)
    torn_message = r"10001 samples in a row .*torn\.tar.*FLAC"
    with caplog.at_level(logging.WARNING), pytest.raises(data.UnreadableData, match=torn_message):
        next(iter(loader))
    lines = [r.getMessage() for r in caplog.records]
    assert sum("skipping bad sample in" in line and "torn.tar" in line for line in lines) == 30
    assert "20 bad samples in a row: only every 1000th more is logged" in lines


def test_inspecting_shards_skips_bad_samples_and_decodes_audio(tmp_path):
    samples = make_samples(clips(3), [5.0, 5.0, 5.0])
    members = [encode_sample(s) for s in samples]
    del members[0]["json"]
    shard = write_shard(tmp_path / "first-bad.tar", members)
    info = data.inspect_shards([str(shard)])  # the first sample's problem is that sample's
    assert set(info.heads) == {"objects", "scenes"} and info.frame_interval_s == 5.0
    torn = write_shard(tmp_path / "torn.tar", torn_flac(samples))
    with pytest.raises(data.ShardSpecError, match="torn.tar: .*-0000: .*FLAC"):
        data.inspect_shards([str(torn)])


def test_a_head_of_another_size_is_skipped_not_a_crash(tmp_path):
    """Heads given with their sizes (as trainer.main gives them): a sample whose head has other
    classes is skipped and named; before, it crashed the batch."""
    ours = make_samples(clips(2), [5.0, 5.0])
    ours = write_shard(tmp_path / "ours.tar", [encode_sample(s) for s in ours])
    other = make_samples(clips(2, seed=1), [5.0], heads={"objects": 10, "scenes": 6})
    theirs = write_shard(tmp_path / "theirs.tar", [encode_sample(s) for s in other])
    loader = make_loader([str(ours), str(theirs)], {"objects": 16}, 4, train=False, workers=0)
    [batch] = list(loader)
    assert len(batch["keys"]) == 2 and batch["targets"]["objects"].shape == (2, 4, 16)
    [(url, message)] = batch["events"]["sample_errors"]
    assert url == str(theirs) and "'objects' has 10 classes, the run trains 16" in message


def test_a_shard_cut_between_two_members_is_a_shard_error(factory_output, tmp_path):  # noqa: F811
    """A tar ends with zero blocks: one cut at a member's end (a copy or a download stopped
    there) is torn, not a shorter shard read in silence."""
    shard = sorted((factory_output / "shards").glob("*.tar"))[0]
    with tarfile.open(shard) as tar:
        members = tar.getmembers()
    keys = [m.name.split(".", 1)[0] for m in members]
    first = max(i for i, k in enumerate(keys) if k == keys[0])  # the first sample's last member
    second = max(i for i, k in enumerate(keys) if k == keys[first + 1])  # the second's
    end = members[second].offset_data + -(-members[second].size // 512) * 512
    cut = tmp_path / "cut.tar"
    cut.write_bytes(shard.read_bytes()[:end])
    loader = make_loader([str(cut)], ["objects"], 8, train=False, workers=0)
    [batch] = list(loader)
    # the first sample; the second may have had more members: it is dropped, never incomplete
    assert batch["keys"] == [keys[0]]
    [(url, message)] = batch["events"]["shard_errors"]
    assert url == str(cut) and "end-of-archive" in message


def test_joined_specs_each_take_any_form(factory_output, tmp_path, monkeypatch):  # noqa: F811
    other = tmp_path / "OUT2"
    shutil.copytree(factory_output, other)
    ours = resolve_shards(str(factory_output)).urls
    both = resolve_shards(f"{factory_output}::{other}")
    assert both.urls == ours + resolve_shards(str(other)).urls
    assert both.root == str(factory_output)
    piped = resolve_shards(f"{ours[0]}::pipe:cat {ours[1]}")
    assert piped.urls == [ours[0], f"pipe:cat {ours[1]}"]
    monkeypatch.chdir(factory_output)  # --shards=. from inside the output: its label names
    for spec in (".", "shards", "shards/*.tar"):
        assert resolve_shards(spec).root == str(factory_output)


def shards_opened(urls, monkeypatch, rank: int, world: int, resample: bool, batches: int):
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    loader = make_loader(urls, ["objects"], 1, resample=resample, workers=0, shuffle_buffer=0)
    opened = []
    for _, batch in zip(range(batches), loader, strict=False):
        opened += batch["events"]["shards"]
    return opened


def test_ranks_read_different_shards(factory_output, monkeypatch):  # noqa: F811
    urls = resolve_shards(str(factory_output)).urls
    # --no-resample: each rank its own half of the shards, epoch after epoch
    rank0 = shards_opened(urls, monkeypatch, 0, 2, resample=False, batches=8)
    rank1 = shards_opened(urls, monkeypatch, 1, 2, resample=False, batches=8)
    assert len(rank0) > 2 and len(rank1) > 2  # more than one epoch each
    assert set(rank0).isdisjoint(rank1) and set(rank0) | set(rank1) == set(urls)
    # resampled: every rank its own random stream, reproducible for the same rank and seed
    first = shards_opened(urls, monkeypatch, 0, 2, resample=True, batches=6)
    again = shards_opened(urls, monkeypatch, 0, 2, resample=True, batches=6)
    other = shards_opened(urls, monkeypatch, 1, 2, resample=True, batches=6)
    assert first == again and first != other


# ---------------------------------------------------------------------------------------------
# Reading shards and handing batches over


def test_the_tar_reader_reads_what_webdataset_reads(factory_output, tmp_path):  # noqa: F811
    from trainer.tarstream import tar_samples

    samples = make_samples(clips(2), [5.0, 5.0])
    long_id = "v" * 120  # a member name over ustar's 100 characters: a PAX header
    shard = tmp_path / "shard-long.tar"
    with wds.TarWriter(str(shard)) as sink:
        for sample in samples:
            members = encode_sample(sample)
            if sample is samples[1]:
                members = {**members, "__key__": long_id}
            sink.write(members)
    # local files are mapped (members: views of the mapping), a pipe is read as a stream
    urls = [*resolve_shards(str(factory_output)).urls, str(shard), f"pipe:cat {shard}"]
    ours = list(tar_samples([{"url": u} for u in urls], handler=wds.reraise_exception))
    theirs = list(wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()))
    assert [s["__key__"] for s in ours] == [s["__key__"] for s in theirs]
    assert ours[-1]["__key__"] == ours[-3]["__key__"] == long_id
    assert isinstance(ours[0]["flac"], memoryview) and isinstance(ours[-1]["flac"], bytes)
    for mine, wds_sample in zip(ours, theirs, strict=True):
        assert mine == {k: v for k, v in wds_sample.items() if k != "__local_path__"}
        assert SampleMetadata.from_json(mine["json"]) == SampleMetadata.from_json(
            wds_sample["json"]
        )


def test_a_torn_tar_gives_its_whole_samples_and_then_one_error(factory_output):  # noqa: F811
    import io

    from trainer.tarstream import ShardReadError, group_members, tar_members

    payload = Path(resolve_shards(str(factory_output)).urls[0]).read_bytes()
    whole = list(group_members(tar_members(io.BytesIO(payload))))
    assert len(whole) >= 2
    for cut in (len(payload) // 3, len(payload) // 2 + 1000, 2 * len(payload) // 3):
        got = []
        with pytest.raises(ShardReadError, match="truncated"):
            for sample in group_members(tar_members(io.BytesIO(payload[:cut]))):
                got.append(sample)
        assert got == whole[: len(got)] and len(got) < len(whole)  # no torn sample among them
    with pytest.raises(ShardReadError, match="not a tar"):
        list(tar_members(io.BytesIO(b"not a tar" * 100)))


def test_batches_from_a_worker_are_the_in_process_ones_even_when_all_are_held(
    factory_output,  # noqa: F811
):
    """Worker batches travel in reused shared blocks (trainer/handoff.py): holding every batch
    must not see one change when its block is filled again."""
    urls = resolve_shards(str(factory_output)).urls
    held = {}
    for workers in (0, 1):
        loader = make_loader(urls, ["objects", "scenes"], 3, workers=workers, seed=5)
        held[workers] = [batch for _, batch in zip(range(12), loader, strict=False)]
    for ours, theirs in zip(held[0], held[1], strict=True):
        assert ours["keys"] == theirs["keys"]
        assert torch.equal(ours["wave"], theirs["wave"]) and theirs["wave"].dtype == torch.int16
        for head in ("objects", "scenes"):
            assert torch.equal(ours["targets"][head], theirs["targets"][head])
    assert theirs["events"]["worker"] == 0 and held[0][0]["events"]["worker"] == -1


@pytest.mark.parametrize("codec", ["flac", "pcm16"])
def test_a_window_of_a_member_decodes_to_that_slice_of_the_whole(codec):
    from dataclasses import replace

    from schemas.sample import decode_audio, decode_audio_into

    [sample] = make_samples(clips(5), [25.0])[:1]
    sample.metadata = replace(sample.metadata, audio_codec=codec)
    member = encode_sample(sample)[codec]
    whole = decode_audio(member, codec)
    n = len(whole)
    for start, length in [(0, n), (STEP_SAMPLES, 2 * STEP_SAMPLES), (n - 1000, 1000), (7, 1)]:
        out = np.full(length, -1, dtype=np.int16)
        decode_audio_into(member, codec, out, start, n, where="k-0000")
        np.testing.assert_array_equal(out, whole[start : start + length])
    with pytest.raises(SampleError, match="k-0000: .*metadata says"):
        decode_audio_into(member, codec, np.empty(10, np.int16), 0, n + 1, where="k-0000")
    with pytest.raises(SampleError, match="k-0000: samples .* not within"):
        decode_audio_into(member, codec, np.empty(10, np.int16), n - 5, n, where="k-0000")


@pytest.mark.parametrize("codec", ["flac", "pcm16"])
def test_a_sample_whose_audio_fails_to_decode_gives_its_row_to_the_next(tmp_path, codec):
    """Audio is decoded straight into the batch: a torn member is counted, and the row it would
    have filled holds the next good sample."""
    from dataclasses import replace

    samples = make_samples(clips(3), [5.0, 5.0, 5.0])
    shard = tmp_path / "shard-000000.tar"
    with wds.TarWriter(str(shard)) as sink:
        for i, sample in enumerate(samples):
            sample.metadata = replace(sample.metadata, audio_codec=codec)
            members = encode_sample(sample)
            if i == 1:
                members[codec] = members[codec][: len(members[codec]) // 2 + 1]  # torn
            sink.write(members)
    [batch] = list(make_loader([str(shard)], ["objects"], 2, train=False, workers=0))
    assert batch["keys"] == [samples[0].key, samples[2].key]
    for row, sample in zip(batch["wave"], (samples[0], samples[2]), strict=True):
        wave, _ = crop_steps(sample.audio, {"objects": sample.probs["objects"]}, 4, None)
        np.testing.assert_array_equal(row.numpy(), wave)
    [(url, message)] = batch["events"]["sample_errors"]
    assert url == str(shard) and samples[1].key in message


def test_worker_blocks_are_reused_once_the_training_process_drops_its_batches(
    factory_output,  # noqa: F811
):
    """A batch's tensors are views of its worker's block; dropping the batch frees the block,
    so a worker cycles through a few blocks, while a batch still held is never written."""
    from trainer import handoff

    urls = resolve_shards(str(factory_output)).urls
    before = set(handoff._mapped)
    loader = make_loader(urls, ["objects", "scenes"], 3, workers=1, seed=5)
    stream = iter(loader)
    kept = next(stream)
    kept_wave = kept["wave"].clone()
    for _ in range(40):
        batch = next(stream)
        assert batch["wave"].data_ptr() != kept["wave"].data_ptr()
    del batch, stream, loader
    blocks = set(handoff._mapped) - before
    assert 2 <= len(blocks) <= 6  # the one held, those in flight (2 prefetched), one reused
    assert torch.equal(kept["wave"], kept_wave)
    # the next loader's first blocks forget those of the worker that has exited; the batch
    # still held keeps its mapping alive, unchanged
    next(iter(make_loader(urls, ["objects", "scenes"], 3, workers=1, seed=6)))
    assert not blocks & set(handoff._mapped)
    assert torch.equal(kept["wave"], kept_wave)


def test_dr_flac_gives_libsndfile_s_samples(factory_output):  # noqa: F811
    """The loader's FLAC decoder (dr_flac) against libsndfile's, on every sample of real shards
    and on a FLAC stream cut short."""
    import io

    import soundfile as sf

    from schemas.sample import decode_audio, decode_audio_into
    from trainer.tarstream import tar_samples

    urls = resolve_shards(str(factory_output)).urls
    members = [
        raw["flac"] for raw in tar_samples([{"url": u} for u in urls], wds.reraise_exception)
    ]
    assert len(members) >= 10
    for member in members:
        ours = decode_audio(member, "flac")
        np.testing.assert_array_equal(ours, sf.read(io.BytesIO(member), dtype="int16")[0])
    with pytest.raises(SampleError, match="k-0001: FLAC ends after"):
        decode_audio(members[0][: len(members[0]) // 2], "flac", where="k-0001")
    # a FLAC whose header does not give its length (one written to a pipe) reads as well
    whole = decode_audio(members[0], "flac")
    unsaid = bytearray(members[0])
    fields = int.from_bytes(unsaid[18:26], "big")  # STREAMINFO: rate, channels, bits, samples
    assert fields & (2**36 - 1) == len(whole)
    unsaid[18:26] = (fields & ~(2**36 - 1)).to_bytes(8, "big")
    np.testing.assert_array_equal(decode_audio(bytes(unsaid), "flac"), whole)
    window = np.empty(1000, np.int16)
    decode_audio_into(bytes(unsaid), "flac", window, 500, len(whole))
    np.testing.assert_array_equal(window, whole[500:1500])
    with pytest.raises(SampleError, match="k-0001: unreadable FLAC"):
        decode_audio(b"fLaC but not really" * 10, "flac", where="k-0001")


def test_a_validation_that_read_no_sample_has_no_score():
    """0 samples scored is no score (None), not a perfect KL of 0."""
    model = build_model("soundnet8", {"objects": 16})
    prior = Prior.empty({"objects": 16})
    result = validate(model, [], prior, torch.device("cpu"), 0, nullcontext())
    assert result == {
        "samples": 0,
        "objects": {"kl": None, "top1": None, "prior_kl": None, "prior_top1": None},
        "loss": None,
    }


def test_a_class_the_prior_never_saw_scores_finite_and_l2_runs_report_l2():
    """float16 teacher rows underflow to 0: a class of no mass in the prior gave log 0, a
    prior KL of inf and `Infinity` in metrics.jsonl (not JSON)."""
    model = build_model("soundnet8", {"objects": 4})
    prior = Prior.empty({"objects": 4})
    prior.add({"objects": torch.tensor([2.0, 2.0, 0.0, 0.0], dtype=torch.float64)}, 4)
    targets = torch.tensor([[[0.5, 0.4999, 1e-4, 0.0]]])
    batch = {"wave": torch.zeros(1, model.step_samples, dtype=torch.int16),
             "targets": {"objects": targets}}  # fmt: skip
    kl = validate(model, [batch], prior, torch.device("cpu"), 0, nullcontext())
    assert math.isfinite(kl["objects"]["prior_kl"]) and kl["loss"] == kl["objects"]["kl"]
    json.loads(json.dumps(kl, allow_nan=False))
    l2 = validate(model, [batch], prior, torch.device("cpu"), 0, nullcontext(), loss="l2")
    assert l2["loss"] == l2["objects"]["l2"] != l2["objects"]["kl"]  # the run's loss, named


def test_model_builders_refuse_heads_they_cannot_build():
    assert soundnet8().head_sizes == {"objects": 1000, "scenes": 401}  # the paper's, by default
    with pytest.raises(ValueError, match="at least one head"):
        soundnet8({})  # not silently the paper's heads
    with pytest.raises(TypeError, match="map each head's name to its classes.*got 1000"):
        soundnet8(1000)
    for bad in ({"objects": 0}, {"objects": -5}, {"objects": 2.5}):
        with pytest.raises(ValueError, match="whole number of classes, at least 1"):
            build_model("soundnet5", bad)
