"""eval: datasets, audio, SVM protocols, baselines, eval.run end to end, predict, HEAR API.

Features of ESC-10 are computed once per session per network (pool5 of folds 1-2: the issue's
2-fold check) and shared by the tests that score them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from shardfactory import factory_output  # noqa: F401  (a fixture)

from eval import audio, hear, predict
from eval import run as eval_run
from eval.audio import AudioError, load_audio, tile
from eval.datasets import Dataset, DatasetError, esc50, generic, load_dataset
from eval.features import TABLE_LAYERS, extract_features, resolve_layers
from eval.svm import C_GRID, clip_samples, cross_validate, paper_window, pooled, windows
from models.checkpoint import FORMAT, VERSION, save_checkpoint
from models.pretrained import load_pretrained
from models.registry import build_model
from models.weights import FETCH_COMMAND, original_checkpoint_path
from schemas import SAMPLE_RATE
from tests.conftest import blocking_inputs, noise, run_module
from trainer import main as trainer_main

ESC10_CLASSES = ["dog", "rooster", "rain", "sea_waves", "crackling_fire", "crying_baby",
                 "sneezing", "clock_tick", "helicopter", "chainsaw"]  # fmt: skip
WATER_SCENES = {"ocean", "coast", "beach", "sea_cliff", "lake/natural", "river", "wave",
                "boat_deck", "harbor", "islet", "swimming_pool/outdoor", "waterfall/block",
                "waterfall/fan", "waterfall/plunge", "creek", "rainforest", "ice_shelf",
                "lagoon", "fishpond", "marsh", "pond", "dam", "aquarium", "underwater/ocean_deep",
                "iceberg", "volcano", "bayou", "hot_spring", "fountain", "canal/natural"}  # fmt: skip
pytestmark = pytest.mark.xdist_group("eval")  # one worker: the session caches below are reused


@pytest.fixture(scope="session")
def esc10(shared_esc10: Path):
    return load_dataset("esc10", shared_esc10)


@pytest.fixture(scope="session")
def two_folds(esc10):
    return esc10.select_folds([1, 2])


@pytest.fixture(scope="session")
def pool5_of():
    """pool5 features of folds 1-2 per checkpoint spec, computed once per session."""
    cache: dict[str, list[np.ndarray]] = {}

    def get(spec: str, dataset) -> list[np.ndarray]:
        if spec not in cache:
            model, _ = load_pretrained(spec)
            paths = [c.path for c in dataset.clips]
            cache[spec] = extract_features(model, paths, ["pool5"], progress=False)["pool5"]
        return cache[spec]

    return get


@pytest.fixture(scope="session")
def mfcc_results(shared_esc10: Path, tmp_path_factory) -> dict:
    """`eval.run --features mfcc` over ESC-10's five folds (the paper's SVM-MFCC row)."""
    out = tmp_path_factory.mktemp("mfcc")
    eval_run.main(["--features=mfcc", "--dataset=esc50", "--subset=esc10",
                   f"--root={shared_esc10}", f"--out={out}", "--no-progress"])  # fmt: skip
    return {"out": out, **json.loads((out / "results.json").read_text())}


@pytest.fixture(scope="session")
def real_weights() -> Path:
    path = original_checkpoint_path()
    if not path.is_file():
        message = f"{path} missing: run `{FETCH_COMMAND}` (make setup does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def write_generic(root: Path, clips: list[tuple[Path, int, str]]) -> Path:
    """A generic-layout dataset: ROOT/meta.csv listing (file, fold, label) by absolute path."""
    root.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{path},{fold},{label}\n" for path, fold, label in clips)
    (root / "meta.csv").write_text("filename,fold,label\n" + rows)
    return root


def tiny_clips(folder: Path, count: int = 4) -> list[Path]:
    """`count` one-second WAVs of noise in `folder`: clips for tests that need no real audio."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = [folder / f"c{i}.wav" for i in range(count)]
    for path in paths:
        sf.write(path, (0.1 * rng.standard_normal(SAMPLE_RATE)).astype(np.float32), SAMPLE_RATE)
    return paths


def four_clips(esc10) -> list[tuple[Path, int, str]]:
    """Two ESC-10 classes, one clip of each in folds 1 and 2: the smallest leave-one-out."""
    return [(next(c.path for c in esc10.clips if c.fold == f and c.label == y), f, f"c{y}")
            for f in (1, 2) for y in (0, 1)]  # fmt: skip


# --------------------------------------------------------------------------- datasets and audio


