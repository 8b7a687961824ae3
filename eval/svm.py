"""Linear SVMs on clip features over a dataset's own folds (SPEC.md section 2).

The SVM is liblinear's L2-regularised squared-hinge one-vs-rest problem with a regularised bias
term (`-s 1 -B 1`, scikit-learn's LinearSVC). `solver="lbfgs"` (the default) finds the same
optimum with torch's L-BFGS for all classes at once, tens of times faster than liblinear on
dense features, which is what lets C be chosen by inner cross-validation on ESC-50 in
seconds; `solver="liblinear"` runs scikit-learn's LinearSVC itself.

Two protocols turn a clip's [channels, frames] activations into SVM samples:

- `pooled` (default): one sample per clip, the mean and the max over time; standardised
  features; C chosen by inner cross-validation over the training folds.
- `paper` (the original eval_esc50.lua): every window of one tenth of a 10 s clip's frames is a
  sample (channel-major flattening, as Torch's view(-1)); liblinear's L2-regularised
  squared-hinge problem with a bias term (`-s 1 -B 1`) at C = 0.01 on raw features.

Either way a test clip is scored by the mean of its samples' decision values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import GridSearchCV, LeaveOneGroupOut, StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

PROTOCOLS = ("pooled", "paper")
SOLVERS = ("lbfgs", "liblinear")
C_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 1.0)
PAPER_C = 0.01
PAPER_WINDOW_FRACTION = 0.1  # -timewindow 1 over -sound_length 10


def pooled(feature: np.ndarray) -> np.ndarray:
    """[channels, frames] -> one sample [1, 2 * channels]: mean and max over time."""
    return np.concatenate([feature.mean(axis=1), feature.max(axis=1)])[None]


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


class SquaredHingeSVM(ClassifierMixin, BaseEstimator):
    """One-vs-rest linear SVM: per class k, minimise
    0.5 |w_k|^2 + C sum_i max(0, 1 - t_ik (w_k . [x_i, 1]))^2, t_ik = +1 for class k, else -1
    (LinearSVC's problem, bias included in w), for all classes at once with L-BFGS."""

    def __init__(self, C: float = 1.0, tol: float = 1e-5, max_iter: int = 1000):
        self.C = C
        self.tol = tol
        self.max_iter = max_iter

    def fit(self, X: np.ndarray, y: np.ndarray) -> SquaredHingeSVM:
        self.classes_, index = np.unique(y, return_inverse=True)
        x = torch.from_numpy(np.asarray(X, dtype=np.float32))
        x = torch.cat([x, torch.ones(len(x), 1)], dim=1)  # the bias feature (-B 1)
        columns = 1 if len(self.classes_) == 2 else len(self.classes_)  # binary: one problem
        targets = -torch.ones(len(x), columns)
        if columns == 1:
            targets[torch.from_numpy(index == 1), 0] = 1.0
        else:
            targets[torch.arange(len(x)), torch.from_numpy(index)] = 1.0
        w = torch.zeros(x.shape[1], columns, requires_grad=True)

        def objective() -> torch.Tensor:  # divided by n so tolerances do not depend on it
            slack = (1.0 - targets * (x @ w)).clamp(min=0.0)
            return (0.5 * w.pow(2).sum() + self.C * slack.pow(2).sum()) / len(x)

        with torch.no_grad():  # stop at a gradient `tol` times smaller than at w = 0
            start = (2 * self.C / len(x)) * (x.T @ targets).abs().max().item()
        optimizer = torch.optim.LBFGS(
            [w],
            lr=1.0,
            max_iter=self.max_iter,
            tolerance_grad=max(start * self.tol, 1e-12),
            tolerance_change=1e-12,
            history_size=20,
            line_search_fn="strong_wolfe",
        )

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = objective()
            loss.backward()
            return loss

        with torch.enable_grad():
            optimizer.step(closure)
        weights = w.detach().numpy()
        self.coef_, self.intercept_ = weights[:-1].T.copy(), weights[-1].copy()
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        scores = np.asarray(X, dtype=np.float32) @ self.coef_.T + self.intercept_
        return scores.ravel() if scores.shape[1] == 1 else scores

    def predict(self, X: np.ndarray) -> np.ndarray:
        scores = self.decision_function(X)
        index = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)
        return self.classes_[index]


def make_svm(C: float, standardize: bool, solver: str = "lbfgs") -> Pipeline:
    """liblinear's `-s 1` problem (L2-regularised squared hinge, bias term), one-vs-rest."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose from {SOLVERS}")
    steps = [StandardScaler()] if standardize else []
    if solver == "lbfgs":
        svm = SquaredHingeSVM(C=C)
    else:
        svm = LinearSVC(C=C, loss="squared_hinge", dual=True, fit_intercept=True, max_iter=20_000)
    return make_pipeline(*steps, svm)


@dataclass
class FoldResult:
    fold: int
    accuracy: float
    C: float
    y_true: np.ndarray = field(repr=False)
    y_pred: np.ndarray = field(repr=False)


def _inner_cv(groups: np.ndarray, labels: np.ndarray) -> LeaveOneGroupOut | StratifiedKFold:
    """The training folds themselves (no clip's windows on both sides); three stratified splits
    when only one training fold is left."""
    if len(np.unique(groups)) >= 2:
        return LeaveOneGroupOut()
    return StratifiedKFold(n_splits=min(3, np.bincount(labels).min()), shuffle=True, random_state=0)


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
    standardize: bool = True,
    n_jobs: int | None = None,
    solver: str = "lbfgs",
) -> list[FoldResult]:
    """Leave one official fold out at a time; C fixed, or chosen by inner CV when None."""
    counts = np.array([len(s) for s in samples])
    X = np.concatenate(samples).astype(np.float32, copy=False)
    y = np.repeat(labels, counts)
    groups = np.repeat(folds, counts)
    clip_ids = np.repeat(np.arange(len(samples)), counts)
    results = []
    for fold in np.unique(folds):
        train, test = groups != fold, groups == fold
        if C is None:
            svm = make_svm(1.0, standardize, solver)
            param = f"{svm.steps[-1][0]}__C"
            search = GridSearchCV(
                svm,
                {param: list(C_GRID)},
                cv=_inner_cv(groups[train], y[train]),
                n_jobs=n_jobs,
            )
            search.fit(X[train], y[train], groups=groups[train])
            model, chosen = search.best_estimator_, float(search.best_params_[param])
        else:
            model, chosen = make_svm(C, standardize, solver).fit(X[train], y[train]), float(C)
        scores = _clip_scores(model.decision_function(X[test]), clip_ids[test])
        y_pred = model.classes_[scores.argmax(axis=1)]
        y_true = labels[folds == fold]
        results.append(
            FoldResult(int(fold), float(np.mean(y_pred == y_true)), chosen, y_true, y_pred)
        )
    return results
