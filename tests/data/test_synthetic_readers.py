"""The synthetic corpus through the real readers: MIMIC-EYE as written, EGD-CXR and REFLACX as re-assembled
stand-alone trees (as PhysioNet ships them), with no special-casing of synthetic data in the readers."""

import json

import numpy as np
import pytest

from egma_hf.data import HeatmapSettings, load_egd_cxr, load_mimic_eye, load_reflacx, make_synthetic_mimic_eye
from tests.helpers import standalone_trees

SETTINGS = HeatmapSettings(recipe=12.0, heatmap_size=48)  # sigma ~ 3% of these ~370 px images


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = make_synthetic_mimic_eye(tmp_path_factory.mktemp("synthetic") / "mimic-eye", num_samples=40, seed=7)
    truth = json.loads((root / "synthetic_ground_truth.json").read_text())["readings"]
    return root, truth


@pytest.fixture(scope="module")
def mimic_eye(corpus):
    return load_mimic_eye(corpus[0], SETTINGS)


def test_mimic_eye_loads_every_usable_reading(corpus, mimic_eye):
    _, truth = corpus
    usable = {rid for rid, reading in truth.items() if not reading["eye_tracking_data_discarded"]}
    assert set(mimic_eye["reading_id"]) == usable
    assert set(mimic_eye["source"]) == {"egd-cxr", "reflacx"}
    assert set(mimic_eye["split"]) == {"train", "validate", "test"}
    assert all(mimic_eye["has_gaze"]) and all(mimic_eye["written_report"])
    for row in mimic_eye.select(range(5)):
        assert row["sentences"] == [s["text"] for s in truth[row["reading_id"]]["sentences"]]


def test_finding_sentences_have_their_gaze_peak_on_the_finding(corpus, mimic_eye):
    _, truth = corpus
    hits = total = 0
    for row in mimic_eye.with_format("numpy"):
        reading = truth[row["reading_id"]]
        scale_y = row["image_height"] / row["sentence_heatmaps"].shape[1]
        scale_x = row["image_width"] / row["sentence_heatmaps"].shape[2]
        for sentence, heatmap in zip(reading["sentences"], row["sentence_heatmaps"]):
            if sentence["finding"] is None:
                continue
            x1, y1, x2, y2 = reading["findings"][sentence["finding"]]["bbox"]
            peak_y, peak_x = np.unravel_index(heatmap.argmax(), heatmap.shape)
            total += 1
            hits += (x1 - scale_x <= (peak_x + 0.5) * scale_x <= x2 + scale_x
                     and y1 - scale_y <= (peak_y + 0.5) * scale_y <= y2 + scale_y)
    assert total > 20 and hits / total > 0.8


def test_standalone_egd_and_reflacx_trees_give_the_same_readings(corpus, mimic_eye, tmp_path):
    egd_root, reflacx_root, images = standalone_trees(corpus[0], tmp_path)
    egd = load_egd_cxr(egd_root, images, SETTINGS)
    reflacx = load_reflacx(reflacx_root, images, SETTINGS)
    by_id = {row["reading_id"]: row for row in mimic_eye.with_format("numpy")}
    assert set(egd["reading_id"]) | set(reflacx["reading_id"]) == set(by_id)
    for row in list(egd.with_format("numpy")) + list(reflacx.with_format("numpy")):
        reference = by_id[row["reading_id"]]
        assert list(row["sentences"]) == list(reference["sentences"])
        np.testing.assert_allclose(row["sentence_heatmaps"], reference["sentence_heatmaps"], atol=1e-6)
    assert "calibration-image fixations skipped" in egd.info.description
    assert "eye_tracking_data_discarded" in reflacx.info.description
