"""egma_hf.evaluation.analysis and examples/analyze.py: silhouette and projections against scikit-learn, similarity
maps against a direct computation, gaze agreement on constructed maps, the shuffled control, and the script end to
end."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import load_from_disk
from PIL import Image

from egma_hf.data import load_mimic_eye, make_synthetic_mimic_eye
from egma_hf.evaluation.analysis import (
    gaze_agreement,
    gaze_on_patch_grid,
    image_patch_mask,
    pick_reading,
    project_embeddings,
    sentence_patch_similarity,
    shuffled_gaze_pairs,
    silhouette,
    single_finding_labels,
    test_split_agreement,
)
from tests.helpers import GRID, IMAGE_SIZE, load_example

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def test_silhouette_is_scikit_learns_cosine_silhouette():
    rng = np.random.default_rng(0)
    embeds = rng.normal(size=(40, 6))
    labels = rng.choice(["a", "b", "c"], size=40)
    expected = sklearn_metrics.silhouette_score(embeds, labels, metric="cosine")
    assert silhouette(embeds, labels) == pytest.approx(expected)
    assert silhouette(torch.tensor(embeds), list(labels)) == pytest.approx(silhouette(embeds, labels))


def test_separable_classes_score_near_one():
    rng = np.random.default_rng(1)
    axes = np.eye(4)[:3] * 10
    embeds = np.concatenate([axis + rng.normal(scale=0.1, size=(15, 4)) for axis in axes])
    labels = np.repeat(["Cardiomegaly", "Edema", "No Finding"], 15)
    assert silhouette(embeds, labels) > 0.95
    with pytest.raises(ValueError, match="2 to N - 1 classes"):
        silhouette(embeds, ["one class"] * len(embeds))


def test_single_finding_labels_keep_one_or_no_finding_and_drop_lone_classes():
    label_lists = [["Edema"], ["No Finding"], [], ["Edema", "Lung Opacity"], ["Edema"], ["Pneumothorax"]]
    indices, classes = single_finding_labels(label_lists)
    assert indices == [0, 1, 2, 4]  # several findings (3) and a lone class (5) are left out
    assert classes == ["Edema", "No Finding", "No Finding", "Edema"]


@pytest.mark.parametrize("method", ["tsne", "pca"])
def test_projection_gives_one_point_per_embedding_and_is_seeded(method):
    embeds = np.random.default_rng(2).normal(size=(20, 8))
    points = project_embeddings(embeds, method, seed=3)
    assert points.shape == (20, 2) and np.isfinite(points).all()
    np.testing.assert_allclose(points, project_embeddings(embeds, method, seed=3))


def test_similarity_maps_are_the_cosine_of_sentence_and_patch_embeddings(model, processor):
    rng = np.random.default_rng(0)
    image = rng.random((40, 30)).astype(np.float32)
    sentences = ["The heart size is normal.", "Small left pleural effusion.", "No pneumothorax."]
    maps = sentence_patch_similarity(model, processor, image, sentences)
    assert maps.shape == (3, GRID, GRID)
    batch = processor(images=[image], text=[sentences])
    with torch.no_grad():
        patches = model.get_image_features(pixel_values=batch["pixel_values"]).patch_embeds[0]  # (N, D)
        texts = model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                        token_type_ids=batch["token_type_ids"]).sentence_embeds[0]  # (S, D)
    expected = F.normalize(texts, dim=-1) @ F.normalize(patches, dim=-1).T
    np.testing.assert_allclose(maps.reshape(3, -1), expected.numpy(), atol=1e-5)
    # each sentence is encoded on its own: alone it gets the map it has within its report
    with_other = sentence_patch_similarity(model, processor, image, sentences[:1])
    np.testing.assert_allclose(with_other[0], maps[0], atol=1e-5)


def test_gaze_grid_matches_the_image_processors_pooling(processor):
    heatmaps = np.random.default_rng(3).random((2, 20, 15)).astype(np.float32)
    expected, _ = processor.image_processor.preprocess_gaze([heatmaps], [(40, 30)], 2)
    np.testing.assert_allclose(gaze_on_patch_grid(heatmaps, (40, 30), IMAGE_SIZE, (GRID, GRID)), expected[0], atol=1e-6)
    mask = image_patch_mask((40, 20), IMAGE_SIZE, (GRID, GRID))  # half as wide as tall: the middle two columns
    assert mask.tolist() == [[False, True, True, False]] * GRID


def test_gaze_agreement_on_constructed_maps():
    rng = np.random.default_rng(4)
    gaze = rng.random((3, 4, 4)) * (rng.random((3, 4, 4)) > 0.5)  # zeros and values: hot and cold patches
    same = gaze_agreement(gaze, gaze)
    assert same["correlation"] == pytest.approx([1.0] * 3) and same["auroc"] == pytest.approx([1.0] * 3)
    inverted = gaze_agreement(-gaze, gaze)
    assert inverted["auroc"] == pytest.approx([0.0] * 3) and inverted["correlation"] == pytest.approx([-1.0] * 3)
    scaled = gaze_agreement(2 * gaze + 1, 5 * gaze)  # a scale on either side changes nothing
    assert scaled["auroc"] == pytest.approx(same["auroc"])

    degenerate = np.stack([np.zeros((4, 4)), np.ones((4, 4)), gaze[0]])
    result = gaze_agreement(np.stack([gaze[0]] * 3), degenerate)
    assert result["skipped"] == {"no_hot_patch": 1, "all_patches_hot": 1}
    assert result["scored"] == [2] and len(result["correlation"]) == len(result["auroc"]) == 1
    flat = gaze_agreement(np.zeros((1, 4, 4)), gaze[:1])
    assert flat["skipped"] == {"constant_similarity": 1}

    two_columns = np.zeros((1, 4, 4))
    two_columns[0, :, [0, 3]] = 1.0  # gaze on the left and right columns
    right_inverted = two_columns.copy()
    right_inverted[0, :, 3] = -1.0
    only_left = np.zeros((4, 4), bool)
    only_left[:, :2] = True
    assert gaze_agreement(right_inverted, two_columns)["auroc"] == pytest.approx([0.5])
    assert gaze_agreement(right_inverted, two_columns, patch_mask=only_left)["auroc"] == pytest.approx([1.0])


def test_shuffled_control_never_pairs_a_sentence_with_its_own_image():
    keys = ["a.jpg", "a.jpg", "b.jpg", "c.jpg", "d.jpg"]  # readings 0 and 1: two radiologists, one image
    counts = [3, 2, 4, 1, 5]
    pairs = shuffled_gaze_pairs(keys, counts, seed=0)
    assert [len(p) for p in pairs] == counts
    for reading, reading_pairs in enumerate(pairs):
        for other, sentence in reading_pairs:
            assert other != reading and keys[other] != keys[reading]
            assert 0 <= sentence < counts[other]
    assert pairs == shuffled_gaze_pairs(keys, counts, seed=0)
    with pytest.raises(ValueError, match="two different images"):
        shuffled_gaze_pairs(["a", "a"], [1, 1])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = make_synthetic_mimic_eye(tmp_path_factory.mktemp("mimic-eye"), 30, seed=3)
    readings = load_mimic_eye(root)
    saved = tmp_path_factory.mktemp("saved") / "readings"
    readings.save_to_disk(str(saved))
    return readings, saved


def test_split_agreement_has_a_shuffled_control_on_the_same_sentences(model, processor, corpus):
    readings, _ = corpus
    result = test_split_agreement(model, processor, readings, batch_size=8)
    with_gaze = [row for row in readings if row["has_gaze"]]
    assert result["num_readings"] == len(with_gaze)
    assert result["num_sentences"] == sum(len(row["sentences"]) for row in with_gaze)
    for key in ("matched", "shuffled"):
        scored = result[key]["auroc"]["n"]
        assert scored == result[key]["correlation"]["n"] > 0
        assert scored + sum(result[key]["skipped"].values()) == result["num_sentences"]
        assert 0.0 <= result[key]["auroc"]["mean"] <= 1.0 and -1.0 <= result[key]["correlation"]["mean"] <= 1.0


@pytest.mark.slow
def test_analyze_script_end_to_end(tmp_path, model, processor, corpus):
    _, saved = corpus
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    out = tmp_path / "analysis"
    analyze = load_example("analyze")
    assert analyze.main(["--model", str(tmp_path / "model"), "--data", str(saved), "--split", "all",
                         "--output_dir", str(out), "--batch_size", "8"]) == 0
    for picture in ("embeddings.png", "attention.png"):
        with Image.open(out / picture) as image:
            image.verify()
            assert image.format == "PNG" and image.width > 300
    embeddings = json.loads((out / "silhouette.json").read_text())
    assert set(embeddings["silhouette"]) == {"model", "untrained (same config)"}
    assert all(-1.0 <= score <= 1.0 for score in embeddings["silhouette"].values())
    assert embeddings["num_images"] == sum(embeddings["classes"].values()) >= 3
    attention = json.loads((out / "attention.json").read_text())
    assert set(attention["models"]) == {"model", "untrained (same config)"}
    assert attention["models"]["model"]["shuffled"]["auroc"]["n"] > 0
    example = attention["example"]
    assert set(example["per_model"]) == set(attention["models"])
    assert len(example["sentences"]) == len(example["per_model"]["model"]["scored"]) + sum(
        example["per_model"]["model"]["skipped"].values())

    rows = load_from_disk(str(saved))
    assert pick_reading(rows, None)["reading_id"] == example["reading_id"]  # deterministic
    last = max(row["reading_id"] for row in rows if row["has_gaze"])
    assert pick_reading(rows, last)["reading_id"] == last
    with pytest.raises(SystemExit, match="--reading_id nope"):
        analyze.main(["--model", str(tmp_path / "model"), "--data", str(saved), "--output_dir", str(out),
                      "--split", "all", "--reading_id", "nope"])
