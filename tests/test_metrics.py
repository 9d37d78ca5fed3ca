"""Metrics against scikit-learn and against straightforward loops."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from egma_hf.metrics import accuracy, bootstrap_ci, macro_f1, precision_at_k, recall_at_k, roc_auc


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
        assert recall_at_k(scores, relevant, k) == pytest.approx(np.mean([h / relevant[q].sum() for q, h in enumerate(hits)]))
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
    assert first["low"] < first["value"] < first["high"] and first["value"] == pytest.approx(roc_auc_score(labels, scores))
    small = bootstrap_ci(roc_auc, labels[:40], scores[:40], num_samples=300, seed=1)
    assert small["high"] - small["low"] > first["high"] - first["low"]  # fewer samples, wider interval
    rare = np.zeros(30, bool)
    rare[0] = True  # most resamples miss the single positive: skipped and counted, not silently scored
    result = bootstrap_ci(roc_auc, rare, rng.random(30), num_samples=200, seed=0)
    assert result["skipped"] > 0 and result["num_samples"] + result["skipped"] == 200


def test_zero_shot_classes_meet_labels_by_name_with_both_ensembles():
    import torch
    import torch.nn.functional as F

    from egma_hf.evaluation import zero_shot_classify

    axes = torch.eye(4)
    class_embeds = {  # deliberately not in the label order below
        "Pneumonia": torch.stack([axes[1], F.normalize(axes[1] + axes[2], dim=0)]),
        "Normal": torch.stack([axes[0], F.normalize(axes[0] + 0.2 * axes[3], dim=0)]),
    }
    images = F.normalize(torch.tensor([[1.0, 0.1, 0, 0], [0.1, 1.0, 0, 0], [0, 0.3, 1.0, 0]]), dim=-1)
    truth = np.array(["Normal", "Pneumonia", "Pneumonia"])
    for ensemble in ("max", "mean"):
        names, scores = zero_shot_classify(images, class_embeds, ensemble)
        predicted = np.array(names)[scores.argmax(1).numpy()]
        assert list(predicted) == list(truth)
    _, max_scores = zero_shot_classify(images, class_embeds, "max")
    torch.testing.assert_close(max_scores[2, 0], (images[2] @ class_embeds["Pneumonia"].t()).max())


def test_retrieval_precision_both_directions():
    import torch

    from egma_hf.evaluation import retrieval_precision

    image_embeds = torch.eye(3).repeat_interleave(2, 0)  # 6 images, 2 per class
    text_embeds = torch.eye(3)  # one query per class
    result = retrieval_precision(image_embeds, [0, 0, 1, 1, 2, 2], text_embeds, [0, 1, 2], ks=(1, 2, 5))
    assert result["i2t"] == {1: 1.0, 2: 0.5}  # one relevant text per image; k=5 > 3 texts is skipped
    assert result["t2i"] == pytest.approx({1: 1.0, 2: 1.0, 5: 0.4})
