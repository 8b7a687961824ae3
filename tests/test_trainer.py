"""The trainer end to end: real shards, real optimiser steps, real checkpoints, real torchrun.

The training run on the pipeline's real shards uses the paper's 20 s crops; the other runs use
5 s crops (SoundNet-8 maps a 5 s crop to one step for one teacher frame, as 20 s to four) so
that the whole file stays within a couple of minutes on two shared cores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from shardfactory import factory_output, make_pipeline_output  # noqa: F401  (a fixture)

from models.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from models.registry import build_model
from schemas import read_labels
from trainer import main as trainer_main

REPO = Path(__file__).resolve().parent.parent
FAST = ["--crop-seconds=5", "--workers=1", "--no-progress", "--no-tensorboard"]


def read_metrics(run: Path, kind: str) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r["kind"] == kind]


def run_module(*args: str, launcher: list[str] | None = None, timeout: int = 300) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [*(launcher or [sys.executable]), "-m", "trainer.main", *args]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr[-4000:]}"
    return done.stderr


@pytest.mark.slow
def test_training_lowers_the_loss_and_resumes_where_it_stopped(pipeline_output, tmp_path):
    """The SPEC's command line on shards the pipeline made from real videos: 40 steps at batch
    4 lower the loss; --resume --steps 50 continues at step 41 with the optimiser state."""
    run = tmp_path / "RUN"
    shards = sorted((pipeline_output / "shards").glob("*.tar"))
    pattern = f"{pipeline_output}/shards/shard-{{000000..{len(shards) - 1:06d}}}-0000.tar"
    common = [f"--shards={pattern}", f"--out={run}", "--batch-size=4", "--log-every=1",
              f"--val-shards={shards[-1]}", "--val-batches=2", *FAST,
              "--crop-seconds=20"]  # fmt: skip
    stderr = run_module(*common, "--steps=40", "--checkpoint-every=20", "--val-every=20",
                        "--progress", "--tensorboard")  # fmt: skip
    assert "samples_s=" in stderr  # the progress bar shows loss and samples/s
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))

    train = read_metrics(run, "train")
    assert [r["step"] for r in train] == list(range(1, 41))
    losses = [r["loss"] for r in train]
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.95 * first, f"the loss did not fall: {first:.3f} -> {last:.3f}"
    assert all(r["samples_per_s"] > 0 and r["skipped_shards"] == 0 for r in train)
    val = read_metrics(run, "val")
    assert [r["step"] for r in val] == [20, 40]
    for record in val:
        assert set(record["objects"]) == {"kl", "top1", "prior_kl", "prior_top1"}
        assert 0 <= record["objects"]["top1"] <= 1 and record["objects"]["prior_kl"] > 0

    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == 40 and ckpt["arch"] == "soundnet8"
    assert ckpt["heads"] == {"objects": 1000}
    labels = read_labels(pipeline_output / "labels" / "objects.txt")
    assert ckpt["labels"]["objects"] == labels
    assert ckpt["config"]["lr"] == 1e-3 and ckpt["config"]["beta1"] == 0.9
    assert {"model", "optimizer", "rng", "prior"} <= set(ckpt)
    assert (run / "step-20.pt").is_file() and (run / "step-40.pt").is_file()
    model = model_from_checkpoint(load_checkpoint(run / "last.pt"))  # what eval does
    assert model.features(torch.zeros(1, 22050), "pool5").shape[1] == 256

    run_module(*common, "--steps=50", "--resume", "--checkpoint-every=1000")
    train = read_metrics(run, "train")
    assert [r["step"] for r in train] == list(range(1, 51))  # 41..50 appended, nothing twice
    assert [r["samples"] for r in train] == [4 * step for step in range(1, 51)]  # since step 0
    resumed = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert resumed["step"] == 50
    adam = resumed["optimizer"]["state"][0]
    assert int(adam["step"]) == 50  # Adam's own count went on from 40: its state was restored
    # continuity: the resumed loss carries on from the trained model, not from a fresh one
    assert sum(r["loss"] for r in train[40:]) / 10 < first
    assert read_metrics(run, "val")[-1]["step"] == 50
    assert json.loads((run / "run.json").read_text())["start_step"] == 40


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_read_different_shards(factory_output, tmp_path):  # noqa: F811
    run = tmp_path / "RUN"
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--standalone",
                "--nproc-per-node=2"]  # fmt: skip
    bad = tmp_path / "shard-corrupt.tar"  # second in the list: rank 1's share (no resampling)
    bad.write_bytes(os.urandom(100_000))
    listed = "::".join([f"{factory_output}/shards/shard-000000-0000.tar", str(bad),
                        f"{factory_output}/shards/shard-{{000001..000003}}-0000.tar"])  # fmt: skip
    run_module(f"--shards={listed}", f"--out={run}", "--steps=3", "--batch-size=2",
               "--no-resample", "--checkpoint-every=0", "--log-every=1", *FAST,
               f"--val-shards={factory_output}", "--val-batches=1", launcher=torchrun)  # fmt: skip
    record = json.loads((run / "run.json").read_text())
    assert record["world_size"] == 2
    read = [set(r["shards_read"]) for r in sorted(record["ranks"], key=lambda r: r["rank"])]
    assert read[0] and read[1] and read[0].isdisjoint(read[1])
    assert sorted(p.name for p in run.glob("*.pt")) == ["last.pt", "step-3.pt"]  # one writer
    assert [r["step"] for r in read_metrics(run, "train")] == [1, 2, 3]
    train = read_metrics(run, "train")
    assert train[-1]["samples"] == 3 * 2 * 2  # both ranks' samples are counted
    assert load_checkpoint(run / "last.pt")["world_size"] == 2
    val = read_metrics(run, "val")
    assert len(val) == 1 and val[0]["samples"] == 2 * 2  # one batch from each rank, summed
    errors = read_metrics(run, "data_error")  # rank 1's, written by rank 0 into the one file
    assert [(e["url"], e["rank"]) for e in errors] == [(str(bad), 1)]


def test_a_corrupt_shard_in_the_list_is_skipped_logged_and_counted(factory_output, tmp_path):  # noqa: F811
    bad = tmp_path / "shard-corrupt.tar"
    bad.write_bytes(os.urandom(100_000))
    run = tmp_path / "RUN"
    # 5 samples > the 4 of one epoch of these shards: every shard is read at least once
    trainer_main.main([f"--shards={factory_output}/shards/shard-{{000002..000003}}-0000.tar::{bad}",
                       f"--out={run}", "--steps=5", "--batch-size=1", "--no-resample",
                       "--loss=l2", "--checkpoint-every=2", "--keep-checkpoints=2", *FAST,
                       f"--val-shards={factory_output}", "--val-batches=1"])  # fmt: skip
    errors = read_metrics(run, "data_error")
    assert errors and errors[0]["url"] == str(bad) and "ReadError" in errors[0]["error"]
    train = read_metrics(run, "train")
    assert train[-1]["step"] == 5 and train[-1]["skipped_shards"] >= 1
    assert load_checkpoint(run / "last.pt")["config"]["loss"] == "l2"
    assert sorted(p.name for p in run.glob("*.pt")) == ["last.pt", "step-4.pt", "step-5.pt"]
    val = read_metrics(run, "val")[-1]  # an l2 run's validation loss is its l2, said so
    per_head = [val[head]["l2"] for head in ("objects", "scenes")]
    assert val["loss"] == pytest.approx(sum(per_head) / 2) and val["objects"]["kl"] >= 0


def nan_at(step: int, monkeypatch) -> None:
    """Make the loss of one step NaN (as a diverging run would)."""
    calls = {"n": 0}
    real = trainer_main.distillation_loss

    def loss(*args, **kwargs):
        calls["n"] += 1
        value, parts = real(*args, **kwargs)
        return (value * float("nan"), parts) if calls["n"] == step else (value, parts)

    monkeypatch.setattr(trainer_main, "distillation_loss", loss)


def test_nonfinite_loss_stops_the_run_without_saving(factory_output, tmp_path, monkeypatch):  # noqa: F811
    nan_at(3, monkeypatch)
    run = tmp_path / "RUN"
    with pytest.raises(SystemExit, match="step 3: the loss is not finite.*last good checkpoint"):
        trainer_main.main([f"--shards={factory_output}", f"--out={run}", "--steps=5",
                           "--batch-size=1", "--checkpoint-every=1", "--arch=soundnet5", *FAST])  # fmt: skip
    assert load_checkpoint(run / "last.pt")["step"] == 2
    assert not (run / "step-3.pt").exists()


def test_nonfinite_loss_can_skip_the_step(factory_output, tmp_path, monkeypatch):  # noqa: F811
    nan_at(3, monkeypatch)  # the last step: the run still ends with its checkpoint
    run = tmp_path / "RUN"
    trainer_main.main([f"--shards={factory_output}", f"--out={run}", "--steps=3",
                       "--batch-size=1", "--on-nonfinite=skip", "--arch=soundnet5", *FAST,
                       "--precision=bf16"])  # fmt: skip
    assert [r["step"] for r in read_metrics(run, "skip")] == [3]
    assert [r["step"] for r in read_metrics(run, "train")] == [3]  # steps 1-2 averaged
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["step"] == 3 and int(ckpt["optimizer"]["state"][0]["step"]) == 2
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())


def test_init_from_a_checkpoint_and_heads_selection(factory_output, tmp_path):  # noqa: F811
    source = build_model("soundnet8", {"scenes": 6})
    save_checkpoint(tmp_path / "init.pt", source, "soundnet8", {"scenes": list("abcdef")}, step=9)
    run = tmp_path / "RUN"  # --resume with no last.pt yet: a fresh run, and --init is used
    trainer_main.main([f"--shards={factory_output}", f"--out={run}", "--steps=1", "--lr=0",
                       "--batch-size=2", "--heads=scenes", f"--init={tmp_path / 'init.pt'}",
                       "--resume", *FAST])  # fmt: skip
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["heads"] == {"scenes": 6} and ckpt["labels"]["scenes"][0] == "scenes_class_0"
    for name, tensor in source.state_dict().items():
        if not name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(ckpt["model"][name], tensor), name  # lr 0: still the init


def test_autoencoder_trains_from_the_same_shards(factory_output, tmp_path):  # noqa: F811
    run = tmp_path / "RUN"
    other_heads = tmp_path / "other-heads"  # it reads no teacher rows: any heads validate it
    make_pipeline_output(other_heads, 1, [5.0, 5.0], heads={"scenes": 6})
    trainer_main.main([f"--shards={factory_output}", f"--out={run}", "--arch=autoencoder",
                       "--steps=2", "--batch-size=2", f"--val-shards={other_heads}",
                       "--val-batches=1", *FAST])  # fmt: skip
    assert [r["step"] for r in read_metrics(run, "train")][-1] == 2
    val = read_metrics(run, "val")[-1]
    assert val["mse"] > 0 and val["silence_mse"] > 0
    payload = load_checkpoint(run / "last.pt")
    assert payload["arch"] == "autoencoder" and payload["heads"] == {}
    model = model_from_checkpoint(payload)
    assert model.features(torch.randn(1, 22050) * 50, "conv4").shape[1] == 128


def test_bad_options_are_clear_errors(factory_output, tmp_path, capsys):  # noqa: F811
    base = [f"--shards={factory_output}", f"--out={tmp_path / 'RUN'}", *FAST]
    for bad in ("--log-every=0", "--batch-size=0", "--grad-clip=-1", "--beta1=1", "--lr=nan"):
        with pytest.raises(SystemExit) as refused:  # argparse's usage error, before any work
            trainer_main.main([*base, bad])
        assert refused.value.code == 2 and bad.split("=")[0] in capsys.readouterr().err
    with pytest.raises(SystemExit, match="gives 1 output steps for 2 teacher frames"):
        trainer_main.main([*base, "--crop-seconds=10"])
    with pytest.raises(SystemExit, match="--heads \\['sky'\\]"):
        trainer_main.main([*base, "--heads=sky"])
    with pytest.raises(SystemExit, match="no shard files match"):
        trainer_main.main([*base[1:], f"--shards={tmp_path}/none-{{0..3}}.tar"])
    with pytest.raises(SystemExit, match="^--val-shards: .*no shard files match"):
        trainer_main.main([*base, f"--val-shards={tmp_path}/none.tar"])
    # validation shards without a trained head: refused at the start, not at the first
    # validation (step 1000 by default) with a crash or a 'perfect' score of 0 from 0 samples
    scenes_only = tmp_path / "scenes-only"
    make_pipeline_output(scenes_only, 1, [5.0], heads={"scenes": 6})
    with pytest.raises(SystemExit, match=r"^--val-shards: heads \{'scenes': 6\}.*\['objects'\]"):
        trainer_main.main([*base, f"--val-shards={scenes_only}"])
    relabelled = tmp_path / "relabelled"
    shutil.copytree(factory_output, relabelled)
    (relabelled / "labels" / "objects.txt").write_text("a\nb\nc\n")
    with pytest.raises(SystemExit, match="^--shards: .*objects.txt has 3 class names"):
        trainer_main.main([*base[1:], f"--shards={relabelled}"])


def test_resume_contract(factory_output, tmp_path, caplog):  # noqa: F811
    """What --resume promises: a new run never mixes into an earlier one's folder; the heads in
    their order; options changed on resuming apply (and are said); a torn metrics line (a kill
    mid-write) is dropped; a corrupt last.pt names the older checkpoints to go on from."""
    run = tmp_path / "RUN"
    base = [f"--shards={factory_output}", f"--out={run}", "--batch-size=1", "--arch=soundnet5",
            "--checkpoint-every=1", "--log-every=1", *FAST]  # fmt: skip
    trainer_main.main([*base, "--steps=2", "--heads=objects,scenes"])
    with pytest.raises(SystemExit, match="holds an earlier run's checkpoints.*--resume continues"):
        trainer_main.main([*base, "--steps=3"])
    with pytest.raises(SystemExit, match="same order: --heads=objects,scenes"):
        trainer_main.main([*base, "--steps=3", "--resume", "--heads=scenes,objects"])

    with (run / "metrics.jsonl").open("a") as metrics:
        metrics.write('{"kind": "train", "step": 3, "lo')  # killed while writing this line
    trainer_main.main([*base, "--steps=3", "--resume", "--heads=objects,scenes", "--beta1=0.5",
                       "--weight-decay=0.01"])  # fmt: skip
    assert [r["step"] for r in read_metrics(run, "train")] == [1, 2, 3]
    assert "options changed since" in caplog.text and "beta1 0.9 -> 0.5" in caplog.text
    group = load_checkpoint(run / "last.pt")["optimizer"]["param_groups"][0]
    assert group["betas"][0] == 0.5 and group["weight_decay"] == 0.01  # not the saved ones

    (run / "last.pt").unlink()  # a hard link of step-3.pt: a new, corrupt file in its place
    (run / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="--resume: .*last.pt.*Older checkpoints: .*step-3.pt"):
        trainer_main.main([*base, "--steps=4", "--resume", "--heads=objects,scenes"])


def test_a_skipped_overflow_leaves_no_inf_in_the_model(factory_output, tmp_path, monkeypatch):  # noqa: F811
    """An overflowing forward writes inf into BatchNorm's running stats before the loss is
    seen to be inf; skipping the step must also undo that, or the saved model is broken."""
    real, calls = trainer_main.data.batch_to, {"n": 0}

    def loud_at_step_2(batch, device):
        calls["n"] += 1
        wave, targets = real(batch, device)
        return (wave * 1e38 if calls["n"] == 2 else wave), targets

    monkeypatch.setattr(trainer_main.data, "batch_to", loud_at_step_2)
    run = tmp_path / "RUN"
    trainer_main.main([f"--shards={factory_output}", f"--out={run}", "--steps=3",
                       "--batch-size=2", "--on-nonfinite=skip", "--arch=soundnet5",
                       "--log-every=1", *FAST])  # fmt: skip
    assert [r["step"] for r in read_metrics(run, "skip")] == [2]
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["step"] == 3
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())
