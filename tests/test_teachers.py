"""Teachers: real bundled weights on real photos, CSAIL-layout Places365 checkpoints the tests
write themselves, torchvision weights from a file or the torch cache, refusals, and the Beam
RunInference handler in a real DirectRunner pipeline."""

from __future__ import annotations

import copy
import hashlib
import io
import pickle
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
import torch
import torchvision
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import BeamAssertException, assert_that
from PIL import Image
from sklearn.datasets import load_sample_image

from pipeline.run import local_runner
from pipeline.teachers import (
    TEACHERS,
    TeacherError,
    clean_state_dict,
    preprocess,
    resolve_teacher,
    teacher_probabilities,
    torch_device,
)
from pipeline.teachers.handler import TeacherModelHandler
from schemas.labels import LabelsError, parse_labels
from tests.conftest import REPO, load_teacher

PALACE_LIKE = {"palace", "bell cote", "dome", "church", "castle", "monastery", "stupa", "mosque"}


def photo(name: str) -> np.ndarray:
    """An sklearn sample photo as the decoder hands frames over: shorter side 256, centre 224."""
    image = Image.fromarray(load_sample_image(name))
    scale = 256 / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
    left, top = (image.width - 224) // 2, (image.height - 224) // 2
    return np.asarray(image.crop((left, top, left + 224, top + 224)))


@pytest.fixture(scope="module")
def lite0():
    return load_teacher("objects", "efficientnet_lite0")


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    return np.stack([photo("china.jpg"), photo("flower.jpg")])


def probabilities(model: torch.nn.Module, frames: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(preprocess(frames)).softmax(dim=1).numpy()


def top(labels: list[str], row: np.ndarray, k: int) -> list[str]:
    return [labels[i] for i in np.argsort(-row)[:k]]


def places_categories(path: Path, n: int = 365) -> list[str]:
    """A categories_places365.txt in the release's layout, with a few real multi-part names."""
    names = ["airfield", "apartment_building/outdoor", "bedroom"]
    names += [f"class_{i:03d}/indoor" for i in range(len(names), n)]
    # the release lists "/a/airfield 0", "/a/apartment_building/outdoor 8", ...
    lines = [f"/{name[0]}/{name} {i}" for i, name in enumerate(names)]
    path.write_text("\n".join(lines) + "\n")
    return names


def csail_checkpoint(path: Path, model: torch.nn.Module, arch: str, **save_args) -> None:
    """A checkpoint as train_placesCNN.py saved it: DataParallel keys inside an epoch dict."""
    state_dict = {f"module.{k}": v for k, v in model.state_dict().items()}
    record = {"epoch": 90, "arch": arch, "state_dict": state_dict, "best_prec1": torch.tensor(54.7)}
    torch.save(record, path, **save_args)


# --- the bundled ImageNet teacher -------------------------------------------------------------


def test_efficientnet_lite0_classifies_real_photos(lite0, photos):
    china, flower = probabilities(lite0.model, photos)
    assert top(lite0.labels, china, 1)[0] in PALACE_LIKE, top(lite0.labels, china, 5)
    assert "palace" in top(lite0.labels, china, 5)
    assert top(lite0.labels, flower, 1) == ["daisy"], top(lite0.labels, flower, 5)


def test_imagenet_metadata(lite0):
    assert (lite0.head, lite0.name, lite0.label_set) == (
        "objects",
        "efficientnet_lite0",
        "imagenet1k",
    )
    assert len(lite0.labels) == len(set(lite0.labels)) == 1000
    assert lite0.labels[:2] == ["tench", "goldfish"] and lite0.labels[985] == "daisy"
    assert re.fullmatch(r"[0-9a-f]{64}", lite0.weights_sha256)
    data = Path(lite0.weights_path).read_bytes()
    assert lite0.weights_sha256 == hashlib.sha256(data).hexdigest()
    again = resolve_teacher("objects", "efficientnet_lite0")
    assert again.weights_sha256 == lite0.weights_sha256 and again.labels == lite0.labels
    head = lite0.head_info()
    assert (head.teacher, head.num_classes, head.label_set) == (
        "efficientnet_lite0",
        1000,
        "imagenet1k",
    )
    assert not lite0.model.training


def test_the_teacher_runs_channels_last_and_agrees_with_the_default_layout(lite0, photos):
    """build_teacher lays every convolution out channels-last (the fast layout on the CPU, and
    the frames' own); its probabilities are the default layout's up to float rounding."""
    kernels = [p for p in lite0.model.parameters() if p.dim() == 4]
    assert kernels and all(p.is_contiguous(memory_format=torch.channels_last) for p in kernels)
    default_layout = copy.deepcopy(lite0.model).to(memory_format=torch.contiguous_format)
    assert not default_layout._conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = default_layout(preprocess(photos).contiguous()).softmax(dim=1).numpy()
    rows = teacher_probabilities(list(photos), lite0.model, "cpu")
    np.testing.assert_allclose(np.stack(rows), expected, atol=1e-5)


def test_preprocess_normalises_like_imagenet(photos):
    x = preprocess(photos)
    assert x.shape == (2, 3, 224, 224) and x.dtype == torch.float32
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = ((photos / 255.0 - mean) / std).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(x.numpy(), expected, atol=1e-5)
    assert x.is_contiguous(memory_format=torch.channels_last)  # the teachers' layout
    read_only = photos.copy()
    read_only.flags.writeable = False  # as some decoders return them
    assert torch.equal(preprocess(read_only), x)
    with pytest.raises(ValueError, match="uint8"):
        preprocess(photos.astype(np.float32))
    with pytest.raises(ValueError, match="224"):
        preprocess(photos[:, :200])


# --- Places365 checkpoints in the CSAIL release layout ----------------------------------------


def test_places365_resnet18_checkpoint_loads(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=365).eval()
    weights = tmp_path / "resnet18_places365.pth.tar"
    # the 2017 release predates torch's zip format: write the legacy one
    csail_checkpoint(weights, reference, "resnet18", _use_new_zipfile_serialization=False)
    names = places_categories(tmp_path / "categories_places365.txt")

    teacher = load_teacher("scenes", "places365_resnet18", weights=str(weights))
    assert (teacher.label_set, teacher.weights_path) == ("places365", str(weights))
    assert teacher.labels == names and teacher.labels[1] == "apartment_building/outdoor"
    assert teacher.weights_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()

    frames = np.random.default_rng(0).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = reference(preprocess(frames))
        logits = teacher.model(preprocess(frames))
    assert logits.shape == (3, 365)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)


