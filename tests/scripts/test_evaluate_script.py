"""examples/evaluate.py end to end on synthetic evaluation sets in the real formats: reports, plots, a constant
predictor flagged, retrieval invariants, and bad input refused before any model work."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from egma_hf import EGMAModel
from egma_hf.data import load_mimic_eye, make_synthetic_evaluation_sets, make_synthetic_mimic_eye
from tests.helpers import load_example

evaluate_script = load_example("evaluate")


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluation_sets")
    make_synthetic_evaluation_sets(root / "tree", images_per_class=10, seed=1)
    return root / "tree"


@pytest.fixture
def model_dir(tmp_path, model, processor):
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def run(*args) -> dict:
    assert evaluate_script.main([str(a) for a in args]) == 0
    output = Path(args[list(args).index("--output_dir") + 1])
    return json.loads((output / "report.json").read_text())


@pytest.mark.slow
def test_a_constant_predictor_is_flagged_with_its_known_macro_f1(tmp_path, model, processor, monkeypatch):
    with torch.no_grad():  # every image gets the same embedding, so every image the same prediction
        model.visual_projection.weight.zero_()
    model.save_pretrained(tmp_path / "constant")
    processor.save_pretrained(tmp_path / "constant")
    monkeypatch.setenv("EGMA_HF_CACHE", str(tmp_path / "cache"))  # the default synthetic twin, built here
    out = tmp_path / "out"
    report = run("--model", tmp_path / "constant", "--dataset", "rsna", "--output_dir", out, "--bootstrap", "50")
    zero_shot = report["zero_shot"]
    assert zero_shot["constant_prediction"] == "Normal"  # all scores tie; ties go to the first name in sorted order
    share = zero_shot["class_counts"]["Normal"] / report["num_images"]
    assert zero_shot["accuracy"]["value"] == pytest.approx(share)
    assert zero_shot["macro_f1"]["value"] == pytest.approx(share / (1 + share))  # (2p/(1+p) + 0) / 2
    assert zero_shot["auroc"] == {"Normal": 0.5, "Pneumonia": 0.5}
    assert "Warning: every image was predicted as 'Normal'" in (out / "report.md").read_text()
    for picture in ("confusion_matrix.png", "roc_curves.png"):
        with Image.open(out / picture) as image:
            assert image.format == "PNG" and image.width > 200
    assert (tmp_path / "cache" / "synthetic-evaluation-100-seed0" / "rsna-pneumonia").is_dir()
    assert report["num_images"] == 30  # 15% of 200 patients, MGCA's split


def test_chexpert_5x200_report_is_consistent_with_its_confusion_matrix(sets, model_dir, tmp_path):
    chexpert = sets / "CheXpert-v1.0-small"
    report = run("--model", model_dir, "--dataset", "chexpert_5x200", "--data", chexpert / "chexpert_5x200.csv",
                 "--images_root", chexpert, "--output_dir", tmp_path / "out", "--bootstrap", "50", "--ensemble", "mean")
    zero_shot = report["zero_shot"]
    matrix = np.array(zero_shot["confusion_matrix"])
    assert report["num_images"] == 50 == matrix.sum()
    assert list(zero_shot["class_counts"]) == sorted(zero_shot["class_counts"])
    assert set(zero_shot["class_counts"].values()) == {10}
    assert zero_shot["accuracy"]["value"] == pytest.approx(np.trace(matrix) / matrix.sum())
    assert matrix.sum(0).tolist() == list(zero_shot["predicted_counts"].values())
    assert report["prompt_set"] == "chexpert_5x200" and report["ensemble"] == "mean"


def test_retrieval_report_follows_the_protocols_invariants(sets, model_dir, tmp_path):
    chexpert = sets / "CheXpert-v1.0-small"
    report = run("--model", model_dir, "--dataset", "chexpert_8x200", "--data", chexpert / "chexpert_8x200.csv",
                 "--output_dir", tmp_path / "out", "--bootstrap", "20", "--ks", "1", "5", "10")
    i2t, t2i = report["retrieval"]["i2t"], report["retrieval"]["t2i"]
    assert report["num_images"] == 80
    for k in ("1", "5", "10"):  # 5 relevant texts per image: R@k = P@k * k / 5
        assert i2t["recall"][k]["value"] == pytest.approx(i2t["precision"][k]["value"] * int(k) / 5)
        assert t2i["recall"][k]["value"] == pytest.approx(t2i["precision"][k]["value"] * int(k) / 10)
    assert i2t["precision"]["10"]["value"] <= 0.5


def test_multi_label_set_counts_findings_outside_the_prompt_pairs(tmp_path, model_dir):
    corpus = make_synthetic_mimic_eye(tmp_path / "mimic-eye", 40, seed=2)
    report = run("--model", model_dir, "--dataset", "mimic_eye", "--data", corpus, "--split", "all",
                 "--output_dir", tmp_path / "out", "--bootstrap", "20")
    zero_shot = report["zero_shot"]
    assert report["num_images"] == len(load_mimic_eye(corpus))  # every reading the reader keeps
    assert set(zero_shot["auroc"]) | set(zero_shot["skipped"]) == {
        "Cardiomegaly", "Edema", "Lung Opacity", "Pleural Effusion", "Pneumothorax"}
    assert "Pneumonia" in zero_shot["labels_not_scored"] or "Consolidation" in zero_shot["labels_not_scored"]


def test_an_unreadable_image_stops_the_run_before_the_model_loads(tmp_path, sets, model_dir, monkeypatch):
    tree = tmp_path / "copy"
    make_synthetic_evaluation_sets(tree, images_per_class=3, seed=1)
    chexpert = tree / "CheXpert-v1.0-small"
    first = next(chexpert.glob("train/*/*/*.jpg"))
    first.write_bytes(b"not a jpeg")
    monkeypatch.setattr(EGMAModel, "from_pretrained", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit, match=f"images cannot be read:\\n  {first}"):
        evaluate_script.main(["--model", str(model_dir), "--dataset", "chexpert_8x200", "--data",
                              str(chexpert / "chexpert_8x200.csv"), "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_image_file_batches_names_a_file_whose_pixels_do_not_decode(tmp_path, processor):
    from egma_hf.evaluation import image_file_batches

    good, cut = tmp_path / "good.png", tmp_path / "cut.png"
    Image.fromarray(np.full((40, 32), 128, np.uint8)).save(good)
    cut.write_bytes(good.read_bytes()[:60])  # header intact (size readable), pixel data gone
    batches = image_file_batches(processor.image_processor, [str(good), str(good), str(cut)], batch_size=2)
    assert next(batches).shape == (2, 3, processor.image_processor.size, processor.image_processor.size)
    with pytest.raises(ValueError, match=f"cannot decode {cut}"):
        next(batches)


def test_labels_missing_from_the_prompts_are_an_error_naming_them(tmp_path, sets, model_dir):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"Normal": ["the lungs are clear ."]}))
    with pytest.raises(ValueError, match=r"labels not in the prompt set's classes \['Normal'\]: \{'Pneumonia'"):
        evaluate_script.main(["--model", str(model_dir), "--dataset", "rsna", "--data", str(sets / "rsna-pneumonia"),
                              "--prompts", str(prompts), "--split", "all", "--output_dir", str(tmp_path / "out")])
