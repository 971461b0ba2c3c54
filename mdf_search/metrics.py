"""Classification metrics over a whole evaluation split (pure numpy).

Both sides of the package use them, so they belong to neither: the trial loop (``train/``) computes every
split's metrics here, and the report (``report/``) its type breakdown and synthetic studies. The module
imports nothing from ``mdf_search``.

Why a module of our own instead of averaging per-batch numbers: recall, F1 and balanced accuracy do not
decompose over batches, and ``DistributedSampler`` pads the last batch of every rank by repeating samples,
so the gathered predictions hold duplicates. The loop gathers ``(sample index, prediction, label)`` from
every rank, calls :func:`dedupe_predictions`, then the functions here, once per split.

Conventions (each one tested, and the same as scikit-learn's, so numbers can be cross-checked):

- ``y_true`` / ``y_pred`` are integer class indices into ``class_names``.
- **Zero division is 0.** A class that is never predicted has precision 0; a class with no true samples
  has recall 0; F1 is 0 when precision + recall is 0 (scikit-learn's ``zero_division=0``).
- **Macro averages** (``macro_recall``, ``macro_f1``) run over the *present* classes: those that occur in
  ``y_true`` or in ``y_pred`` (scikit-learn's default ``labels``, the union of both). A class absent from
  both has no defined recall or F1 and would only drag the average towards 0, which on a small split that
  happens to miss a rare class would read as a model failure. A class predicted but never true counts
  (its recall is 0 by the zero-division rule): predicting a class that is not there is an error.
- **Balanced accuracy** is the mean recall over the classes that occur in ``y_true`` (scikit-learn's
  ``balanced_accuracy_score``).
- Per-class keys ``recall/<class>``, ``f1/<class>`` and ``support/<class>`` exist for *every* class of
  ``class_names`` (0.0 where undefined, with ``support`` 0 to tell the reader why), so every trial of a
  study has the same columns.
- ``confusion[i][j]`` counts samples of true class ``i`` predicted as ``j`` (rows true, columns predicted).
- **AUROC** (when class probabilities are given) is one-vs-rest per class, ``auroc/<class>``, with tied
  scores counted as half (the Mann-Whitney statistic, as ``sklearn.metrics.roc_auc_score``). A class with
  no positive or no negative sample in the split has no ROC curve: its AUROC is NaN, and the macro
  ``auroc`` averages the classes that have one (NaN when none has).

:func:`balanced_class_weights` is the training-side statistic of ``optim.class_weights: balanced``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

Metrics = dict[str, float | list[list[int]]]

# The study's metric and mode when none is given (``mdf-search train``, a report without spec.yaml):
# validation macro-F1, maximised. Their one home, read by ``train.selection`` and ``report``.
DEFAULT_METRIC = "val/macro_f1"
DEFAULT_MODE = "max"


def _check(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true)
    p = np.asarray(y_pred)
    if t.ndim != 1 or p.ndim != 1 or t.shape != p.shape:
        raise ValueError(
            f"y_true and y_pred must be 1-D of equal length, but got shapes {t.shape} and {p.shape}"
        )
    if t.size == 0:
        raise ValueError("no samples: metrics of an empty split are undefined")
    for name, arr in (("y_true", t), ("y_pred", p)):
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name} must hold integer class indices, but has dtype {arr.dtype}")
        if arr.min() < 0 or arr.max() >= n_classes:
            raise ValueError(
                f"{name} must hold class indices in [0, {n_classes}), but got values in "
                f"[{arr.min()}, {arr.max()}]"
            )
    return t.astype(np.int64), p.astype(np.int64)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``(n_classes, n_classes)`` counts; rows are true classes, columns predicted classes."""
    t, p = _check(y_true, y_pred, n_classes)
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _per_class(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Recall, precision, F1 and support per class, with zero division giving 0."""
    tp = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1).astype(np.float64)
    predicted = confusion.sum(axis=0).astype(np.float64)

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.divide(num, den, out=np.zeros_like(num), where=den > 0)

    recall = ratio(tp, support)
    precision = ratio(tp, predicted)
    f1 = ratio(2 * precision * recall, precision + recall)
    return recall, precision, f1, support


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values`` with ties given the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    new_group = np.concatenate(([True], ordered[1:] != ordered[:-1]))
    starts = np.flatnonzero(new_group)
    ends = np.append(starts[1:], len(values))  # exclusive
    group = np.cumsum(new_group) - 1  # tie group of each sorted position
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = ((starts + 1 + ends) / 2.0)[group]
    return ranks


def binary_auroc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``positive``; NaN without both classes."""
    pos = np.asarray(positive, dtype=bool)
    n_pos = int(pos.sum())
    n_neg = pos.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(np.asarray(scores, dtype=np.float64))
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auroc_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """``auroc`` (macro over classes with a defined AUROC) and ``auroc/<class>`` (one-vs-rest)."""
    names = list(class_names)
    t = np.asarray(y_true)
    p = np.asarray(probs)
    if p.ndim != 2 or p.shape != (t.shape[0], len(names)):
        raise ValueError(
            f"probs must have shape (samples, classes) = ({t.shape[0]}, {len(names)}), but got {p.shape}"
        )
    per_class = [binary_auroc(t == i, p[:, i]) for i in range(len(names))]
    defined = [v for v in per_class if not np.isnan(v)]
    out = {"auroc": float(np.mean(defined)) if defined else float("nan")}
    out.update({f"auroc/{name}": value for name, value in zip(names, per_class, strict=True)})
    return out


def balanced_class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Cross-entropy weights ``n / (k * n_class)`` from the (training) labels, scikit-learn's "balanced".

    ``k`` counts the classes present in ``labels``; a class absent from them gets weight 0 (no training
    target has it, so the weight never applies). Fit on the training split only (README, "What a result means": nothing fitted sees validation or test).
    """
    y = np.asarray(labels, dtype=np.int64)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array of class indices, but got shape {y.shape}")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must be in [0, {n_classes}), but got values in [{y.min()}, {y.max()}]")
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = counts > 0
    return np.divide(y.size, present.sum() * counts, out=np.zeros(n_classes), where=present)


def classification_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    class_names: Sequence[str],
    probs: np.ndarray | None = None,
) -> Metrics:
    """Accuracy, balanced accuracy, macro recall/F1, per-class recall/F1/support and the confusion matrix,
    plus macro and per-class AUROC when ``probs`` (samples x classes) is given.

    See the module docstring for which classes enter each average and the zero-division rule.
    """
    names = list(class_names)
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be distinct, but got {names}")
    confusion = confusion_matrix(y_true, y_pred, len(names))
    recall, _, f1, support = _per_class(confusion)
    in_true = support > 0
    present = in_true | (confusion.sum(axis=0) > 0)
    out: Metrics = {
        "accuracy": float(np.trace(confusion) / confusion.sum()),
        "balanced_accuracy": float(recall[in_true].mean()),
        "macro_recall": float(recall[present].mean()),
        "macro_f1": float(f1[present].mean()),
    }
    for i, name in enumerate(names):
        out[f"recall/{name}"] = float(recall[i])
        out[f"f1/{name}"] = float(f1[i])
        out[f"support/{name}"] = float(support[i])
    if probs is not None:
        out.update(auroc_metrics(y_true, probs, names))
    out["confusion"] = confusion.tolist()
    return out


def prefixed(metrics: Mapping[str, float | list[list[int]]], prefix: str) -> Metrics:
    """``{"accuracy": ...}`` → ``{"val/accuracy": ...}`` (a trailing ``/`` on ``prefix`` is optional)."""
    head = prefix.rstrip("/")
    return {f"{head}/{key}": value for key, value in metrics.items()}


def dedupe_predictions(
    indices: np.ndarray, preds: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep each sample index once (its first occurrence) and sort by index.

    ``DistributedSampler`` makes every rank's share equal by repeating samples from the start of the
    split, so gathered predictions count some samples twice; metrics must count each once. ``preds`` may
    be class indices ``(N,)`` or scores ``(N, C)``: rows follow their index.
    """
    idx = np.asarray(indices)
    p = np.asarray(preds)
    y = np.asarray(labels)
    if idx.ndim != 1 or len(p) != len(idx) or len(y) != len(idx):
        raise ValueError(
            f"indices must be 1-D and preds/labels must have as many rows, but got lengths "
            f"{idx.shape}, {len(p)}, {len(y)}"
        )
    _, first = np.unique(idx, return_index=True)  # sorted unique indices, first position of each
    return idx[first], p[first], y[first]


def metrics_for_tasks(
    pred_by_task: Mapping[str, np.ndarray],
    label_by_task: Mapping[str, np.ndarray],
    classes_by_task: Mapping[str, Sequence[str]],
    prob_by_task: Mapping[str, np.ndarray] | None = None,
) -> Metrics:
    """Metrics of every head: plain keys for one task, ``<task>/<key>`` keys for two (``task=dual``).

    One task keeps plain keys so a study's leaderboard column (``val/accuracy``) means the same thing
    whatever the task; with two heads the namespace says which one.
    """
    tasks = list(classes_by_task)
    if set(pred_by_task) != set(tasks) or set(label_by_task) != set(tasks):
        raise ValueError(
            f"pred_by_task, label_by_task and classes_by_task must name the same tasks, but got "
            f"{sorted(pred_by_task)}, {sorted(label_by_task)} and {sorted(tasks)}"
        )
    out: Metrics = {}
    for task in tasks:
        probs = prob_by_task.get(task) if prob_by_task is not None else None
        metrics = classification_metrics(
            label_by_task[task], pred_by_task[task], classes_by_task[task], probs
        )
        out.update(metrics if len(tasks) == 1 else prefixed(metrics, task))
    return out


def type_breakdown(
    y_true_disease: np.ndarray,
    y_pred_disease: np.ndarray,
    disease_types: Mapping[str, str],
    class_names: Sequence[str],
) -> dict[str, float]:
    """Disease-head metrics restricted to each disease type (e.g. acquired vs inherited).

    The paper's claim is that multi-depth fusion helps inherited diseases most, so the per-type view is
    what decides it. For each type ``t`` of ``disease_types`` (class name → type):

    - ``<t>/macro_recall``, ``<t>/macro_f1``: averages over the type's classes present in ``y_true`` or
      ``y_pred`` (the same convention as :func:`classification_metrics`), with precision taken from the
      whole confusion matrix, so predicting an acquired disease for an inherited one costs both types;
    - ``<t>/accuracy``: the fraction of the type's samples whose disease is predicted exactly (0 with no
      samples);
    - ``<t>/support``: the number of the type's samples.
    """
    names = list(class_names)
    missing = [name for name in names if name not in disease_types]
    if missing:
        raise ValueError(f"disease_types has no type for classes {missing}; map every class to a type")
    confusion = confusion_matrix(y_true_disease, y_pred_disease, len(names))
    recall, _, f1, support = _per_class(confusion)
    present = (support > 0) | (confusion.sum(axis=0) > 0)
    out: dict[str, float] = {}
    for kind in sorted(set(disease_types[name] for name in names)):
        members = np.array([disease_types[name] == kind for name in names])
        chosen = members & present
        count = float(support[members].sum())
        correct = float(np.diag(confusion)[members].sum())
        out[f"{kind}/macro_recall"] = float(recall[chosen].mean()) if chosen.any() else 0.0
        out[f"{kind}/macro_f1"] = float(f1[chosen].mean()) if chosen.any() else 0.0
        out[f"{kind}/accuracy"] = correct / count if count else 0.0
        out[f"{kind}/support"] = count
    return out
