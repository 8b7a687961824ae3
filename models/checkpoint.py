"""Our checkpoint format: a plain dict of tensors and Python primitives, so that it loads with
`torch.load(path, weights_only=True)` (nothing is unpickled), written atomically.

    {"format": "soundnet-checkpoint", "version": 1,
     "arch": "soundnet8", "heads": {"objects": 1000}, "labels": {"objects": [...names]},
     "model": state_dict, "step": int, ...trainer state (optimizer, rng, config)}

The labels are the weights' own: per head its class names in output order, which also size
the heads the checkpoint is rebuilt with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.registry import build_model
from schemas.io import atomic_path

FORMAT = "soundnet-checkpoint"
VERSION = 1
# what rebuilding the model reads: checked on loading, not met as a KeyError later
REQUIRED = {"arch": str, "heads": dict, "model": dict}


class CheckpointError(ValueError):
    """A checkpoint cannot be read; the message names the file and the problem."""


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    arch: str,
    labels: dict[str, list[str]],
    **state: Any,
) -> None:
    """Write model + metadata + any extra trainer state atomically (write, then rename)."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "heads": dict(model.head_sizes),
        "labels": {h: list(names) for h, names in labels.items()},
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **state,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint safely (weights_only=True) and check that it is ours."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for torn, foreign or pickled files
        raise CheckpointError(
            f"{path}: not a readable SoundNet checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no details'})"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a SoundNet checkpoint (no format={FORMAT!r} field)")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {payload.get('version')}, expected {VERSION}"
        )
    for key, kind in REQUIRED.items():
        if not isinstance(payload.get(key), kind):
            raise CheckpointError(f"{path}: no {key!r} field (a {kind.__name__})")
    return payload


def model_from_checkpoint(payload: dict[str, Any], path: str | Path = "checkpoint") -> nn.Module:
    """Build the architecture the checkpoint (read from `path`) names and load its weights
    (eval mode)."""
    arch, heads = payload["arch"], payload["heads"]
    try:
        model = build_model(arch, heads)
    except (ValueError, TypeError) as err:  # an unknown arch, a head size that is no size
        raise CheckpointError(f"{path}: {err}") from err
    try:
        model.load_state_dict(payload["model"])
    except (RuntimeError, TypeError) as err:  # tensors of other shapes or names
        # torch's first line only names the class; the lines after it, each mismatch
        problems = [line.strip().rstrip(".") for line in str(err).splitlines()[1:]]
        problems = [line for line in problems if line] or [str(err)]
        if len(problems) > 3:
            problems = [*problems[:3], f"and {len(problems) - 3} more"]
        raise CheckpointError(
            f"{path}: its weights do not fit {arch} with heads {heads}: {'; '.join(problems)}"
        ) from err
    return model.eval()
