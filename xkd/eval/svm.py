"""Linear SVM on frozen features, the authors' main evaluation (docs/method.md §Evaluation, B16).

scikit-learn's LinearSVC with the authors' settings (squared hinge, L2 penalty, one-vs-rest,
intercept, `max_iter` 1000) is trained on every row (one clip in one crop) with its video's label;
a test video's decision values are averaged over its rows and ranked.

The regularisation constant C is chosen by k-fold cross-validation on the training split alone,
folds grouped by video (all rows of a video in one fold) and stratified by class; the chosen C is
refitted on the whole training split and scored on the test split once: the number we stand behind.
The authors instead keep the C of the grid that scores best on the test split; that number is
computed too, from the same fits, and reported beside ours as "svm-authors"."""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from xkd.eval.feature_file import FeatureFileError
from xkd.eval.inputs import EvalPair
from xkd.eval.scoring import average_per_video, topk_accuracy

AUTHORS_C_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # their ESC-50 and Kinetics-Sound grid


@dataclass
class SvmSettings:
    c_grid: tuple[float, ...] = AUTHORS_C_GRID
    cv_folds: int = 3  # each C costs cv_folds + 1 fits
    max_iter: int = 1000  # the authors' (scikit-learn's default)
    seed: int = 0
    jobs: int = 1  # fits run in parallel (liblinear is single-threaded)


@dataclass
class SvmOutcome:
    """Per C of the grid: cross-validated top-1 on TRAIN, and TEST top-1/top-5 of the fit on all of TRAIN."""
    c_grid: list[float]
    cv_top1: list[float]
    test_top1: list[float]
    test_top5: list[float | None]
    cv_folds: int
    not_converged: list[float] = field(default_factory=list)  # C values whose liblinear hit max_iter

    @property
    def cv_index(self) -> int:
        """Best cross-validated top-1; a tie goes to the smaller C (the stronger regularisation)."""
        return int(np.argmax(self.cv_top1))  # argmax keeps the first maximum, the grid is sorted ascending

    @property
    def authors_index(self) -> int:
        """The authors' choice: best top-1 on the test split."""
        return int(np.argmax(self.test_top1))


def decision_scores(model, features: np.ndarray, num_classes: int) -> np.ndarray:
    """(rows, num_classes) decision values; a class the model never saw gets -inf (never predicted)."""
    raw = model.decision_function(features)
    scores = np.full((len(features), num_classes), -np.inf)
    if raw.ndim == 1:  # two classes: one decision value, positive for classes_[1]
        scores[:, model.classes_[0]], scores[:, model.classes_[1]] = -raw, raw
    else:
        scores[:, model.classes_] = raw
    return scores


def _fit_and_score(x_fit, y_fit, x_score, c: float, settings: SvmSettings, num_classes: int):
    """Train one LinearSVC; returns (decision values on x_score, converged)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    model = LinearSVC(C=c, max_iter=settings.max_iter, random_state=settings.seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(x_fit, y_fit)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return decision_scores(model, x_score, num_classes), converged


def cross_validation_folds(pair: EvalPair, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(fit rows, held-out rows) of each fold of TRAIN: grouped by video, stratified by class."""
    from sklearn.model_selection import StratifiedGroupKFold

    train = pair.train
    videos = len(np.unique(train.video_index))
    if folds < 2 or folds > videos:
        raise FeatureFileError(f"{train.path}: {folds}-fold cross-validation needs 2 to {videos} folds "
                               f"(the training split has {videos} videos)")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # "the least populated class has fewer members than n_splits": fine here
        warnings.simplefilter("ignore", UserWarning)
        splits = list(splitter.split(train.features, train.row_labels(), groups=train.video_index))
    for fit_rows, _ in splits:
        if len(np.unique(train.row_labels()[fit_rows])) < 2:
            raise FeatureFileError(f"{train.path}: a cross-validation fold would train on a single class; "
                                   f"use fewer folds (--cv-folds) or more training videos")
    return splits


def evaluate_svm(pair: EvalPair, settings: SvmSettings = SvmSettings(),
                 progress: Callable[[int], object] | None = None) -> SvmOutcome:
    """Fit the grid on the CV folds of TRAIN and on all of TRAIN; score held-out and TEST videos.

    progress(total) returns a tqdm-like bar (update(1) per finished fit), or None for no progress."""
    from joblib import Parallel, delayed

    if pair.multi_label:
        raise FeatureFileError(f"{pair.train.path}: multi-label features; the SVM takes single-label sets "
                               f"(use `xkd eval linear`, which scores mAP)")
    train, test = pair.train, pair.test
    grid = sorted(float(c) for c in settings.c_grid)
    folds = cross_validation_folds(pair, settings.cv_folds, settings.seed)
    y = train.row_labels()
    # one task per (C, fold) plus one per C on all of TRAIN; the test rows are scored only by the latter
    tasks = [(c, fold) for c in grid for fold in range(len(folds))] + [(c, None) for c in grid]

    def arguments(c, fold):  # arrays as arguments, not in a closure: joblib memory-maps large ones for workers
        if fold is None:
            return train.features, y, test.features, c, settings, pair.num_classes
        fit_rows, held_rows = folds[fold]
        return train.features[fit_rows], y[fit_rows], train.features[held_rows], c, settings, pair.num_classes

    bar = progress(len(tasks)) if progress else None
    results = {}
    runner = Parallel(n_jobs=settings.jobs, return_as="generator")
    for key, result in zip(tasks, runner(delayed(_fit_and_score)(*arguments(c, fold)) for c, fold in tasks)):
        results[key] = result
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    outcome = SvmOutcome(c_grid=grid, cv_top1=[], test_top1=[], test_top5=[], cv_folds=len(folds))
    for c in grid:
        held_scores = np.concatenate([results[(c, fold)][0] for fold in range(len(folds))])
        held_rows = np.concatenate([held for _, held in folds])
        videos, per_video = average_per_video(held_scores, train.video_index[held_rows])
        outcome.cv_top1.append(topk_accuracy(per_video, train.labels[videos], 1))
        test_scores, converged = results[(c, None)]
        videos, per_video = average_per_video(test_scores, test.video_index)
        outcome.test_top1.append(topk_accuracy(per_video, test.labels[videos], 1))
        outcome.test_top5.append(topk_accuracy(per_video, test.labels[videos], 5, pair.train_classes))
        if not (converged and all(results[(c, fold)][1] for fold in range(len(folds)))):
            outcome.not_converged.append(c)
    return outcome
