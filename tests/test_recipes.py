"""`make reproduce` end to end on clips it never saw: videos -> shards -> a student -> the table
of four rows beside the paper's; the same command again redoes nothing."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_module


def make_clips(folder: Path, count: int = 3) -> Path:
    folder.mkdir()
    for i in range(count):
        subprocess.run(
            ["ffmpeg", "-nostdin", "-v", "error", "-y",
             "-f", "lavfi", "-i", f"testsrc2=size=320x240:rate=25:duration={8 + 4 * i}",
             "-f", "lavfi", "-i", f"anoisesrc=color=pink:seed={i}:duration={8 + 4 * i}",
             "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac",
             str(folder / f"clip{i}.mp4")],
            check=True, timeout=120,
        )  # fmt: skip
    return folder


def small_esc(esc10: Path, folder: Path, per_class_and_fold: int = 2) -> Path:
    """ESC-10's layout with two folds and two clips of each class in each."""
    (folder / "meta").mkdir(parents=True)
    (folder / "audio").mkdir()
    with open(esc10 / "meta" / "esc10.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    kept, count = [], {}
    for row in rows:
        key = (row["fold"], row["category"])
        if row["fold"] in ("1", "2") and count.get(key, 0) < per_class_and_fold:
            count[key] = count.get(key, 0) + 1
            kept.append(row)
            flac = row["filename"].replace(".wav", ".flac")
            (folder / "audio" / flac).symlink_to(esc10 / "audio" / flac)
    with open(folder / "meta" / "esc10.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    return folder


@pytest.mark.slow
def test_reproduce_writes_the_four_row_table_and_a_second_run_redoes_nothing(
    shared_esc10, tmp_path
):
    videos, esc = make_clips(tmp_path / "videos"), small_esc(shared_esc10, tmp_path / "esc")
    out = tmp_path / "out"
    command = [f"--videos={videos}", f"--esc={esc}", f"--out={out}", "--steps=4",
               "--batch-size=2", "--trainer-option=--workers=1",
               "--trainer-option=--no-progress", "--eval-option=--no-progress"]  # fmt: skip
    first = run_module("recipes.reproduce", *command, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]

    table = (out / "results.md").read_text()
    for row in ("SoundNet-8 distilled here (4 steps)", "SoundNet-8, untrained (random init)",
                "SVM on MFCC", "SoundNet-8, the authors' weights"):  # fmt: skip
        line = next(line for line in table.splitlines() if line.startswith(f"| {row} |"))
        assert "**" in line, line  # our accuracy, in bold
    assert "| SVM on MFCC | **" in table and "| 67.5 |" in table  # beside the paper's ESC-10
    results = json.loads((out / "results.json").read_text())
    assert set(results["accuracy"]) == {"student", "random", "mfcc", "authors"}
    assert all(0 <= a <= 1 for a in results["accuracy"].values())
    assert results["accuracy"]["authors"] > 1 / 10  # above chance on 10 classes
    assert (out / "results.png").stat().st_size > 0
    assert json.loads((out / "train" / "run.json").read_text())["end_step"] == 4
    assert (out / "shards" / "index.parquet").is_file()

    made = [out / "train" / "last.pt", *sorted((out / "shards" / "shards").glob("*.tar")),
            *sorted((out / "eval").glob("*/results.json"))]  # fmt: skip
    before = {p: p.stat().st_mtime_ns for p in made}
    second = run_module("recipes.reproduce", *command, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in made} == before  # nothing redone
    assert "0 to do" in second.stderr  # the pipeline found every shard task finished
    assert "nothing to do" in second.stderr  # the trainer was at its last step
    assert second.stdout.count("(done before)") == 4
    assert (out / "results.md").read_text() == table


@pytest.mark.parametrize("problem", ["no ESC folder", "one fold"])
def test_reproduce_refuses_an_unusable_esc_set_before_any_work(shared_esc10, tmp_path, problem):
    """Hours of shards and training would end in an evaluation that cannot run: refused first,
    in one line naming the folder and the problem."""
    esc, extra = tmp_path / "esc", []
    if problem == "one fold":  # leave-one-out over one fold has nothing to train on
        esc, extra = small_esc(shared_esc10, esc), ["--eval-option=--folds=1"]
    out = tmp_path / "out"
    done = run_module("recipes.reproduce", f"--videos={tmp_path / 'videos'}", f"--esc={esc}",
                      f"--out={out}", *extra, timeout=300)  # fmt: skip
    assert done.returncode != 0
    expected = "metadata file not found" if problem == "no ESC folder" else "at least two folds"
    assert f"reproduce: --esc: {esc}" in done.stderr and expected in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (out / "shards").exists()  # nothing was started