def test_places365_densenet161_old_key_names(tmp_path):
    reference = torchvision.models.densenet161(num_classes=365)
    state_dict = reference.state_dict()
    # pre-0.3 torchvision names ("denselayer1.norm.1.weight" where it now says "norm1"), and
    # no num_batches_tracked: BatchNorm counts batches only since torch 0.4.1
    old = {
        re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k): v
        for k, v in state_dict.items()
        if not k.endswith("num_batches_tracked")
    }
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    weights = tmp_path / "densenet161_places365.pth.tar"
    torch.save(
        {"arch": "densenet161", "state_dict": {f"module.{k}": v for k, v in old.items()}}, weights
    )
    labels = tmp_path / "elsewhere.txt"
    places_categories(labels)

    teacher = load_teacher(
        "scenes", "places365_densenet161", weights=str(weights), labels=str(labels)
    )
    loaded = teacher.model.state_dict()
    assert loaded.keys() == state_dict.keys()
    assert all(torch.equal(loaded[k], v) for k, v in state_dict.items())


def test_clean_state_dict_names():
    # AlexNet/VGG were trained with only `features` in DataParallel
    keys = {
        "module.conv1.weight": "conv1.weight",
        "features.module.0.weight": "features.0.weight",
        "module.features.denseblock4.denselayer24.conv.2.weight": "features.denseblock4.denselayer24.conv2.weight",
        "module.features.denseblock1.denselayer1.norm.1.running_var": "features.denseblock1.denselayer1.norm1.running_var",
        "module.features.denseblock2.denselayer3.norm.2.num_batches_tracked": "features.denseblock2.denselayer3.norm2.num_batches_tracked",
        "features.norm5.weight": "features.norm5.weight",
        "classifier.6.bias": "classifier.6.bias",
    }
    cleaned = clean_state_dict({k: torch.zeros(1) for k in keys})
    assert list(cleaned) == list(keys.values())


def test_parse_labels_formats():
    assert parse_labels("/a/airfield 0\n/b/bakery/shop 1\n") == ["airfield", "bakery/shop"]
    assert parse_labels("/b/bakery/shop 1\n/a/airfield 0\n") == ["airfield", "bakery/shop"]
    assert parse_labels("tench\ngoldfish\n\n") == ["tench", "goldfish"]
    with pytest.raises(LabelsError, match="indices"):
        parse_labels("/a/airfield 0\n/b/bakery 0\n")
    with pytest.raises(LabelsError, match="cats.txt: '/airfield 1' is not a Places line"):
        parse_labels("/a/abbey 0\n/airfield 1\n", where="cats.txt")


