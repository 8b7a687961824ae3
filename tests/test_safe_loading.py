"""A booby-trapped pickle on a weights path is refused, never executed."""

import pickle
from pathlib import Path

import pytest
import torch

from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from models.soundnet import soundnet5


class Trap:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickled_checkpoint_is_refused_without_running_its_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "soundnet-checkpoint", "version": 1, "trap": Trap(marker)}, path)
    with pytest.raises(CheckpointError, match="evil.pt: not a readable SoundNet checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(Trap(marker)))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)
    assert not marker.exists()


def test_torn_and_foreign_checkpoints_are_clear_errors(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(
        good, soundnet5({"objects": 3}), "soundnet5", {"objects": ["a", "b", "c"]}, step=7
    )
    assert load_checkpoint(good)["step"] == 7
    torn = tmp_path / "torn.pt"
    torn.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="torn.pt: not a readable"):
        load_checkpoint(torn)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a SoundNet checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