def test_esc10_copy_is_read_with_its_folds_and_flac_files(esc10) -> None:
    assert esc10.name == "esc10" and esc10.classes == ESC10_CLASSES
    assert len(esc10.clips) == 400 and np.bincount(esc10.folds).tolist() == [0, 80, 80, 80, 80, 80]
    assert np.bincount(esc10.labels).tolist() == [40] * 10
    assert all(c.path.suffix == ".flac" and c.path.is_file() for c in esc10.clips)
    with pytest.raises(DatasetError, match="fold"):
        esc10.select_folds([6])
    with pytest.raises(DatasetError, match="at least two folds"):  # nothing to train on
        esc10.select_folds([1, 1])


def test_esc50_layout_any_rate_and_channels_and_generic_csv(esc10, tmp_path: Path) -> None:
    """An ESC-50 tree of 44.1 kHz stereo WAVs: subset, resampling, mixdown; then a generic CSV."""
    (tmp_path / "audio").mkdir()
    (tmp_path / "meta").mkdir()
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    picks = [esc10.clips[i] for i in (0, 1, 100, 200)]
    for i, clip in enumerate(picks):
        wave = load_audio(clip.path)
        stereo = np.stack([wave, wave], axis=1)
        import librosa

        stereo = librosa.resample(stereo.T, orig_sr=SAMPLE_RATE, target_sr=44100).T
        name = f"{clip.fold}-{i}-A-{clip.label}.wav"
        sf.write(tmp_path / "audio" / name, stereo, 44100, subtype="PCM_16")
        category = esc10.classes[clip.label]
        rows.append(f"{name},{clip.fold},{clip.label},{category},True,{i},A")
    sf.write(tmp_path / "audio" / "1-9-A-33.wav", np.zeros(44100), 44100)
    rows.append("1-9-A-33.wav,1,33,door_wood_knock,False,9,A")
    (tmp_path / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")

    full, subset = esc50(tmp_path), esc50(tmp_path, "esc10")
    assert len(full.clips) == 5 and full.classes[-1] == "door_wood_knock"
    assert len(subset.clips) == 4 and "door_wood_knock" not in subset.classes
    wave = load_audio(subset.clips[0].path)
    original = load_audio(picks[0].path)
    assert wave.dtype == np.float32 and abs(len(wave) - len(original)) <= 2
    n = min(len(wave), len(original))
    assert np.corrcoef(wave[:n], original[:n])[0, 1] > 0.99

    (tmp_path / "meta.csv").write_text(
        "filename,fold,label\n"
        + "".join(f"{c.path.name},{c.fold},x{c.label}\n" for c in full.clips)
    )
    scenes = generic(tmp_path)
    assert scenes.classes == sorted({f"x{c.label}" for c in full.clips})
    # Excel's "CSV UTF-8": a byte-order mark, CRLF, and spaces around the header's names
    text = (tmp_path / "meta.csv").read_text().replace("filename,fold,", "\ufefffilename, fold ,")
    (tmp_path / "meta.csv").write_bytes(text.replace("\n", "\r\n").encode())
    assert generic(tmp_path).clips == scenes.clips
    (tmp_path / "meta.csv").write_text("filename,fold,label\nmissing.wav,1,a\n")
    with pytest.raises(DatasetError, match="missing.wav"):
        generic(tmp_path)
    (tmp_path / "meta.csv").write_text("file,fold\n")
    with pytest.raises(DatasetError, match="missing column"):
        generic(tmp_path)


def test_bad_csv_rows_are_named_by_file_and_line(tmp_path: Path) -> None:
    """A short row, a non-integer target and a clip listed twice fail naming the CSV and the
    line (they were a TypeError, int()'s words naming no file, and silent train/test leakage);
    cells padded with spaces are one class with the unpadded."""
    tiny_clips(tmp_path / "audio")
    meta = tmp_path / "meta.csv"
    meta.write_text("filename,fold,label\nc0.wav,1,dog\nc1.wav,2\n")
    with pytest.raises(DatasetError, match=r"meta\.csv: line 3: no value for label$"):
        generic(tmp_path)
    meta.write_text("filename,fold,label\nc0.wav,1,dog\n,2,cat\n")
    with pytest.raises(DatasetError, match=r"meta\.csv: line 3: no value for filename$"):
        generic(tmp_path)
    meta.write_text("filename,fold,label\nc0.wav,1,dog\nc1.wav, 2 ,x\nc2.wav,one,dog\n")
    with pytest.raises(DatasetError, match=r"meta\.csv: line 4: fold 'one' is not an integer"):
        generic(tmp_path)
    # the same file by two spellings, in two folds: trained on, then tested on
    meta.write_text("filename,fold,label\nc0.wav,1,dog\nc1.wav,1,cat\naudio/c0.wav,2,dog\n")
    with pytest.raises(DatasetError, match=r"meta\.csv: line 4: .*c0\.wav is listed again "
                                           r"\(line 2\); folds 1 and 2"):  # fmt: skip
        generic(tmp_path)
    meta.write_text("filename,fold,label\n c0.wav , 1 , dog\nc1.wav,2,dog \nc2.wav,2,cat\n,,\n")
    padded = generic(tmp_path)
    assert padded.classes == ["cat", "dog"] and padded.labels.tolist() == [1, 1, 0]
    assert padded.folds.tolist() == [1, 2, 2] and padded.clips[0].path.name == "c0.wav"

    (tmp_path / "meta").mkdir()
    esc = tmp_path / "meta" / "esc50.csv"
    esc.write_text(
        "filename,fold,target,category,esc10\nc0.wav,1,0,dog,True\nc1.wav,2,x,cat,True\n"
    )
    with pytest.raises(DatasetError, match=r"esc50\.csv: line 3: target 'x' is not an integer"):
        esc50(tmp_path)
    # a row without its esc10 cell is not in the subset (it was an AttributeError)
    esc.write_text("filename,fold,target,category,esc10\nc0.wav,1,0,dog,True\n"
                   "c1.wav,2,0,dog\nc2.wav,2,1,cat, true\n")  # fmt: skip
    assert [c.path.name for c in esc50(tmp_path, "esc10").clips] == ["c0.wav", "c2.wav"]


def test_datasets_without_two_folds_fail_before_the_features(tmp_path: Path, monkeypatch) -> None:
    """No clips, or every clip in one fold: refused naming the CSV, before any feature is
    computed (they failed after the whole feature pass, in numpy's and scikit-learn's words)."""
    monkeypatch.setattr(eval_run, "compute_samples", lambda *a: pytest.fail("features computed"))
    clips = tiny_clips(tmp_path / "audio")
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "esc50.csv").write_text(
        "filename,fold,target,category,esc10\n"
        + "".join(f"{p.name},{1 + i % 2},{i % 2},c{i % 2},False\n" for i, p in enumerate(clips))
    )
    base = ["--features=mfcc", f"--root={tmp_path}", "--no-progress", f"--out={tmp_path / 'o'}"]
    with pytest.raises(SystemExit, match=r"^error: .*esc50\.csv: no row has esc10=True"):
        eval_run.main([*base, "--dataset=esc50", "--subset=esc10"])
    (tmp_path / "meta.csv").write_text(
        "filename,fold,label\n" + "".join(f"{p.name},3,c{i % 2}\n" for i, p in enumerate(clips))
    )
    with pytest.raises(SystemExit, match=r"^error: .*meta\.csv: folds \[3\]: leave-one-out "
                                         r"needs at least two folds"):  # fmt: skip
        eval_run.main([*base, "--dataset=generic"])
    empty = Dataset("none", tmp_path, [], [], tmp_path / "meta.csv")
    with pytest.raises(DatasetError, match=r"meta\.csv: no clips to evaluate"):
        empty.select_folds()
    assert not (tmp_path / "o").exists()