def test_a_bad_categories_file_is_a_teacher_error_naming_it(tmp_path):
    weights = tmp_path / "resnet18_places365.pth.tar"
    weights.write_bytes(b"not read: the labels fail first")
    labels = tmp_path / "categories_places365.txt"
    labels.write_text("/a/airfield 0\n/b/bakery 0\n")
    with pytest.raises(TeacherError, match=f"{labels}.*indices"):
        resolve_teacher("scenes", "places365_resnet18", weights=str(weights))


def test_whole_model_pickle_is_refused(tmp_path):
    weights = tmp_path / "whole_resnet18_places365.pth.tar"
    torch.save(torchvision.models.resnet18(num_classes=365), weights)
    places_categories(tmp_path / "categories_places365.txt")
    with pytest.raises(TeacherError) as caught:
        load_teacher("scenes", "places365_resnet18", weights=str(weights))
    message = str(caught.value)
    assert str(weights) in message and "refused" in message and "run code" in message
    assert "torchvision.models.resnet.ResNet" in message  # names what it would have built
    assert "resnet18_places365.pth.tar" in message and "state_dict" in message


def test_places365_missing_files_say_what_to_get(tmp_path):
    for weights in (None, str(tmp_path / "resnet18_places365.pth.tar")):
        with pytest.raises(
            TeacherError, match=r"resnet18_places365\.pth\.tar.*--scenes-weights=PATH"
        ):
            resolve_teacher("scenes", "places365_resnet18", weights=weights)
    weights = tmp_path / "resnet18_places365.pth.tar"
    csail_checkpoint(weights, torchvision.models.resnet18(num_classes=365), "resnet18")
    with pytest.raises(TeacherError, match="categories_places365.txt is not beside"):
        resolve_teacher("scenes", "places365_resnet18", weights=str(weights))


def test_wrong_checkpoints_are_clear_errors(tmp_path):
    places_categories(tmp_path / "categories_places365.txt")
    resnet50 = tmp_path / "resnet50_places365.pth.tar"
    csail_checkpoint(resnet50, torchvision.models.resnet18(num_classes=365), "resnet50")
    with pytest.raises(TeacherError, match="does not hold resnet50 weights with 365 classes"):
        load_teacher("scenes", "places365_resnet50", weights=str(resnet50))
    with pytest.raises(TeacherError, match="checkpoint of 'resnet50'.*'resnet18'"):
        load_teacher("scenes", "places365_resnet18", weights=str(resnet50))
    truncated = tmp_path / "truncated.pth.tar"
    truncated.write_bytes(resnet50.read_bytes()[:5000])
    with pytest.raises(TeacherError, match="not a readable PyTorch checkpoint"):
        load_teacher("scenes", "places365_resnet18", weights=str(truncated))
    with pytest.raises(TeacherError, match="places365_densenet161.*places365_resnet18"):
        resolve_teacher("scenes", "places365_vgg16")
    with pytest.raises(TeacherError, match="head name"):
        resolve_teacher("objects.v2", "efficientnet_lite0")


# --- torchvision ImageNet architectures -------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to reach the network fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_torchvision_resnet18_from_file_and_cache(tmp_path, monkeypatch, no_network):
    torch.manual_seed(1)
    reference = torchvision.models.resnet18().eval()
    weights = tmp_path / "my-resnet18.pth"
    torch.save(reference.state_dict(), weights)
    frames = np.random.default_rng(1).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = reference(preprocess(frames))

    teacher = load_teacher("objects", "resnet18", weights=str(weights))
    assert teacher.label_set == "imagenet1k" and len(teacher.labels) == 1000
    with torch.no_grad():
        torch.testing.assert_close(teacher.model(preprocess(frames)), expected, rtol=0, atol=1e-5)

    # no weights given: the file torchvision's loader would have cached, never a download
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(TeacherError) as caught:
        load_teacher("objects", "resnet18")
    message = str(caught.value)
    assert str(cached) in message and "resnet18-f37072fd.pth (https://" in message
    assert "--objects-weights=PATH" in message

    cached.parent.mkdir(parents=True)
    cached.write_bytes(weights.read_bytes())
    teacher = load_teacher("objects", "resnet18")
    assert teacher.weights_path == str(cached)
    with torch.no_grad():
        torch.testing.assert_close(teacher.model(preprocess(frames)), expected, rtol=0, atol=1e-5)


