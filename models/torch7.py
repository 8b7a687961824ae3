"""The authors' Torch7 release (`soundnet8_final.t7`, `soundnet5_final.t7`, SPEC.md section 2),
read with torchfile, which parses the file without running anything in it.

    model, labels = load_t7("soundnet8_final.t7")      # labels: {head: class names}
    model, weights = t7_weights("soundnet8_final.t7")  # weights: models.weights.Weights

An nn.Sequential of 1 x k SpatialConvolution, SpatialBatchNormalization, ReLU and
SpatialMaxPooling modules, then a ConcatTable of the head convolutions (the release's two:
1000 ImageNet objects, 401 Places2 scenes, in that order). `nn.*` and `cudnn.*` class names
both work.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.sound8 import BN_EPS, load_state
from models.soundnet import ARCHITECTURES
from models.weights import (
    AUTHORS_HEADS,
    PretrainedError,
    Weights,
    authors_categories,
)


def _typename(obj: Any) -> str:
    name = obj.torch_typename() if hasattr(obj, "torch_typename") else type(obj).__name__
    return name.decode() if isinstance(name, bytes) else str(name)


def _walk_t7(module: Any) -> Iterable[Any]:
    """The leaf modules of a Torch7 container tree, in order; ConcatTable kept whole."""
    kind = _typename(module).rsplit(".", 1)[-1]
    if kind in ("Sequential",) and module.modules is not None:
        for child in module.modules:
            yield from _walk_t7(child)
    else:
        yield module


def _t7_array(module: Any, field: str, where: str) -> np.ndarray:
    value = module[field]
    if not isinstance(value, np.ndarray) or value.size == 0:
        raise PretrainedError(f"{where}: no {field} tensor")
    return np.array(value, dtype=np.float32)  # copies out of torchfile's strided views


def _t7_conv(module: Any, conv: nn.Conv1d, where: str) -> dict[str, torch.Tensor]:
    """A 1 x k SpatialConvolution (time along H or W) -> Conv1d weight [out, in, k] and bias."""
    kw, kh = int(module.kW or 1), int(module.kH or 1)
    time_on_h = kw == 1  # the release feeds [1, 1, samples, 1]: time is the height
    kernel, stride, pad = (
        (kh, module.dH, module.padH) if time_on_h else (kw, module.dW, module.padW)
    )
    got = (
        int(module.nInputPlane),
        int(module.nOutputPlane),
        kernel,
        int(stride or 1),
        int(pad or 0),
    )
    want = (
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size[0],
        conv.stride[0],
        conv.padding[0],
    )
    if got != want:
        raise PretrainedError(
            f"{where}: convolution (in, out, kernel, stride, pad) = {got}, the model wants {want}"
        )
    weight = _t7_array(module, "weight", where).reshape(got[1], got[0], kh, kw)
    weight = weight[:, :, :, 0] if time_on_h else weight[:, :, 0, :]
    return {
        "weight": torch.from_numpy(np.ascontiguousarray(weight)),
        "bias": torch.from_numpy(_t7_array(module, "bias", where)),
    }


def _t7_batchnorm(module: Any, where: str) -> dict[str, torch.Tensor]:
    mean = _t7_array(module, "running_mean", where)
    eps = float(module.eps or BN_EPS)
    if isinstance(module.running_var, np.ndarray) and module.running_var.size:
        var = _t7_array(module, "running_var", where)
    else:  # old nn stored running_std = 1 / sqrt(var + eps)
        var = 1.0 / np.square(_t7_array(module, "running_std", where)) - eps
    return {
        "weight": torch.from_numpy(_t7_array(module, "weight", where)),
        "bias": torch.from_numpy(_t7_array(module, "bias", where)),
        "running_mean": torch.from_numpy(mean),
        "running_var": torch.from_numpy(var.astype(np.float32)),
    }


def load_t7(path: str | Path) -> tuple[nn.Module, dict[str, list[str]]]:
    """The model (eval mode) and its heads' class names from a Torch7 release file."""
    model, weights = t7_weights(path)
    return model, weights.labels


def t7_weights(path: str | Path) -> tuple[nn.Module, Weights]:
    """The model (eval mode) and its Weights from a Torch7 release file."""
    import torchfile  # only .t7 readers need it

    path = Path(path)
    if not path.is_file():
        raise PretrainedError(f"{path}: no such Torch7 file")
    try:
        root = torchfile.load(str(path))
    except Exception as err:
        raise PretrainedError(
            f"{path}: not a readable Torch7 file ({type(err).__name__}: {err})"
        ) from err
    leaves = list(_walk_t7(root))
    kinds = [_typename(m).rsplit(".", 1)[-1] for m in leaves]
    convs = [m for m, k in zip(leaves, kinds, strict=True) if k.startswith("SpatialConvolution")]
    bns = [m for m, k in zip(leaves, kinds, strict=True) if k.endswith("BatchNormalization")]
    concat = [m for m, k in zip(leaves, kinds, strict=True) if k == "ConcatTable"]
    if len(concat) != 1:
        raise PretrainedError(
            f"{path}: expected one ConcatTable of head convolutions, found {len(concat)}"
        )
    head_convs = list(concat[0].modules or [])
    arch = {len(a.blocks): name for name, a in ARCHITECTURES.items()}.get(len(convs))
    if arch is None or len(bns) != len(convs):
        raise PretrainedError(
            f"{path}: {len(convs)} body convolutions and {len(bns)} batch norms fit no known "
            f"architecture ({ {n: len(a.blocks) for n, a in ARCHITECTURES.items()} })"
        )
    if len(head_convs) != len(AUTHORS_HEADS):
        raise PretrainedError(
            f"{path}: {len(head_convs)} head convolutions; the release has "
            f"{len(AUTHORS_HEADS)} ({', '.join(AUTHORS_HEADS)})"
        )
    # the release's heads and their class names: the model is built to fit them, and a file
    # whose head convolutions differ is refused below
    weights = Weights(arch, authors_categories(), str(path))
    model = weights.build()
    state: dict[str, torch.Tensor] = {}
    for spec, conv, bn in zip(model.block_specs, convs, bns, strict=True):
        where = f"{path}:{spec.name}"
        for key, value in _t7_conv(conv, model.body[spec.name][0], where).items():
            state[f"body.{spec.name}.0.{key}"] = value
        for key, value in _t7_batchnorm(bn, where).items():
            state[f"body.{spec.name}.1.{key}"] = value
        state[f"body.{spec.name}.1.num_batches_tracked"] = torch.tensor(0)
    for name, conv in zip(weights.categories, head_convs, strict=True):
        for key, value in _t7_conv(conv, model.heads[name], f"{path}:{name}").items():
            state[f"heads.{name}.{key}"] = value
    load_state(model, state, str(path))
    return model.eval(), weights
