"""The linear-probe protocol (egma_hf.evaluation.linear_probe) and examples/finetune_classification.py: linear probes
at 1/10/100% of the labels on synthetic RSNA and CheXpert twins, stratified nested label subsets, cached features =
the frozen tower run every step, the pretrained tower really used, bad settings refused before training."""

import json
import math
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from egma_hf import EGMAForImageClassification, EGMAImageProcessor, EGMAModel, EGMAProcessor
from egma_hf.data import (
    CHEXPERT_COMPETITION_TASKS,
    load_chexpert,
    load_image,
    load_rsna_pneumonia,
    make_synthetic_evaluation_sets,
)
from egma_hf.evaluation import linear_probe
from egma_hf.evaluation.metrics import roc_auc
from tests.helpers import GRID, IMAGE_SIZE, REPO_ROOT, load_example, make_tokenizer, tiny_config

SCRIPT = REPO_ROOT / "examples" / "finetune_classification.py"
PER_CLASS = 30  # RSNA: 60 patients -> MGCA split 42 / 9 / 9; train Normal 20, Pneumonia 22
FRACTIONS = ["0.01", "0.1", "1.0"]
SYNTHETIC = "synthetic-evaluation-100-seed0"  # the default twin's folder (cached_synthetic_evaluation_sets)