def test_audio_from_video_and_bad_files(shared_videos: Path, tmp_path: Path) -> None:
    wave = load_audio(shared_videos / "mdn-ie_stream-of-water.webm")  # Opus in WebM: ffmpeg
    assert wave.dtype == np.float32 and wave.ndim == 1 and len(wave) > SAMPLE_RATE
    assert np.abs(wave).max() <= 1.0 and np.abs(wave).max() > 0.01
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(AudioError, match="notes.mp4"):
        load_audio(text)
    with pytest.raises(AudioError, match="no such file"):
        load_audio(tmp_path / "absent.wav")
    assert tile(np.arange(3.0), 7).tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert len(tile(np.arange(9.0), 7)) == 9  # long clips are kept whole


def test_non_finite_samples_are_refused_naming_the_file(esc10, tmp_path: Path, capsys) -> None:
    """A float WAV with a NaN or an inf sample fails with its name: eval.predict's JSON stays
    JSON, and eval.run --features mfcc ends with one line (it was a librosa traceback)."""
    wave = load_audio(esc10.clips[0].path)
    bad = {}
    for name, value in (("nan", np.nan), ("inf", -np.inf)):
        bad[name] = tmp_path / f"{name}.wav"
        sf.write(bad[name], np.where(np.arange(len(wave)) == 100, value, wave), SAMPLE_RATE,
                 subtype="FLOAT")  # fmt: skip
        with pytest.raises(AudioError, match=rf"{name}\.wav: non-finite \(NaN or inf\) samples"):
            load_audio(bad[name])
    with pytest.raises(SystemExit) as done:
        predict.main(["--checkpoint=random:soundnet8", "--json", str(bad["nan"])])
    assert done.value.code == 1

    def no_constants(name: str) -> None:  # json.loads takes NaN and Infinity unless told
        pytest.fail(f"{name} in eval.predict's JSON")

    [result] = json.loads(capsys.readouterr().out, parse_constant=no_constants)["results"]
    assert "nan.wav: non-finite" in result["error"]
    root = write_generic(tmp_path / "set", [*four_clips(esc10), (bad["inf"], 2, "c1")])
    with pytest.raises(SystemExit, match=r"^error: .*inf\.wav: non-finite"):
        eval_run.main(["--features=mfcc", "--dataset=generic", f"--root={root}", "--no-progress",
                       f"--out={tmp_path / 'out'}"])  # fmt: skip


