"""Whole-split classification metrics: hand-computed cases, scikit-learn agreement, dedupe, key layout,
AUROC, and the balanced class weights of ``optim.class_weights``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import sklearn.metrics as skm
from sklearn.utils.class_weight import compute_class_weight

from mdf_search.metrics import (
    auroc_metrics,
    balanced_class_weights,
    binary_auroc,
    classification_metrics,
    dedupe_predictions,
    metrics_for_tasks,
    prefixed,
    type_breakdown,
)

CLASSES = ("a", "b", "c", "d")


def test_hand_computed_with_a_never_predicted_class_and_an_absent_class() -> None:
    # a: 3 true, predicted a,a,b. b: 2 true, predicted b,b. c: 1 true, predicted a (never predicted).
    # d: absent from both -> excluded from the macro averages, per-class 0 with support 0.
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 1, 0])
    m = classification_metrics(y_true, y_pred, CLASSES)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # recall: a 2/3, b 2/2, c 0/1. precision: a 2/3, b 2/3, c 0 (never predicted -> 0).
    assert m["recall/a"] == pytest.approx(2 / 3)
    assert m["recall/b"] == pytest.approx(1.0)
    assert m["recall/c"] == 0.0
    f1_a, f1_b = 2 / 3, 2 * (2 / 3) * 1 / (2 / 3 + 1)
    assert m["f1/a"] == pytest.approx(f1_a)
    assert m["f1/b"] == pytest.approx(f1_b)
    assert m["f1/c"] == 0.0
    assert (m["recall/d"], m["f1/d"], m["support/d"]) == (0.0, 0.0, 0.0)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert m["macro_recall"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert m["macro_f1"] == pytest.approx((f1_a + f1_b + 0) / 3)
    assert m["confusion"] == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]


def test_a_class_predicted_but_never_true_counts_in_macro_but_not_in_balanced_accuracy() -> None:
    y_true = np.array([0, 0, 1, 1])
    y_pred = np.array([0, 3, 1, 1])  # d is predicted once, never true
    m = classification_metrics(y_true, y_pred, CLASSES)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["macro_recall"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)  # a, b, d present; c absent
    assert m["recall/d"] == 0.0 and m["support/d"] == 0.0


def test_perfect_predictions() -> None:
    y = np.array([3, 2, 1, 0, 0])
    m = classification_metrics(y, y, CLASSES)
    for key in ("accuracy", "balanced_accuracy", "macro_recall", "macro_f1"):
        assert m[key] == 1.0


def test_keys_are_flat_and_cover_every_class() -> None:
    m = classification_metrics(np.array([0, 1]), np.array([1, 1]), CLASSES)
    expected = {"accuracy", "balanced_accuracy", "macro_recall", "macro_f1", "confusion"}
    for name in CLASSES:
        expected |= {f"recall/{name}", f"f1/{name}", f"support/{name}"}
    assert set(m) == expected
    assert all(isinstance(v, float) for k, v in m.items() if k != "confusion")


@pytest.mark.parametrize(
    ("y_true", "y_pred", "match"),
    [
        (np.array([0, 1]), np.array([0]), "equal length"),
        (np.array([], dtype=int), np.array([], dtype=int), "empty"),
        (np.array([0, 4]), np.array([0, 1]), r"\[0, 4\)"),
        (np.array([0.0, 1.0]), np.array([0, 1]), "integer"),
    ],
)
def test_invalid_inputs_say_what_is_wrong(y_true: np.ndarray, y_pred: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        classification_metrics(y_true, y_pred, CLASSES)


def test_agrees_with_scikit_learn_on_random_splits() -> None:
    rng = np.random.default_rng(0)
    for trial in range(30):
        n = int(rng.integers(1, 40))
        # Skewed class draws so that some classes are often absent or never predicted.
        y_true = rng.choice(6, size=n, p=[0.4, 0.3, 0.2, 0.1, 0.0, 0.0])
        y_pred = rng.choice(6, size=n, p=[0.3, 0.3, 0.2, 0.0, 0.2, 0.0])
        names = [f"k{i}" for i in range(6)]
        m = classification_metrics(y_true, y_pred, names)
        present = np.union1d(y_true, y_pred)
        kw = {"labels": present, "zero_division": 0}
        assert m["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred)), trial
        assert m["macro_recall"] == pytest.approx(skm.recall_score(y_true, y_pred, average="macro", **kw))
        assert m["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro", **kw))
        with warnings.catch_warnings():  # "y_pred contains classes not in y_true": the case under test
            warnings.simplefilter("ignore")
            balanced = skm.balanced_accuracy_score(y_true, y_pred)
        assert m["balanced_accuracy"] == pytest.approx(balanced)
        recall = skm.recall_score(y_true, y_pred, labels=range(6), average=None, zero_division=0)
        f1 = skm.f1_score(y_true, y_pred, labels=range(6), average=None, zero_division=0)
        assert [m[f"recall/{k}"] for k in names] == pytest.approx(list(recall))
        assert [m[f"f1/{k}"] for k in names] == pytest.approx(list(f1))
        assert m["confusion"] == skm.confusion_matrix(y_true, y_pred, labels=range(6)).tolist()


def test_dedupe_keeps_each_sample_once_and_sorts_by_index() -> None:
    # Two ranks of a 5-sample split padded to 6: rank 1 repeats sample 0 at the end.
    indices = np.array([4, 2, 0, 3, 1, 0])
    preds = np.array([14, 12, 10, 13, 11, 99])
    labels = np.array([4, 2, 0, 3, 1, 0])
    idx, p, y = dedupe_predictions(indices, preds, labels)
    assert idx.tolist() == [0, 1, 2, 3, 4]
    assert p.tolist() == [10, 11, 12, 13, 14]  # the first occurrence of sample 0 wins
    assert y.tolist() == [0, 1, 2, 3, 4]


def test_dedupe_changes_the_metric_a_padded_split_would_report() -> None:
    indices = np.array([0, 1, 2, 0, 0])
    labels = np.array([0, 1, 1, 0, 0])
    preds = np.array([0, 0, 1, 0, 0])  # sample 0 correct, repeated twice by padding
    padded = classification_metrics(labels, preds, ("x", "y"))["accuracy"]
    _, p, y = dedupe_predictions(indices, preds, labels)
    assert padded == pytest.approx(4 / 5)
    assert classification_metrics(y, p, ("x", "y"))["accuracy"] == pytest.approx(2 / 3)


def test_dedupe_rows_of_scores_follow_their_index() -> None:
    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.1, 0.9]])
    idx, s, _ = dedupe_predictions(np.array([7, 3, 7]), scores, np.array([1, 0, 1]))
    assert idx.tolist() == [3, 7]
    assert s.tolist() == [[0.8, 0.2], [0.1, 0.9]]


def test_dedupe_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="as many rows"):
        dedupe_predictions(np.array([0, 1]), np.array([0]), np.array([0, 1]))


def test_prefixed() -> None:
    assert prefixed({"accuracy": 0.5, "recall/a": 1.0}, "val") == {"val/accuracy": 0.5, "val/recall/a": 1.0}
    assert prefixed({"accuracy": 0.5}, "test/") == {"test/accuracy": 0.5}


def test_one_task_has_plain_keys_two_tasks_are_namespaced() -> None:
    y = np.array([0, 1, 2])
    single = metrics_for_tasks({"type": y}, {"type": y}, {"type": ("healthy", "acquired", "inherited")})
    assert "accuracy" in single and "recall/inherited" in single
    assert not any(k.startswith("type/") for k in single)
    dual = metrics_for_tasks(
        {"disease": np.array([0, 1]), "type": y},
        {"disease": np.array([0, 0]), "type": y},
        {"disease": ("normal", "dr"), "type": ("healthy", "acquired", "inherited")},
    )
    assert dual["disease/accuracy"] == 0.5 and dual["type/accuracy"] == 1.0
    assert "accuracy" not in dual and "type/recall/inherited" in dual


def test_tasks_must_match() -> None:
    y = np.array([0])
    with pytest.raises(ValueError, match="same tasks"):
        metrics_for_tasks({"type": y}, {"disease": y}, {"type": ("a",)})


def test_type_breakdown_acquired_vs_inherited() -> None:
    names = ("normal", "dr", "amd", "rp", "stargardt")
    types = {
        "normal": "healthy",
        "dr": "acquired",
        "amd": "acquired",
        "rp": "inherited",
        "stargardt": "inherited",
    }
    # dr: 2 true -> dr, amd. amd: 1 true -> amd. rp: 2 true -> rp, dr. stargardt: absent, never predicted.
    y_true = np.array([0, 1, 1, 2, 3, 3])
    y_pred = np.array([0, 1, 2, 2, 3, 1])
    out = type_breakdown(y_true, y_pred, types, names)
    # recall dr 1/2, amd 1/1; precision dr 1/2 (one rp sample predicted dr), amd 1/2.
    f1_dr, f1_amd = 0.5, 2 * 0.5 * 1.0 / 1.5
    assert out["acquired/macro_recall"] == pytest.approx((0.5 + 1.0) / 2)
    assert out["acquired/macro_f1"] == pytest.approx((f1_dr + f1_amd) / 2)
    assert out["acquired/accuracy"] == pytest.approx(2 / 3)
    assert out["acquired/support"] == 3.0
    # rp recall 1/2, precision 1/1 -> f1 2/3; stargardt absent from both -> excluded.
    assert out["inherited/macro_recall"] == pytest.approx(0.5)
    assert out["inherited/macro_f1"] == pytest.approx(2 / 3)
    assert out["inherited/accuracy"] == pytest.approx(0.5)
    assert out["healthy/accuracy"] == 1.0


def test_type_breakdown_needs_every_class_typed() -> None:
    with pytest.raises(ValueError, match=r"\['rp'\]"):
        type_breakdown(np.array([0]), np.array([0]), {"dr": "acquired"}, ("dr", "rp"))


# -- AUROC ----------------------------------------------------------------------------------------------
def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_auroc_agrees_with_scikit_learn_with_ties_and_absent_classes() -> None:
    rng = np.random.default_rng(1)
    names = [f"k{i}" for i in range(5)]
    checked_absent = 0
    for trial in range(60):
        n = int(rng.integers(2, 50))
        y = rng.choice(5, size=n, p=[0.4, 0.3, 0.2, 0.1, 0.0])  # k4 never occurs; k3 often absent
        # probabilities rounded to a coarse grid: many tied scores within and across classes
        probs = np.round(_softmax(rng.normal(size=(n, 5)) + 1.5 * np.eye(5)[y]) * 8) / 8
        m = auroc_metrics(y, probs, names)
        expected = []
        for i, name in enumerate(names):
            positive = y == i
            if positive.all() or not positive.any():
                assert np.isnan(m[f"auroc/{name}"]), (trial, name)
                checked_absent += 1
                continue
            value = skm.roc_auc_score(positive, probs[:, i])
            assert m[f"auroc/{name}"] == pytest.approx(value, abs=1e-12), (trial, name)
            expected.append(value)
        if expected:
            assert m["auroc"] == pytest.approx(np.mean(expected), abs=1e-12)
        else:
            assert np.isnan(m["auroc"])
    assert checked_absent >= 60  # the absent-class rule was exercised (k4 in every trial)


def test_auroc_hand_computed_ties_count_half() -> None:
    # positives scored 0.8 and 0.5, negatives 0.5 and 0.2: pairs (0.8>0.5, 0.8>0.2, 0.5=0.5, 0.5>0.2) = 3.5/4
    assert binary_auroc(np.array([1, 1, 0, 0]), np.array([0.8, 0.5, 0.5, 0.2])) == pytest.approx(3.5 / 4)
    assert np.isnan(binary_auroc(np.array([1, 1]), np.array([0.1, 0.9])))  # no negative sample


def test_auroc_multiclass_one_vs_rest_equals_scikit_learn_macro_when_every_class_occurs() -> None:
    rng = np.random.default_rng(2)
    y = np.tile(np.arange(3), 10)
    probs = _softmax(rng.normal(size=(30, 3)) + np.eye(3)[y])
    m = auroc_metrics(y, probs, ("a", "b", "c"))
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"))


def test_probabilities_add_auroc_keys_per_head() -> None:
    y = np.array([0, 1, 2, 1])
    probs = np.eye(3)[y] * 0.9 + 0.1 / 3
    m = classification_metrics(y, y, ("healthy", "acquired", "inherited"), probs)
    assert m["auroc"] == 1.0 and m["auroc/inherited"] == 1.0
    dual = metrics_for_tasks(
        {"disease": np.array([0, 1, 0, 1]), "type": y},
        {"disease": np.array([0, 1, 1, 1]), "type": y},
        {"disease": ("normal", "dr"), "type": ("healthy", "acquired", "inherited")},
        {"type": probs},  # only the type head has probabilities here
    )
    assert dual["type/auroc"] == 1.0 and "disease/auroc" not in dual
    assert "auroc" not in classification_metrics(y, y, ("healthy", "acquired", "inherited"))


def test_auroc_rejects_probabilities_of_the_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"\(samples, classes\) = \(2, 3\)"):
        auroc_metrics(np.array([0, 1]), np.ones((2, 2)), ("a", "b", "c"))


# -- class weights --------------------------------------------------------------------------------------
def test_balanced_class_weights_agree_with_scikit_learn() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 2])
    weights = balanced_class_weights(y, 3)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=y)
    assert weights.tolist() == pytest.approx(expected.tolist())
    assert weights.tolist() == pytest.approx([7 / (3 * 4), 7 / (3 * 2), 7 / (3 * 1)])
    # weighted, every class contributes the same total weight: n / k
    assert (weights[y].sum() / 3) == pytest.approx(np.bincount(y, weights=weights[y])[0])


def test_a_class_absent_from_training_gets_weight_zero_and_k_counts_present_classes() -> None:
    weights = balanced_class_weights(np.array([0, 0, 2]), 4)
    assert weights.tolist() == pytest.approx([3 / (2 * 2), 0.0, 3 / (2 * 1), 0.0])


def test_balanced_class_weights_refuse_bad_labels() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        balanced_class_weights(np.array([], dtype=int), 3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        balanced_class_weights(np.array([0, 3]), 3)
