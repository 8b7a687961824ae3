"""Linear SVMs on clip features over a dataset's own folds (SPEC.md section 2).

Two protocols turn a clip's [channels, frames] activations into SVM samples:

- `pooled` (default): one sample per clip, the mean and the max over time; standardised
  features; a linear-kernel SVM (libsvm through scikit-learn's SVC: hinge loss, one-vs-one),
  C chosen by inner cross-validation over the training folds (C = 1, with a warning, where
  only one training fold is left and a class has a single clip in it).
- `paper` (the original eval_esc50.lua): every window of one tenth of a 10 s clip's frames is a
  sample (channel-major flattening, as Torch's view(-1)); liblinear's L2-regularised
  squared-hinge SVM, one-vs-rest, with a bias term (`-s 1 -B 1`), C = 0.01, raw features.

Either way a test clip is scored by the mean of its samples' decision values.

Why libsvm for the default: one-vs-one splits ESC-50 into 1225 problems of 64 clips each, and
the whole ESC-10 per-layer table with inner CV takes ~15 s. liblinear's one-vs-rest solvers
need minutes per layer on the same pooled features (hundreds of passes over every sample for
each class: 8 minutes for an ESC-50-sized set); it runs where the protocol is the paper's.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.model_selection import GridSearchCV, LeaveOneGroupOut, StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

from eval.features import mean_max

PROTOCOLS = ("pooled", "paper")
C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
FALLBACK_C = 1.0  # libsvm's default: where no inner cross-validation can choose C
PAPER_C = 0.01
PAPER_WINDOW_FRACTION = 0.1  # -timewindow 1 over -sound_length 10


def pooled(feature: np.ndarray) -> np.ndarray:
    """[channels, frames] -> one sample [1, 2 * channels]: mean and max over time."""
    return mean_max(feature)[None]


def paper_window(frames: int) -> int:
    return max(1, math.ceil(PAPER_WINDOW_FRACTION * frames))


def windows(feature: np.ndarray, width: int) -> np.ndarray:
    """[channels, frames] -> every window of `width` frames, [frames - width + 1, channels * width]."""
    view = np.lib.stride_tricks.sliding_window_view(feature, width, axis=1)  # [C, n, width]
    return np.ascontiguousarray(view.transpose(1, 0, 2)).reshape(view.shape[1], -1)


def clip_samples(features: Sequence[np.ndarray], protocol: str) -> list[np.ndarray]:
    """Per clip, its SVM samples [n_i, dims] under `protocol`."""
    if protocol == "pooled":
        return [pooled(f) for f in features]
    if protocol == "paper":
        # one window width for all clips, from the shortest (the 10 s tiling) clip
        width = paper_window(min(f.shape[1] for f in features))
        return [windows(f, width) for f in features]
    raise ValueError(f"unknown protocol {protocol!r}; choose from {PROTOCOLS}")


def make_svm(C: float, protocol: str) -> Pipeline:
    """The protocol's SVM. The paper's liblinear `-s 1` problem is solved by the primal Newton
    method of `-s 2` (`dual=False`), the same SVM: dual coordinate descent crawls on these
    features, separable or not (ESC-50 pool5 windows: no convergence in 255 s against 78 s for
    the primal, per fold; minutes against a second on conv8)."""
    if protocol == "paper":
        svm = LinearSVC(C=C, loss="squared_hinge", dual=False, fit_intercept=True, max_iter=20_000)
        return make_pipeline(svm)
    return make_pipeline(StandardScaler(), LinearKernel(), SVC(C=C, kernel="precomputed"))


class LinearKernel(TransformerMixin, BaseEstimator):
    """Samples -> their dot products with the training samples (float64): the linear kernel
    computed once by BLAS, so libsvm looks kernel values up instead of computing each as a
    dot product of thousands of dimensions (conv8: 7x faster, the same SVM)."""

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> LinearKernel:
        self.train_ = np.asarray(X, np.float64)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, np.float64) @ self.train_.T


@dataclass
class FoldResult:
    fold: int
    accuracy: float
    C: float
    y_true: np.ndarray = field(repr=False)
    y_pred: np.ndarray = field(repr=False)


def _inner_cv(
    fold: int, folds: np.ndarray, labels: np.ndarray
) -> LeaveOneGroupOut | StratifiedKFold | None:
    """How C is chosen where `fold` is scored, from the clips' folds and labels: over the other
    folds themselves (no clip's windows on both sides); up to three stratified splits when only
    one other fold is left; None, with a warning, when a class has a single clip there."""
    train = folds != fold
    if len(np.unique(folds[train])) >= 2:
        return LeaveOneGroupOut()
    fewest = int(np.unique(labels[train], return_counts=True)[1].min())  # present classes only
    if fewest >= 2:
        return StratifiedKFold(n_splits=min(3, fewest), shuffle=True, random_state=0)
    warnings.warn(
        f"fold {fold}: training fold {folds[train][0]} has only 1 clip of a class, too few for "
        f"an inner cross-validation to choose C: C = {FALLBACK_C:g} used (--C sets it)",
        stacklevel=2,
    )
    return None


def _clip_scores(scores: np.ndarray, clip_ids: np.ndarray) -> np.ndarray:
    """Mean decision values per clip, in increasing clip id."""
    if scores.ndim == 1:  # binary problems give one column
        scores = np.stack([-scores, scores], axis=1)
    uniq, inverse = np.unique(clip_ids, return_inverse=True)
    sums = np.zeros((len(uniq), scores.shape[1]))
    np.add.at(sums, inverse, scores)
    return sums / np.bincount(inverse)[:, None]


def cross_validate(
    samples: Sequence[np.ndarray],
    labels: np.ndarray,
    folds: np.ndarray,
    C: float | None = None,
    protocol: str = "pooled",
    n_jobs: int | None = None,
) -> list[FoldResult]:
    """Leave one official fold out at a time; C fixed, or chosen by inner CV when None."""
    counts = np.array([len(s) for s in samples])
    X = np.concatenate(samples).astype(np.float32, copy=False)
    y = np.repeat(labels, counts)
    groups = np.repeat(folds, counts)
    clip_ids = np.repeat(np.arange(len(samples)), counts)

    def one_fold(fold: int) -> FoldResult:
        train, test = groups != fold, groups == fold
        cv = _inner_cv(fold, folds, labels) if C is None else None
        if cv is not None:
            svm = make_svm(1.0, protocol)
            param = f"{svm.steps[-1][0]}__C"
            search = GridSearchCV(svm, {param: list(C_GRID)}, cv=cv, n_jobs=n_jobs)
            inner_groups = groups[train] if isinstance(cv, LeaveOneGroupOut) else None
            search.fit(X[train], y[train], groups=inner_groups)
            model, chosen = search.best_estimator_, float(search.best_params_[param])
        else:
            chosen = FALLBACK_C if C is None else float(C)
            model = make_svm(chosen, protocol).fit(X[train], y[train])
        scores = _clip_scores(model.decision_function(X[test]), clip_ids[test])
        y_pred = model.classes_[scores.argmax(axis=1)]
        y_true = labels[folds == fold]
        return FoldResult(int(fold), float(np.mean(y_pred == y_true)), chosen, y_true, y_pred)

    if C is None:  # the inner searches run their fits in parallel
        return [one_fold(fold) for fold in np.unique(folds)]
    # A fixed C: the outer folds in parallel (libsvm and liblinear release the GIL).
    jobs = Parallel(n_jobs=n_jobs or -1, prefer="threads")
    return jobs(delayed(one_fold)(fold) for fold in np.unique(folds))