def test_an_ffmpeg_that_hangs_is_stopped_and_its_file_fails(tmp_path: Path, monkeypatch) -> None:
    """As on a stalled network file system: the ffmpeg eval asks never answers; the file fails
    after the timeout, with that reason, and the ffmpeg is gone."""
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "ffmpeg").write_text(f"#!/bin/sh\necho $$ > {tmp_path / 'pid'}\nexec sleep 600\n")
    (tools / "ffmpeg").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(audio, "FFMPEG_TIMEOUT_S", 2.0)
    clip = tmp_path / "stuck.mp4"
    clip.write_bytes(noise(10_000))  # not for libsndfile: ffmpeg is asked
    with pytest.raises(AudioError, match=r"stuck\.mp4: ffmpeg did not finish in 2 s"):
        load_audio(clip)
    pid = int((tmp_path / "pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped


# --------------------------------------------------------------------------- SVM protocols


def test_windows_and_pooling_follow_the_original() -> None:
    feature = np.arange(10.0).reshape(2, 5)  # 2 channels, 5 frames
    w = windows(feature, 2)
    assert w.shape == (4, 4)
    assert w[1].tolist() == [1, 2, 6, 7]  # Torch's feat[{}, {i, i+1}]:view(-1): channel-major
    assert pooled(feature).tolist() == [[2.0, 7.0, 4.0, 9.0]]
    assert paper_window(27) == 3  # pool5 of a 10 s clip: 27 frames -> windows of 3
    samples = clip_samples([feature, np.ones((2, 7))], "paper")
    assert [s.shape for s in samples] == [(5, 2), (7, 2)]


def test_cross_validation_scores_a_clip_by_its_windows_mean_decision() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 12)
    folds = np.tile(np.arange(1, 4), 12)
    centres = rng.normal(0, 3, (3, 8))
    samples = [centres[y] + rng.normal(0, 1, (5, 8)) for y in labels]  # 5 windows a clip
    fixed = cross_validate(samples, labels, folds, C=0.01, protocol="paper")
    assert [r.fold for r in fixed] == [1, 2, 3] and all(r.C == 0.01 for r in fixed)
    assert all(r.accuracy == 1.0 for r in fixed)
    inner = cross_validate([s.mean(0, keepdims=True) for s in samples], labels, folds)
    assert all(r.accuracy == 1.0 and r.C in C_GRID for r in inner)
    binary = cross_validate(samples[:24], labels[:24], folds[:24], C=1.0)
    assert all(r.accuracy == 1.0 for r in binary)


def test_inner_cv_counts_only_present_classes_and_falls_back_when_impossible() -> None:
    """Two folds: scoring fold 2 leaves fold 1 alone to choose C. A class with one clip there
    allows no stratified split: the default C, with a warning; a class absent from it is no
    obstacle (it was counted as zero clips, and both crashed in scikit-learn)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (3, 8))

    def run(labels: list[int], folds: list[int]):
        samples = [centres[y] + rng.normal(0, 0.5, (1, 8)) for y in labels]
        return cross_validate(samples, np.array(labels), np.array(folds))

    with pytest.warns(UserWarning, match=r"fold 2: .*1 clip of a class.* C = 1 .*--C"):
        lonely = run([0, 0, 0, 1, 0, 0, 0, 1, 1, 1], [1] * 4 + [2] * 6)
    assert lonely[0].C in C_GRID and lonely[1].C == 1.0 and lonely[1].accuracy > 0.5
    absent = run([1, 1, 2, 2, 0, 0, 1, 1, 2, 2], [1] * 4 + [2] * 6)  # no class 0 in fold 1
    assert all(r.C in C_GRID for r in absent)


# --------------------------------------------------------------------------- baselines


def test_mfcc_baseline_is_where_the_paper_puts_it(mfcc_results: dict) -> None:
    r = mfcc_results
    assert 0.62 <= r["accuracy_mean"] <= 0.80, r["accuracy_per_fold"]  # paper: 0.675
    assert r["dataset"] == "esc10" and r["features"] == "mfcc" and r["layer"] == "mfcc"
    assert len(r["accuracy_per_fold"]) == 5 and r["folds"] == [1, 2, 3, 4, 5]
    assert np.array(r["confusion_matrix"]).sum() == 400
    md = (r["out"] / "results.md").read_text()
    assert "| SVM on MFCC (paper) | 39.6 | 67.5 |" in md
    assert f"**{100 * r['accuracy_mean']:.1f}**" in md
    for png in ("confusion.png", "layers.png"):
        assert (r["out"] / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_random_network_is_well_above_chance(two_folds, pool5_of) -> None:
    features = pool5_of("random:soundnet8", two_folds)
    folds = cross_validate(clip_samples(features, "pooled"), two_folds.labels, two_folds.folds)
    accuracy = np.mean([f.accuracy for f in folds])
    assert accuracy > 0.3, accuracy  # chance: 0.1


def test_authors_network_beats_mfcc_on_two_folds(
    real_weights, two_folds, pool5_of, mfcc_results
) -> None:
    features = pool5_of("original:soundnet8", two_folds)
    folds = cross_validate(clip_samples(features, "pooled"), two_folds.labels, two_folds.folds)
    accuracy = np.mean([f.accuracy for f in folds])
    mfcc = np.mean(mfcc_results["accuracy_per_fold"][:2])  # the same two test folds
    assert accuracy >= 0.85 and accuracy >= mfcc + 0.1, (accuracy, mfcc)


def test_authors_network_hears_water_and_babies(real_weights, esc10) -> None:
    model, labels = load_pretrained("original:soundnet8")
    waves = {name: [load_audio(c.path) for c in esc10.clips if esc10.classes[c.label] == name][:6]
             for name in ("sea_waves", "crying_baby")}  # fmt: skip
    water = 0
    for wave in waves["sea_waves"]:
        top5 = {
            t["label"] for t in predict.predict_wave(model, labels, wave)["heads"]["scenes"]["clip"]
        }
        water += bool(top5 & WATER_SCENES)
    assert water >= 4, f"{water} of 6 sea-wave clips have a water scene in their top 5"
    babies = [
        predict.predict_wave(model, labels, w)["heads"]["objects"]["clip"][0]["label"]
        for w in waves["crying_baby"]
    ]
    assert "diaper" in babies, babies


# --------------------------------------------------------------------------- end to end


def test_trainer_checkpoints_run_end_to_end(
    factory_output: Path,  # noqa: F811
    shared_esc10: Path,
    shared_videos: Path,
    tmp_path: Path,
    capsys,
) -> None:
    """SoundNet-8 and the autoencoder trained by trainer.main for two steps, then eval.run
    (every layer; the paper's protocol; the autoencoder's conv4) and eval.predict on a real
    video with those checkpoints."""
    fast = ["--steps=2", "--batch-size=2", "--crop-seconds=5", "--workers=1", "--no-progress",
            "--no-tensorboard"]  # fmt: skip
    for arch in ("soundnet8", "autoencoder"):
        trainer_main.main([f"--shards={factory_output}", f"--out={tmp_path / arch}",
                           f"--arch={arch}", *fast])  # fmt: skip
    base = ["--dataset=esc10", f"--root={shared_esc10}", "--folds=1,2", "--no-progress"]
    out = tmp_path / "eval"
    eval_run.main([f"--checkpoint={tmp_path / 'soundnet8' / 'last.pt'}", "--layer=all",
                   f"--out={out}", *base])  # fmt: skip
    printed = capsys.readouterr().out.strip().splitlines()
    results = json.loads((out / "results.json").read_text())
    assert list(results["layers"]) == ["conv4", "conv5", "pool5", "conv6", "conv7", "conv8"]
    assert results["layer"] == "pool5" and results["folds"] == [1, 2]
    assert all(0.0 <= a <= 1.0 for a in results["accuracy_per_fold"])
    assert printed[-1] == f"mean accuracy: {results['accuracy_mean']:.4f} (pool5)"
    assert (out / "layers.png").is_file() and (out / "confusion.png").is_file()

    eval_run.main([f"--checkpoint={tmp_path / 'soundnet8' / 'last.pt'}", "--protocol=paper",
                   f"--out={tmp_path / 'paper'}", *base])  # fmt: skip
    results = json.loads((tmp_path / "paper" / "results.json").read_text())
    assert results["layer"] == "pool5" and results["protocol"] == "paper" and results["C"] == 0.01

    eval_run.main([f"--checkpoint={tmp_path / 'autoencoder' / 'last.pt'}",
                   f"--out={tmp_path / 'ae'}", *base])  # fmt: skip
    results = json.loads((tmp_path / "ae" / "results.json").read_text())
    assert results["layer"] == "conv4" and list(results["layers"]) == ["conv4"]
    assert results["accuracy_mean"] > 0.2  # chance 0.1, even barely trained

    video = shared_videos / "videollama_dog_barking.mp4"
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        predict.main([f"--checkpoint={tmp_path / 'soundnet8' / 'last.pt'}", "--json", str(video)])
    assert done.value.code == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert set(result["heads"]) == {"objects", "scenes"}
    assert len(result["heads"]["scenes"]["clip"]) == 5


def test_predict_refuses_inputs_that_would_block_it_at_once(tmp_path: Path) -> None:
    """A named pipe, and a concat list or HLS playlist naming one (read by ffmpeg, which would
    wait on the pipe for good), each fail with their reason; the run ends (the timeout here is
    only the test's guard)."""
    inputs = blocking_inputs(tmp_path / "in")
    proc = run_module("eval.predict", "--checkpoint=random:soundnet8", "--json",
                      *map(str, inputs.values()), timeout=120)  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = {r["file"]: r["error"] for r in json.loads(proc.stdout)["results"]}
    assert errors.keys() == {str(p) for p in inputs.values()}
    assert "not a regular file" in errors[str(inputs["named pipe"])]
    assert "in the concat format" in errors[str(inputs["concat list"])]
    assert "in the hls format" in errors[str(inputs["HLS playlist"])]
    assert all(Path(path).name in error for path, error in errors.items())


def test_predict_on_real_videos_tiles_short_clips_and_reports_bad_files(
    shared_videos: Path, tmp_path: Path, capsys
) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 100)
    files = [shared_videos / "torchcodec_nasa_13013.mp4", bad,
             shared_videos / "media3_8k24fps_300ms.mp4"]  # fmt: skip
    with pytest.raises(SystemExit) as done:
        predict.main(["--checkpoint=random:soundnet8", "--json", *map(str, files)])
    assert done.value.code == 1  # one file failed; the others were still predicted
    captured = capsys.readouterr()
    assert "broken.mp4" in captured.err
    long, failed, short = json.loads(captured.out)["results"]
    assert "error" in failed and "broken.mp4" in failed["error"]
    steps = long["heads"]["objects"]["steps"]
    assert len(steps) >= 2 and steps[0]["start_s"] == 0.0
    assert steps[-1]["end_s"] == pytest.approx(long["duration_s"], abs=0.05)
    assert [len(s["top"]) for s in steps] == [5] * len(steps)
    assert short["duration_s"] < 1.0 and short["tiled"]  # tiled, not a crash
    assert len(short["heads"]["scenes"]["steps"]) == 1
    predict.format_text("x.mp4", long)  # the human-readable form renders too


def test_default_and_all_layers_are_hidden_layers() -> None:
    """SoundNet-5's head is called conv5: neither its default layer nor one of 'all' (SoundNet-8's
    conv5 is a hidden layer); the paper's table does score SoundNet-8's head, conv8."""
    sn8, sn5 = build_model("soundnet8", {"objects": 3}), build_model("soundnet5", {"objects": 3})
    assert resolve_layers(sn8, None) == ["pool5"] and resolve_layers(sn8, "all") == [*TABLE_LAYERS]
    assert resolve_layers(sn5, None) == resolve_layers(sn5, "all") == ["conv4"]
    assert resolve_layers(sn5, "conv5") == ["conv5"]  # the head's scores, when asked by name
    assert hear.SoundNetEmbedding(sn5).scene_layer == "conv4"  # as eval.hear always had it


def test_default_output_folders_tell_evaluations_apart(esc10, tmp_path: Path, monkeypatch) -> None:
    """runs/a/last.pt and runs/b/last.pt, each protocol and a chosen layer: one folder each
    under runs/, named by the options that differ (all were runs/eval-DATASET-last)."""
    root = write_generic(tmp_path / "four", four_clips(esc10))
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        save_checkpoint(
            tmp_path / run / "last.pt", build_model("autoencoder", {}), "autoencoder", {}
        )
    monkeypatch.chdir(tmp_path)
    base = ["--dataset=generic", f"--root={root}", "--C=1", "--no-progress"]
    for options in (["--checkpoint=a/last.pt"], ["--checkpoint=b/last.pt"],
                    ["--checkpoint=a/last.pt", "--protocol=paper"],
                    ["--checkpoint=a/last.pt", "--layer=conv3"]):  # fmt: skip
        eval_run.main([*options, *base])
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "eval-four-a-last-paper-C1", "eval-four-a-last-pooled-C1",
        "eval-four-a-last-pooled-conv3-C1", "eval-four-b-last-pooled-C1"]  # fmt: skip
    assert all((p / "results.json").is_file() for p in (tmp_path / "runs").iterdir())