script = load_example("finetune_classification")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Tiny EGMA directories (Swin and CNN towers), a small synthetic evaluation tree, and a cache folder in which
    that tree stands in for the script's default synthetic twin (so the no-`--data` path runs without building the
    100-per-class one)."""
    root = tmp_path_factory.mktemp("finetune")
    torch.manual_seed(0)
    EGMAModel(tiny_config()).save_pretrained(root / "egma")
    processor = EGMAProcessor(image_processor=EGMAImageProcessor(size=IMAGE_SIZE, gaze_grid_size=GRID),
                              tokenizer=make_tokenizer())
    processor.save_pretrained(root / "egma")
    # a CNN tower: BatchNorm statistics would move if the frozen tower were run in train mode
    EGMAModel(tiny_config(vision_config=dict(model_type="timm_wrapper", architecture="resnet10t"))).save_pretrained(
        root / "egma-cnn")
    processor.save_pretrained(root / "egma-cnn")
    make_synthetic_evaluation_sets(root / "cache" / SYNTHETIC, images_per_class=PER_CLASS, seed=0)
    return root


def run(args, cache, timeout=240):
    env = dict(os.environ, EGMA_HF_CACHE=str(cache), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    # one thread: on a shared 2-core machine, thread hand-offs make each small op ~100x slower
    result = subprocess.run([sys.executable, str(SCRIPT), *args, "--num_threads", "1"], capture_output=True,
                            text=True, env=env, cwd=REPO_ROOT, timeout=timeout)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout + result.stderr


def rule(fraction: float, count: int) -> int:
    """The documented stratum share: max(1, floor(fraction * n + 0.5))."""
    return max(1, math.floor(fraction * count + 0.5 + 1e-9))


def check_aurocs(results, predictions, tasks):
    targets = predictions["test_targets"].astype(bool)
    for entry in results["results"]:
        scores = predictions[f"test_scores_{entry['label_fraction']:g}"]
        assert scores.shape == targets.shape == (results["splits"]["test"], len(tasks))
        defined = []
        for column, task in enumerate(tasks):
            interval = entry["test"]["auroc"][task]
            if targets[:, column].all() or not targets[:, column].any():
                assert interval is None
                continue
            defined.append(column)
            assert 0.0 <= interval["low"] <= interval["value"] <= interval["high"] <= 1.0
            assert interval["value"] == pytest.approx(roc_auc(targets[:, column], scores[:, column]), abs=1e-12)
        mean = np.mean([roc_auc(targets[:, c], scores[:, c]) for c in defined])
        assert entry["test"]["mean_auroc"]["value"] == pytest.approx(mean, abs=1e-12)
        assert 0.0 <= entry["validate_mean_auroc"] <= 1.0 and 1 <= entry["best_epoch"] <= 3


@pytest.mark.slow
def test_rsna_linear_probe_at_three_fractions(workspace, tmp_path):
    out = tmp_path / "rsna"
    data = workspace / "cache" / SYNTHETIC / "rsna-pneumonia"
    log = run(["--model", str(workspace / "egma"), "--dataset", "rsna", "--data", str(data), "--label_fraction",
               *FRACTIONS, "--epochs", "3", "--lr", "0.01", "--bootstrap", "100", "--save_models",
               "--output_dir", str(out)], workspace / "cache")
    results = json.loads((out / "results.json").read_text())
    predictions = np.load(out / "predictions.npz")
    assert [e["label_fraction"] for e in results["results"]] == [0.01, 0.1, 1.0]
    assert results["mode"] == "linear_probe" and results["feature_cache"] and results["tasks"] == ["Pneumonia"]
    assert results["problem_type"] == "single_label_classification"

    rows = load_rsna_pneumonia(data)
    train = Counter(label for label, split in zip(rows["label"], rows["split"]) if split == "train")
    assert train == {"Normal": 20, "Pneumonia": 22}
    expected = [sum(rule(float(f), n) for n in train.values()) for f in FRACTIONS]
    assert expected == [2, 4, 42]
    assert [e["train_images"] for e in results["results"]] == expected
    assert "label fraction 0.01 keeps 2 of 42 training images" in log
    assert [e["train_positives"]["Pneumonia"] for e in results["results"]] == [1, 2, 22]

    subsets = {k: set(v) for k, v in json.loads((out / "label_subsets.json").read_text()).items()}
    assert subsets["0.01"] <= subsets["0.1"] <= subsets["1"] and len(subsets["1"]) == 42  # nested
    check_aurocs(results, predictions, ["Pneumonia"])
    assert "| 1% | 2 |" in (out / "results.md").read_text() and "| 100% | 42 |" in log

    # The saved probe holds the pretrained tower unchanged and, run on the images, gives the reported test scores:
    # the head trained on cached features belongs to exactly this tower.
    pretrained = EGMAModel.from_pretrained(workspace / "egma").eval()
    probe = EGMAForImageClassification.from_pretrained(out / "model_fraction_1").eval()
    for name, tensor in pretrained.vision_model.state_dict().items():
        torch.testing.assert_close(probe.vision_model.state_dict()[name], tensor, rtol=0, atol=0)
    processor = EGMAImageProcessor.from_pretrained(out / "model_fraction_1")
    test_paths = dict(zip(rows["id"], rows["image"]))
    pixels = processor(images=[load_image(test_paths[i]) for i in predictions["test_ids"]])["pixel_values"]
    with torch.no_grad():
        probabilities = torch.softmax(probe(pixel_values=pixels).logits, -1)[:, 1].numpy()
    np.testing.assert_allclose(probabilities, predictions["test_scores_1"][:, 0], atol=1e-5)


@pytest.mark.slow
def test_chexpert_multi_label_on_the_default_synthetic_twin(workspace, tmp_path):
    out = tmp_path / "chexpert"
    run(["--model", str(workspace / "egma"), "--dataset", "chexpert", "--label_fraction", *FRACTIONS,
         "--epochs", "3", "--lr", "0.01", "--bootstrap", "50", "--output_dir", str(out)], workspace / "cache")
    results = json.loads((out / "results.json").read_text())
    predictions = np.load(out / "predictions.npz")
    tasks = list(CHEXPERT_COMPETITION_TASKS)
    assert results["tasks"] == tasks and results["problem_type"] == "multi_label_classification"
    assert str(workspace / "cache") in results["data"] and "train.csv's patients" in results["validation"]

    chexpert = workspace / "cache" / SYNTHETIC / "CheXpert-v1.0-small"
    train_rows = load_chexpert(chexpert / "train.csv", chexpert, uncertain="per_task")
    test_rows = load_chexpert(chexpert / "valid.csv", chexpert)
    assert list(predictions["test_ids"]) == list(test_rows["id"])  # tested on valid.csv, frontal views
    subsets = {k: set(v) for k, v in json.loads((out / "label_subsets.json").read_text()).items()}
    train = subsets["1"]  # 100%: the whole training split left after the validation carve
    assert len(train) + results["splits"]["validate"] == len(train_rows)
    pattern = {i: "".join(str(int(v)) for v in t) for i, t in zip(train_rows["id"], train_rows["targets"])}
    strata = Counter(pattern[i] for i in train)
    for entry, fraction in zip(results["results"], FRACTIONS):
        assert entry["train_images"] == sum(rule(float(fraction), n) for n in strata.values())
        kept = Counter(pattern[i] for i in subsets[fraction if fraction != "1.0" else "1"])
        assert kept == {key: rule(float(fraction), n) for key, n in strata.items()}  # per label pattern
        positives = entry["train_positives"]
        assert all(positives[t] >= 1 for t in tasks)  # every task has positives in training here
    assert subsets["0.01"] <= subsets["0.1"] <= subsets["1"]
    check_aurocs(results, predictions, tasks)


def test_label_subsets_are_stratified_nested_and_seeded():
    task = linear_probe.Task("single_label_classification", ["Normal", "Pneumonia"], ["Pneumonia"])
    labels = np.array([0] * 95 + [1] * 5)
    split = linear_probe.Split([f"p{i:03d}" for i in range(100)], [""] * 100, labels)
    subsets = {f: linear_probe.label_subset(split, task, f, seed=3) for f in (0.01, 0.1, 0.5, 1.0)}
    counts = {f: Counter(labels[s].tolist()) for f, s in subsets.items()}
    assert counts[0.01] == {0: 1, 1: 1} and counts[0.1] == {0: 10, 1: 1} and counts[0.5] == {0: 48, 1: 3}
    assert counts[1.0] == {0: 95, 1: 5}
    assert set(subsets[0.01]) <= set(subsets[0.1]) <= set(subsets[0.5]) <= set(subsets[1.0])
    assert subsets[0.1] == linear_probe.label_subset(split, task, 0.1, seed=3)
    assert subsets[0.1] != linear_probe.label_subset(split, task, 0.1, seed=4)
    shuffled = linear_probe.Split(split.ids[::-1], split.paths, labels[::-1])  # row order does not matter, ids do
    picked = linear_probe.label_subset(shuffled, task, 0.1, seed=3)
    assert sorted(shuffled.ids[i] for i in picked) == sorted(split.ids[i] for i in subsets[0.1])

    multi = linear_probe.Task("multi_label_classification", ["A", "B"], ["A", "B"])
    targets = np.array([[0, 0]] * 60 + [[1, 0]] * 30 + [[0, 1]] * 9 + [[1, 1]] * 1, np.float32)
    split = linear_probe.Split([f"q{i:03d}" for i in range(100)], [""] * 100, targets)
    kept = targets[linear_probe.label_subset(split, multi, 0.01, seed=0)]
    assert sorted(map(tuple, kept.tolist())) == [(0, 0), (0, 1), (1, 0), (1, 1)]  # one per label pattern
    # half up despite 1.4999... (0.3 * 5 is the float under test, not a constant: hence the noqa)
    assert 0.3 * 5 == pytest.approx(1.5) and linear_probe.stratum_share(0.3, 5) == 2  # noqa: SIM300


@pytest.mark.slow
def test_cached_features_give_the_frozen_tower_results(workspace, tmp_path):
    data = workspace / "cache" / SYNTHETIC / "rsna-pneumonia"
    common = ["--model", str(workspace / "egma-cnn"), "--dataset", "rsna", "--data", str(data), "--label_fraction",
              "0.1", "1.0", "--epochs", "3", "--lr", "0.05", "--batch_size", "8", "--bootstrap", "20",
              "--num_threads", "1"]
    outputs, threads = {}, torch.get_num_threads()
    try:
        for name, extra in (("cached", []), ("tower", ["--no_feature_cache"])):
            outputs[name] = tmp_path / name
            assert script.main([*common, *extra, "--output_dir", str(outputs[name])]) == 0
    finally:
        torch.set_num_threads(threads)
    cached, tower = (json.loads((outputs[n] / "results.json").read_text()) for n in ("cached", "tower"))
    assert cached["feature_cache"] and not tower["feature_cache"]
    for a, b in zip(cached["results"], tower["results"]):
        assert a["best_epoch"] == b["best_epoch"] and a["train_images"] == b["train_images"]
        for ha, hb in zip(a["history"], b["history"]):
            assert ha["train_loss"] == pytest.approx(hb["train_loss"], abs=1e-5)
            assert ha["validate_mean_auroc"] == pytest.approx(hb["validate_mean_auroc"], abs=1e-9)
    first, second = np.load(outputs["cached"] / "predictions.npz"), np.load(outputs["tower"] / "predictions.npz")
    for key in ("test_scores_0.1", "test_scores_1"):
        np.testing.assert_allclose(first[key], second[key], atol=1e-5)
    # the head must have learned something, or the comparison would be empty
    assert cached["results"][-1]["history"][-1]["train_loss"] < cached["results"][-1]["history"][0]["train_loss"]


def test_features_are_the_pretrained_towers_pooled_output(workspace):
    from accelerate import Accelerator

    settings = linear_probe.LinearProbeSettings(model=str(workspace / "egma"), dataset="rsna").check()
    task = linear_probe.task_of("rsna")
    rows = load_rsna_pneumonia(workspace / "cache" / SYNTHETIC / "rsna-pneumonia").select(range(5))
    split = linear_probe.Split(list(rows["id"]), list(rows["image"]), np.zeros(5, np.int64))
    processor = EGMAProcessor.from_pretrained(workspace / "egma").image_processor
    loader = torch.utils.data.DataLoader(linear_probe.ImageRows(split, processor), batch_size=2)
    features = linear_probe.extract_features(Accelerator(), linear_probe.load_classifier(settings, task), loader)
    pixels = processor(images=[load_image(p) for p in split.paths])["pixel_values"]
    with torch.no_grad():
        expected = EGMAModel.from_pretrained(workspace / "egma").eval().vision_model(pixel_values=pixels).pooler_output
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("argv, message", [
    (["--label_fraction", "0"], r"--label_fraction must be in \(0, 1\], got 0.0"),
    (["--label_fraction", "0.1", "1.5"], r"--label_fraction must be in \(0, 1\], got 1.5"),
    (["--label_fraction", "nan"], r"--label_fraction must be in \(0, 1\], got nan"),
    (["--data", "/no/such/folder"], r"--data: /no/such/folder does not exist"),
])
def test_bad_settings_are_refused(workspace, argv, message):
    with pytest.raises(SystemExit, match=message):
        script.main(["--model", str(workspace / "egma"), "--dataset", "rsna", *argv])


def test_unknown_dataset_and_empty_split_are_refused(workspace, tmp_path, capsys):
    with pytest.raises(SystemExit):
        script.parse_args(["--model", str(workspace / "egma"), "--dataset", "mimic"])
    assert "invalid choice: 'mimic'" in capsys.readouterr().err
    siim = workspace / "cache" / SYNTHETIC / "siim-acr-pneumothorax"
    every_id = tmp_path / "all_ids.txt"  # everything in the test split leaves no training images
    every_id.write_text("\n".join(line.split(",")[0] for line in (siim / "train-rle.csv").read_text().splitlines()[1:]))
    with pytest.raises(SystemExit, match="the train split is empty"):
        script.main(["--model", str(workspace / "egma"), "--dataset", "siim", "--data", str(siim),
                     "--test_ids", str(every_id), "--output_dir", str(tmp_path / "never")])
    assert not (tmp_path / "never").exists()