def test_registry_names():
    imagenet = {"efficientnet_lite0", "resnet18", "resnet50", "vgg16", "alexnet"}
    places = {
        "places365_resnet18",
        "places365_resnet50",
        "places365_alexnet",
        "places365_densenet161",
    }
    assert set(TEACHERS) == imagenet | places
    assert {TEACHERS[n].label_set for n in imagenet} == {"imagenet1k"}
    assert {(TEACHERS[n].label_set, TEACHERS[n].num_classes) for n in places} == {
        ("places365", 365)
    }


# --- Beam RunInference ------------------------------------------------------------------------


def test_handler_in_a_direct_runner_pipeline(lite0, photos):
    rng = np.random.default_rng(2)
    frames = list(photos) + list(rng.integers(0, 256, (3, 224, 224, 3), dtype=np.uint8))
    expected = probabilities(lite0.model, np.stack(frames))

    # resolved once (no model built), then a handler small enough to ship to workers
    info = resolve_teacher("objects", "efficientnet_lite0")
    assert (info.weights_sha256, info.labels) == (lite0.weights_sha256, lite0.labels)
    handler = TeacherModelHandler(info, min_batch_size=2, max_batch_size=3)
    assert len(pickle.dumps(handler)) < 100_000
    # called directly, as the pipeline's shard writer does
    direct = handler.probabilities(frames, handler.load_model())
    np.testing.assert_allclose(direct, expected, rtol=0, atol=1e-4)

    def matches(results):
        got = dict(results)
        if sorted(got) != list(range(len(frames))):
            raise BeamAssertException(f"keys {sorted(got)}")
        for key, probs in got.items():
            if probs.dtype != np.float32 or probs.shape != (1000,):
                raise BeamAssertException(f"frame {key}: {probs.dtype} {probs.shape}")
            if (probs < 0).any() or abs(float(probs.sum()) - 1) > 1e-4:
                raise BeamAssertException(f"frame {key}: not a distribution")
            np.testing.assert_allclose(probs, expected[key], rtol=0, atol=1e-4)

    options = PipelineOptions()  # the DirectRunner's engine, as pipeline.run runs it
    with beam.Pipeline(runner=local_runner(options), options=options) as p:
        outputs = (
            p | beam.Create(list(enumerate(frames))) | RunInference(KeyedModelHandler(handler))
        )
        assert_that(outputs, matches)


def test_device(lite0, photos):
    assert torch_device("GPU") == torch.device("cuda") and torch_device("cpu").type == "cpu"
    with pytest.raises(TeacherError, match="unknown device"):
        torch_device("tpu0")
    if not torch.cuda.is_available():
        with pytest.raises(TeacherError, match="no CUDA device"):
            load_teacher("objects", "efficientnet_lite0", device="cuda")
        return
    teacher = load_teacher("objects", "efficientnet_lite0", device="cuda")
    got = teacher_probabilities(list(photos), teacher.model, "cuda")
    np.testing.assert_allclose(np.stack(got), probabilities(lite0.model, photos), atol=1e-4)


def test_a_teacher_resolves_builds_and_runs_where_beam_is_not_installed(lite0, photos, tmp_path):
    """bench/device.py measures the teacher alone on a lent GPU machine that has neither Beam
    nor PyAV: resolving, building and running it must import neither, and give the same rows."""
    frames = tmp_path / "frames.npy"
    np.save(frames, photos)
    code = textwrap.dedent(f"""
        import importlib.abc, sys
        class Hidden(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("apache_beam", "av"):
                    raise ModuleNotFoundError(f"No module named {{name!r}} (hidden by the test)")
        sys.meta_path.insert(0, Hidden())
        import numpy as np
        from pipeline.teachers import build_teacher, resolve_teacher, teacher_probabilities
        info = resolve_teacher("objects", "efficientnet_lite0")
        rows = teacher_probabilities(list(np.load({str(frames)!r})), build_teacher(info), "cpu")
        np.save(sys.stdout.buffer, np.stack(rows))
        print(info.weights_sha256, file=sys.stderr)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert proc.stderr.decode().split()[-1] == lite0.weights_sha256
    got = np.load(io.BytesIO(proc.stdout))
    np.testing.assert_allclose(got, probabilities(lite0.model, photos), atol=1e-5)
