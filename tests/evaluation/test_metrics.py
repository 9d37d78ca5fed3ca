"""egma_hf.evaluation.metrics against scikit-learn and against straightforward loops."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from egma_hf.evaluation.metrics import (
    accuracy,
    auroc_defined,
    bootstrap_ci,
    column_aurocs,
    confusion_matrix,
    macro_f1,
    mean_auroc,
    precision_at_k,
    recall_at_k,
    roc_auc,
    roc_curve,
)


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 5, 200)
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 5, 200))
    y_pred[y_pred == 4] = 3  # a class that is never predicted
    assert accuracy(y_true, y_pred) == pytest.approx(accuracy_score(y_true, y_pred))
    assert macro_f1(y_true, y_pred) == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0))
    names = np.array(["Normal", "Pneumonia"])[rng.integers(0, 2, 50)]
    guesses = np.array(["Normal", "Pneumonia"])[rng.integers(0, 2, 50)]
    assert macro_f1(names, guesses) == pytest.approx(f1_score(names, guesses, average="macro"))


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_scikit_learn_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(300) < 0.3
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounded: many ties
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    with pytest.raises(ValueError, match="positive and one negative"):
        roc_auc(np.zeros(5), np.arange(5))


def test_precision_and_recall_at_k_match_a_loop():
    rng = np.random.default_rng(0)
    scores = rng.random((40, 100))
    relevant = rng.random((40, 100)) < 0.2
    relevant[:, 0] = True
    for k in (1, 5, 10):
        hits = [relevant[q, np.argsort(-scores[q])[:k]].sum() for q in range(40)]
        assert precision_at_k(scores, relevant, k) == pytest.approx(np.mean([h / k for h in hits]))
        recalls = [h / relevant[q].sum() for q, h in enumerate(hits)]
        assert recall_at_k(scores, relevant, k) == pytest.approx(np.mean(recalls))
    # the paper's I2T P@10 on 8 classes x 5 queries cannot exceed 0.5: only 5 texts are relevant
    perfect = np.eye(8).repeat(5, axis=1)
    assert precision_at_k(perfect, perfect.astype(bool), 10) == 0.5
    with pytest.raises(ValueError, match="k must be"):
        precision_at_k(scores, relevant, 101)


def test_bootstrap_interval_is_reproducible_and_brackets_the_value():
    rng = np.random.default_rng(0)
    labels = rng.random(400) < 0.3
    scores = rng.normal(labels * 1.0, 1.0)
    first = bootstrap_ci(roc_auc, labels, scores, num_samples=300, seed=1)
    assert first == bootstrap_ci(roc_auc, labels, scores, num_samples=300, seed=1)
    assert first["low"] < first["value"] < first["high"]
    assert first["value"] == pytest.approx(roc_auc_score(labels, scores))
    small = bootstrap_ci(roc_auc, labels[:40], scores[:40], num_samples=300, seed=1)
    assert small["high"] - small["low"] > first["high"] - first["low"]  # fewer samples, wider interval
    rare = np.zeros(30, bool)
    rare[0] = True  # most resamples miss the single positive: skipped and counted, not silently scored
    result = bootstrap_ci(roc_auc, rare, rng.random(30), num_samples=200, seed=0)
    assert result["skipped"] > 0 and result["num_samples"] + result["skipped"] == 200


def test_roc_curve_and_confusion_matrix_match_scikit_learn():
    from sklearn.metrics import auc
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix
    from sklearn.metrics import roc_curve as sk_roc_curve

    rng = np.random.default_rng(0)
    labels = rng.random(200) < 0.4
    scores = np.round(rng.normal(labels * 0.7, 1.0), 1)
    fpr, tpr, thresholds = roc_curve(labels, scores)
    sk_fpr, sk_tpr, sk_thresholds = sk_roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thresholds[1:], sk_thresholds[1:])
    assert auc(fpr, tpr) == pytest.approx(roc_auc(labels, scores))
    names = ["Normal", "Pneumonia", "Effusion"]
    truth, predicted = rng.choice(names, 80), rng.choice(names[:2], 80)
    expected = sk_confusion_matrix(truth, predicted, labels=names)
    assert confusion_matrix(truth, predicted, names).tolist() == expected.tolist()
    with pytest.raises(ValueError, match=r"not in labels .*'Edema'"):
        confusion_matrix(["Edema"], ["Normal"], names)


def test_retrieval_precision_on_a_hand_computed_example_of_the_papers_protocol():
    import torch

    from egma_hf.evaluation import retrieval_metrics

    # 2 classes x 2 query texts; 3 images (A, A, B). Similarities (rows images, columns texts a1 a2 b1 b2):
    scores = torch.tensor([[0.9, 0.1, 0.8, 0.2],   # image A1: ranking a1 b1 b2 a2 -> P@1 1, P@2 1/2
                           [0.3, 0.4, 0.5, 0.6],   # image A2: ranking b2 b1 a2 a1 -> P@1 0, P@2 0
                           [0.7, 0.0, 0.1, 0.25]])  # image B: ranking a1 b2 b1 a2 -> P@1 0, P@2 1/2
    result = retrieval_metrics(scores, ["A", "A", "B"], torch.eye(4), ["A", "A", "B", "B"], ks=(1, 2, 5))
    assert result["i2t"]["precision"] == pytest.approx({1: 1 / 3, 2: 1 / 3})  # k=5 > 4 texts is skipped
    assert result["i2t"]["recall"] == pytest.approx({1: 1 / 6, 2: 1 / 3})
    # texts: a1 ranks A1 B A2 (P@1 1, P@2 1/2), a2 ranks A2 A1 B (1, 1), b1 ranks A1 A2 B (0, 0),
    # b2 ranks A2 B A1 (0, 1/2)
    assert result["t2i"]["precision"] == pytest.approx({1: 2 / 4, 2: 2 / 4})


def test_auroc_is_scored_exactly_where_a_column_has_both_classes():
    rng = np.random.default_rng(0)
    targets = np.column_stack([rng.random(40) < 0.3, np.zeros(40, bool), np.ones(40, bool), rng.random(40) < 0.6])
    scores = rng.random((40, 4))
    assert auroc_defined(targets).tolist() == [True, False, False, True]
    values, undefined = column_aurocs(targets, scores, ["a", "none", "all", "b"], absent="none", everywhere="all")
    assert list(values) == ["a", "b"] and undefined == {"none": "none", "all": "all"}
    for column, name in ((0, "a"), (3, "b")):
        assert values[name] == pytest.approx(roc_auc_score(targets[:, column], scores[:, column]))
    assert mean_auroc(targets, scores) == pytest.approx((values["a"] + values["b"]) / 2)
    with pytest.raises(ValueError, match="AUROC is undefined for every task"):
        mean_auroc(targets[:, 1:3], scores[:, 1:3])


def test_the_flat_modules_of_earlier_releases_re_export_the_evaluation_package():
    import egma_hf.analysis
    import egma_hf.evaluation
    import egma_hf.metrics
    import egma_hf.reporting
    import egma_hf.visualization

    assert egma_hf.metrics.roc_auc is roc_auc and egma_hf.evaluation.roc_auc is roc_auc
    assert egma_hf.analysis.gaze_agreement is egma_hf.evaluation.analysis.gaze_agreement
    assert egma_hf.reporting.markdown_report is egma_hf.evaluation.reports.markdown_report
    assert egma_hf.visualization.plot_roc_curves is egma_hf.evaluation.plots.plot_roc_curves
