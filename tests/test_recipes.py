"""`make reproduce` end to end on clips it never saw: videos -> shards -> a student -> the table
of four rows beside the paper's; the same command again redoes nothing."""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eval import run as eval_run
from eval.report import write_json
from models import fetch
from models.checkpoint import save_checkpoint
from recipes import cluster_demo, demo, reproduce
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
    expected = "no such folder" if problem == "no ESC folder" else "at least two folds"
    assert f"reproduce: --esc: {esc}" in done.stderr and expected in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()  # nothing was started, not even the output folder


def refusal(main, argv: list[str], capsys) -> str:
    """What `main(argv)` said when it refused to start (argparse's stderr or the exit line)."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code not in (0, None)
    said = capsys.readouterr().err
    return said + (exit_.value.code if isinstance(exit_.value.code, str) else "")


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--steps=0", "argument --steps: 0: must be at least 1"),
        ("--batch-size=-2", "argument --batch-size: -2: must be at least 1"),
        ("--trainer-option=--wrokers=1", "--trainer-option: unrecognized arguments: --wrokers=1"),
        ("--trainer-option=--lr=abc", "--trainer-option: argument --lr: 'abc': not a number"),
        ("--eval-option=--seconds=0", "argument --seconds: 0"),
    ],
)
def test_reproduce_refuses_bad_trainer_options_before_any_work(
    shared_esc10, tmp_path, capsys, monkeypatch, option, message
):
    """Checked by the trainer's own parser before the pipeline stage, not an hour into it."""
    started = []
    monkeypatch.setattr(reproduce, "make_shards", started.append)
    out = tmp_path / "out"
    argv = [f"--videos={tmp_path}", f"--esc={small_esc(shared_esc10, tmp_path / 'esc')}",
            f"--out={out}", option]  # fmt: skip
    assert message in refusal(reproduce.main, argv, capsys)
    assert not started and not out.exists()


def test_the_mfcc_row_leaves_out_the_networks_eval_options():
    mfcc, student = (next(r for r in reproduce.rows(Path("out"), 4) if r.slug == slug)
                     for slug in ("mfcc", "student"))  # fmt: skip
    options = ["--layer=conv5", "--folds=1,2", "--seconds", "5", "--C=0.01"]
    assert reproduce.for_row(mfcc, options) == ["--folds=1,2", "--C=0.01"]
    assert reproduce.for_row(student, options) == options


def test_reproduce_redoes_an_evaluation_whose_eval_options_changed(tmp_path, monkeypatch, capsys):
    computed = []

    def fake_evaluate(options: argparse.Namespace) -> dict:
        computed.append(options.folds)
        return {"accuracy_mean": 0.5, "layer": "mfcc"}

    def fake_write_outputs(folder: Path, results: dict) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "results.json", results)

    monkeypatch.setattr(eval_run, "evaluate", fake_evaluate)
    monkeypatch.setattr(eval_run, "write_outputs", fake_write_outputs)
    out = tmp_path / "out"
    mfcc = next(row for row in reproduce.rows(out, 4) if row.slug == "mfcc")

    def evaluate(*eval_option: str) -> str:
        args = argparse.Namespace(out=out, esc=tmp_path / "esc", eval_option=list(eval_option))
        assert reproduce.evaluate(args, mfcc) == {"accuracy_mean": 0.5, "layer": "mfcc"}
        return capsys.readouterr().out

    evaluate()
    assert computed == [None]
    assert "(done before)" in evaluate()  # the same options: read back
    said = evaluate("--folds=1,2")
    assert computed == [None, [1, 2]]
    assert "evaluating again (eval options changed: folds None -> [1, 2])" in said, said
    # progress and parallelism change no number: not redone for them
    assert "(done before)" in evaluate("--folds=1, 2", "--no-progress", "--jobs=2")
    assert computed == [None, [1, 2]]
    (out / "eval" / "mfcc" / reproduce.EVAL_OPTIONS_FILE).unlink()  # results of an older version
    assert "evaluating again (no reproduce-options.json beside them)" in evaluate("--folds=1,2")
    assert len(computed) == 3


def test_reproduce_table_states_what_the_checkpoint_was_trained_with(tmp_path):
    """Not this command's --steps/--batch-size: a resumed run stops at the checkpoint's step."""
    model = torch.nn.Linear(2, 2)
    model.head_sizes = {}
    checkpoint = tmp_path / "train" / "last.pt"
    checkpoint.parent.mkdir()
    save_checkpoint(checkpoint, model, "soundnet8", {}, step=7, config={"batch_size": 3})
    trained = reproduce.trained_with(checkpoint)
    assert trained == (7, 3)
    args = argparse.Namespace(videos=tmp_path / "videos", steps=100, batch_size=16)
    rows = reproduce.rows(tmp_path, trained[0])
    table = reproduce.table(args, {row.slug: (row, None) for row in rows}, trained)
    assert "SoundNet-8 distilled for 7 steps of 3 samples" in table
    assert "| SoundNet-8 distilled here (7 steps) | not run |" in table
    assert "100 steps" not in table and "16 samples" not in table


def test_demo_without_its_samples_says_where_to_get_them(tmp_path, monkeypatch, capsys):
    """An installed wheel has no samples/: the message says what to do, and nothing runs."""
    monkeypatch.setattr(demo, "SAMPLES", tmp_path / "no-samples")
    monkeypatch.setattr(demo.run, "main", lambda argv: pytest.fail(f"the pipeline ran: {argv}"))
    said = refusal(demo.main, [f"--output={tmp_path / 'out'}"], capsys)
    assert said.startswith("usage: python -m recipes.demo"), said
    assert "source checkout" in said and "git clone" in said and "--input DIR" in said
    assert "pipeline.run" not in said


@pytest.mark.parametrize("workers", ["0", "-1"])
def test_cluster_demo_refuses_fewer_than_one_worker(capsys, workers):
    said = refusal(cluster_demo.main, [f"--workers={workers}"], capsys)
    assert f"python -m recipes.cluster_demo: error: argument --workers: {workers}: must be" in said


@pytest.mark.parametrize(
    ("main", "prog"),
    [
        (demo.main, "python -m recipes.demo"),
        (cluster_demo.main, "python -m recipes.cluster_demo"),
        (reproduce.main, "python -m recipes.reproduce"),
        (fetch.main, "python -m models.fetch"),
        (eval_run.parse_args, "python -m eval.run"),
    ],
)
def test_help_names_the_command_and_keeps_the_docstring_layout(capsys, main, prog):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"usage: {prog} ")
    # the docstring as the source spells it (__doc__ has already lost a `\` continuation)
    written = Path(sys.modules[main.__module__].__file__).read_text().split('"""')[1]
    for line in written.splitlines():
        assert line in shown.splitlines(), line
    assert "SPEC.md" not in shown  # not in this repository
