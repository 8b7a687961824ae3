"""The authors' sound8.npy (SPEC.md section 7): read safely, mapped onto our SoundNet-8.

    arrays = read_sound8_npy("sound8.npy")   # numpy arrays only: any other pickled global is refused
    model = soundnet8_from_sound8(arrays)    # heads objects (conv8) and scenes (conv8_2)

The file is an .npy holding one pickled Python 2 dict: conv1..conv7 -> {weights [k, 1, in, out],
biases, gamma, beta, mean, var}; conv8 and conv8_2 -> {weights [8, 1, 1024, C], biases}.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib import format as npy_format
from torch import nn

from models.soundnet import SOUNDNET8, SoundNet
from models.weights import AUTHORS_HEADS, PretrainedError

BN_EPS = 1e-5  # the authors' BatchNorm epsilon (Torch7's default)
# sound8.npy's name of each of our heads, in AUTHORS_HEADS order
SOUND8_HEAD_KEYS = {"objects": "conv8", "scenes": "conv8_2"}


def _numpy_reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits numpy's array reconstruction and nothing else: any other global (os.system,
    builtins.eval, ...) is refused before it can be called."""

    def __init__(self, file: Any, source: str):
        super().__init__(file, encoding="latin1")  # a Python 2 pickle
        self.source = source
        reconstruct = _numpy_reconstruct()
        self.allowed = {
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("numpy.core.multiarray", "_reconstruct"): reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise PretrainedError(
                f"{self.source}: refusing to unpickle global {module}.{name} (only numpy arrays "
                "are allowed in a weights file; this file may be malicious)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise PretrainedError(f"{self.source}: refusing a persistent id in the pickle")


def read_sound8_npy(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """The arrays of the authors' sound8.npy (a pickled dict in an .npy), read safely."""
    path = Path(path)
    if not path.is_file():
        raise PretrainedError(f"{path}: no such file")
    try:
        with path.open("rb") as f:
            version = npy_format.read_magic(f)
            read_header = {
                (1, 0): npy_format.read_array_header_1_0,
                (2, 0): npy_format.read_array_header_2_0,
            }.get(version)
            if read_header is None:
                raise PretrainedError(f"{path}: unsupported .npy version {version}")
            shape, _, dtype = read_header(f)
            if dtype != np.dtype(object) or shape != ():
                raise PretrainedError(
                    f"{path}: expected one pickled object (shape (), dtype object), "
                    f"got shape {shape} dtype {dtype}"
                )
            obj = NumpyOnlyUnpickler(f, str(path)).load()
    except PretrainedError:
        raise
    except Exception as err:  # truncated or garbled files raise many types
        raise PretrainedError(
            f"{path}: not a readable sound8.npy ({type(err).__name__}: {err})"
        ) from err
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    return _check_sound8(obj, str(path))


def _check_sound8(obj: Any, source: str) -> dict[str, dict[str, np.ndarray]]:
    body = [spec.name for spec in SOUNDNET8.blocks]
    wanted = {name: ("weights", "biases", "gamma", "beta", "mean", "var") for name in body}
    wanted |= {key: ("weights", "biases") for key in SOUND8_HEAD_KEYS.values()}
    if not isinstance(obj, dict):
        raise PretrainedError(f"{source}: expected a dict of layers, got {type(obj).__name__}")
    for layer, keys in wanted.items():
        params = obj.get(layer)
        if not isinstance(params, dict) or any(
            not isinstance(params.get(k), np.ndarray) for k in keys
        ):
            raise PretrainedError(f"{source}: layer {layer!r} lacks arrays {list(keys)}")
    return {
        layer: {k: np.asarray(obj[layer][k], np.float32) for k in keys}
        for layer, keys in wanted.items()
    }


def _conv_weight_from_tf(weights: np.ndarray, conv: nn.Conv1d, where: str) -> torch.Tensor:
    """[k, 1, in, out] (TensorFlow HWIO, time along H) -> Conv1d [out, in, k]."""
    expected = (conv.kernel_size[0], 1, conv.in_channels, conv.out_channels)
    if weights.shape != expected:
        raise PretrainedError(f"{where}: weights shape {weights.shape}, expected {expected}")
    return torch.from_numpy(np.ascontiguousarray(weights[:, 0].transpose(2, 1, 0)))


def soundnet8_from_sound8(
    arrays: Mapping[str, Mapping[str, np.ndarray]], source: str = "sound8.npy"
) -> SoundNet:
    """Our SoundNet-8 with the authors' heads (objects = conv8, scenes = conv8_2) from
    sound8.npy's arrays; eval mode."""
    model = SoundNet(*SOUNDNET8, AUTHORS_HEADS)
    state: dict[str, torch.Tensor] = {}
    for spec in model.block_specs:
        layer = arrays[spec.name]
        conv, bn = model.body[spec.name][0], model.body[spec.name][1]
        prefix = f"body.{spec.name}"
        state[f"{prefix}.0.weight"] = _conv_weight_from_tf(
            layer["weights"], conv, f"{source}:{spec.name}"
        )
        for ours, theirs in (("0.bias", "biases"), ("1.weight", "gamma"), ("1.bias", "beta")):
            state[f"{prefix}.{ours}"] = torch.from_numpy(layer[theirs])
        state[f"{prefix}.1.running_mean"] = torch.from_numpy(layer["mean"])
        state[f"{prefix}.1.running_var"] = torch.from_numpy(layer["var"])
        state[f"{prefix}.1.num_batches_tracked"] = bn.num_batches_tracked
    for head, key in SOUND8_HEAD_KEYS.items():
        conv = model.heads[head]
        state[f"heads.{head}.weight"] = _conv_weight_from_tf(
            arrays[key]["weights"], conv, f"{source}:{key}"
        )
        state[f"heads.{head}.bias"] = torch.from_numpy(arrays[key]["biases"])
    load_state(model, state, source)
    return model.eval()


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load the authors' tensors (all of them, nothing else) with their BatchNorm epsilon."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise PretrainedError(f"{source}: weights do not fit the model: {err}") from err
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d):
            module.eps = BN_EPS