def test_a_default_folder_of_another_evaluation_is_not_overwritten(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """a/run1/last.pt and b/run1/last.pt, or two dataset folders of one name, have one default
    folder: the second evaluation is refused before its work, and the first's results stay;
    the same evaluation again (its paths spelt otherwise) does write there."""
    for run in ("a", "b"):
        (tmp_path / run / "run1").mkdir(parents=True)
        save_checkpoint(tmp_path / run / "run1" / "last.pt", build_model("autoencoder", {}),
                        "autoencoder", {})  # fmt: skip
    for copy in ("x", "y"):
        write_generic(tmp_path / copy / "set", [(p, 1 + i % 2, f"c{i // 2}")
                      for i, p in enumerate(tiny_clips(tmp_path / copy / "audio"))])  # fmt: skip
    monkeypatch.chdir(tmp_path)
    network = ["--dataset=generic", "--root=x/set", "--C=1", "--seconds=1", "--no-progress"]
    eval_run.main(["--checkpoint=a/run1/last.pt", *network])
    done = tmp_path / "runs" / "eval-set-run1-last-pooled-C1-1s" / "results.json"
    first = done.read_text()
    assert json.loads(first)["checkpoint"] == "a/run1/last.pt"
    with pytest.raises(SystemExit, match=r"^error: output folder .*eval-set-run1-last-pooled-C1-1s "
                                         r"holds the results of a/run1/last\.pt on x/set; not "
                                         r"overwritten"):  # fmt: skip
        eval_run.main(["--checkpoint=b/run1/last.pt", *network])
    assert done.read_text() == first
    eval_run.main([f"--checkpoint={tmp_path / 'a' / 'run1' / 'last.pt'}", *network])  # a rerun
    assert json.loads(done.read_text())["checkpoint"] == str(tmp_path / "a/run1/last.pt")

    mfcc = ["--features=mfcc", "--dataset=generic", "--C=1", "--no-progress"]
    eval_run.main([*mfcc, "--root=x/set"])
    with pytest.raises(SystemExit, match=r"holds the results of mfcc on x/set"):
        eval_run.main([*mfcc, "--root=y/set"])
    eval_run.main([*mfcc, "--root=./x/set/"])
    eval_run.main([*mfcc, "--root=y/set", f"--out={tmp_path / 'y-out'}"])  # --out: the user's
    assert (tmp_path / "y-out" / "results.json").is_file()
    capsys.readouterr()


def test_options_the_features_or_dataset_ignore_are_refused(tmp_path: Path, capsys) -> None:
    """They would name the output folder, or look obeyed, while changing nothing; left out,
    their defaults stand as before."""
    root = f"--root={tmp_path}"
    for argv, message in [
        (["--features=mfcc", "--layer=conv5"], "--layer: not used by --features mfcc"),
        (["--features=mfcc", "--seconds=5", "--checkpoint=random:soundnet8"],
         "--checkpoint, --seconds: not used by --features mfcc"),
        (["--checkpoint=random:soundnet8", "--meta=x.csv"], "--meta is for --dataset generic"),
        (["--features=mfcc", "--dataset=esc10", "--meta=x.csv"], "--dataset esc10 reads ROOT"),
        (["--features=mfcc", "--dataset=generic", "--subset=esc10"], "--subset is ESC-50's"),
    ]:  # fmt: skip
        with pytest.raises(SystemExit) as done:
            eval_run.parse_args([*argv, root])
        assert done.value.code == 2 and message in capsys.readouterr().err, argv
    assert eval_run.parse_args(["--features=mfcc", root]).seconds == 10.0
    assert eval_run.parse_args(["--checkpoint=random:soundnet8", "--seconds=5", root]).seconds == 5
    generic_meta = eval_run.parse_args(
        ["--features=mfcc", "--dataset=generic", "--meta=m.csv", root]
    )
    assert generic_meta.meta == Path("m.csv")


def test_checkpoints_of_wrong_contents_are_named_errors(tmp_path: Path, capsys) -> None:
    """Our format tag over contents that do not rebuild a model: one line naming the file, from
    eval.predict and eval.run (they were a KeyError, a ValueError naming no file and
    load_state_dict's RuntimeError, as tracebacks)."""
    weights = build_model("soundnet5", {"objects": 5}).state_dict()
    tag = {"format": FORMAT, "version": VERSION}
    cases = {
        "noarch": ({**tag, "heads": {"objects": 5}, "model": weights}, "no 'arch' field"),
        "arch": ({**tag, "arch": "soundnet9", "heads": {"objects": 5}, "model": weights},
                 "unknown arch 'soundnet9'"),
        "heads": ({**tag, "arch": "soundnet5", "heads": {"objects": 7}, "model": weights},
                  "its weights do not fit soundnet5 with heads {'objects': 7}: size mismatch"),
        "labels": ({**tag, "arch": "soundnet5", "heads": {"objects": 5}, "model": weights,
                    "labels": {"objects": ["a", "b"]}},
                   "2 class names for head 'objects' of 5 outputs"),
    }  # fmt: skip
    clips = tiny_clips(tmp_path / "audio", 2)
    for name, (payload, message) in cases.items():
        path = tmp_path / f"{name}.pt"
        torch.save(payload, path)
        with pytest.raises(SystemExit) as done:
            predict.main([f"--checkpoint={path}", str(clips[0])])
        assert str(done.value.code).startswith(f"error: {path}: {message}"), done.value.code
    root = write_generic(tmp_path / "set", [(clips[0], 1, "a"), (clips[1], 2, "a")])
    with pytest.raises(SystemExit, match=r"^error: .*heads\.pt: its weights do not fit"):
        eval_run.main([f"--checkpoint={tmp_path / 'heads.pt'}", "--dataset=generic",
                       f"--root={root}", f"--out={tmp_path / 'out'}", "--no-progress"])  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_options_are_checked_before_any_work(tmp_path: Path, capsys) -> None:
    """Each bad option ends the run at once, naming itself (an --out that is a file was found
    only after every feature was computed); `--folds 1,2,` and joblib's -1 are fine."""
    afile = tmp_path / "afile"
    afile.write_text("")
    base = ["--checkpoint=random:soundnet8", f"--root={tmp_path}"]
    for option, message in [("--batch-size=0", "--batch-size: 0: must be at least 1"),
                            ("--jobs=0", "--jobs: 0 means no worker"),
                            ("--folds=1,x", "--folds: '1,x': not fold numbers"),
                            (f"--out={afile}", "afile exists and is not a folder"),
                            (f"--out={afile}/eval", "afile exists and is not a folder")]:  # fmt: skip
        with pytest.raises(SystemExit) as done:
            eval_run.parse_args([*base, option])
        assert done.value.code == 2 and message in capsys.readouterr().err, option
    assert eval_run.parse_args([*base, "--folds=1,2,", "--jobs=-1"]).folds == [1, 2]
    with pytest.raises(SystemExit) as done:
        predict.main(["--top=0", str(afile)])
    assert done.value.code == 2 and "--top: 0: must be at least 1" in capsys.readouterr().err


def test_hear_api(tmp_path: Path) -> None:
    model = hear.load_model("random:soundnet8")
    assert model.sample_rate == 22050
    assert model.scene_embedding_size == 512 and model.timestamp_embedding_size == 256
    audio = torch.rand(2, 3 * 22050) * 2 - 1
    scene = hear.get_scene_embeddings(audio, model)
    assert scene.shape == (2, 512)
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    assert emb.shape[:2] == ts.shape and emb.shape[0] == 2 and emb.shape[2] == 256
    # the default hop is 1024 samples (46.4 ms): stamps at 0, 46.4, ... ms up to the end of the
    # 3 s of audio and none past it (tests/test_hear.py checks that they are the frames' centres)
    hop_ms = 1000 * 1024 / 22050
    assert model.hop == 1024 and emb.shape[1] == 3 * 22050 // 1024 + 1
    assert ts[0] == pytest.approx(torch.arange(emb.shape[1]) * hop_ms)
    assert 3000 - hop_ms < ts[0, -1] <= 3000 and torch.equal(ts[0], ts[1])
    assert torch.isfinite(scene).all() and torch.isfinite(emb).all()

    encoder = hear.SoundNetEmbedding(build_model("autoencoder", {}))  # no pool5, no heads
    assert encoder.scene_layer == encoder.timestamp_layer == "conv4"
    assert encoder.frame_hop == encoder.hop == 1024 and encoder.phases == 1  # 46.4 ms already
    emb, ts = hear.get_timestamp_embeddings(audio[:1], encoder)
    assert emb.shape == (1, 3 * 22050 // 1024 + 1, 128) and ts.shape == emb.shape[:2]
