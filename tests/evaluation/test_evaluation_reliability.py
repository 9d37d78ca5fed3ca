"""Bad input to evaluation, the zero-shot pipelines, conversion and publishing (issue 11): every case gets an error
naming the argument, file or key, or a counted skip with its reason, and no result holds NaN. Metrics that gained
checks are cross-checked against scikit-learn on valid input."""

import json
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BertConfig, BertModel, pipeline

from egma_hf import ZeroShotClassifier, zero_shot_classify
from egma_hf.conversion import check_egma_checkpoint, load_original_checkpoint
from egma_hf.data import make_synthetic_evaluation_sets
from egma_hf.evaluation import evaluate_multi_label, evaluate_single_label, retrieval_metrics
from egma_hf.evaluation.analysis import gaze_agreement
from egma_hf.evaluation.metrics import (
    bootstrap_ci,
    confusion_matrix,
    macro_f1,
    precision_at_k,
    recall_at_k,
    roc_auc,
    roc_curve,
)
from egma_hf.evaluation.plots import plot_confusion_matrix
from egma_hf.evaluation.reports import check_report, load_report, markdown_report, metric_rows, results_table
from egma_hf.model_card import build_model_card, check_repo_id
from egma_hf.pipeline_egma import TASK
from tests.helpers import REPO_ROOT, load_example
from tests.hub_stand_in import HubStandIn

sklearn_metrics = pytest.importorskip("sklearn.metrics")
LABELS = ["pneumonia", "mild cardiomegaly", "no pleural effusion"]
PROMPTS = {"Normal": ["the lungs are clear ."], "Pneumonia": ["pneumonia .", "focal consolidation ."]}

evaluate_script = load_example("evaluate")
push_script = load_example("push_to_hub")
convert_script = load_example("convert_checkpoint")


def picture(seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((36, 40)) * 255).astype(np.uint8))


class CountingTextCalls:
    """Wraps model.get_text_features to count calls: a refused input must be refused before any embedding."""

    def __init__(self, model):
        self.calls, self.original = 0, model.get_text_features
        model.get_text_features = self

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.original(*args, **kwargs)


@pytest.fixture
def classifier(model, processor, tokenizer):
    return pipeline(TASK, model=model, tokenizer=tokenizer, image_processor=processor.image_processor)


@pytest.fixture
def model_dir(tmp_path, model, processor):
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


@pytest.fixture
def bert_dir(tmp_path):
    config = BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, vocab_size=40)
    BertModel(config).save_pretrained(tmp_path / "bert")
    return tmp_path / "bert"


# ----------------------------------------------------------------------------------------------------------------
# The zero-shot pipeline and classifier


@pytest.mark.parametrize("template", ["a chest x-ray", "", "{} and {}", "{1}", "{label}", "{ oops", "{:q}", 3])
def test_a_hypothesis_template_without_exactly_one_field_is_refused_before_embedding(classifier, model, template):
    counter = CountingTextCalls(model)
    with pytest.raises(ValueError, match="hypothesis_template"):
        classifier(picture(), candidate_labels=LABELS, hypothesis_template=template)
    assert counter.calls == 0


def test_a_valid_hypothesis_template_reaches_every_label(classifier, model, processor):
    scores = classifier(picture(), candidate_labels=LABELS, hypothesis_template="there is {} .")
    names, expected = zero_shot_classify(model, processor, [picture()], {f"{x}": [f"there is {x} ."] for x in LABELS})
    assert {e["label"]: e["score"] for e in scores} == pytest.approx(dict(zip(names, expected[0].tolist())), abs=1e-6)
    assert len({round(e["score"], 6) for e in scores}) > 1  # not the uniform scores of a template without "{}"


@pytest.mark.parametrize("top_k", [-1, 0, 1.5, True, "2"])
def test_a_top_k_that_is_not_a_positive_whole_number_is_an_error(classifier, top_k):
    with pytest.raises(ValueError, match=f"top_k must be a whole number >= 1, got {top_k!r}"):
        classifier(picture(), candidate_labels=LABELS, top_k=top_k)


def test_top_k_above_the_number_of_labels_gives_every_label(classifier):
    everything = classifier(picture(), candidate_labels=LABELS)
    assert classifier(picture(), candidate_labels=LABELS, top_k=10) == everything
    assert classifier(picture(), candidate_labels=LABELS, top_k=np.int64(2)) == everything[:2]
    assert len(everything) == 3


@pytest.mark.parametrize("labels, message", [
    ([], "candidate_labels is empty"),
    ("edema", "candidate_labels must be a list of label strings, got str"),
    ({"edema", "pneumonia"}, "candidate_labels must be a list of label strings, got set"),
    ([1, 2], r"candidate_labels must be non-empty strings; bad entries \(index, value\): \[\(0, 1\), \(1, 2\)\]"),
    (["edema", None], r"bad entries \(index, value\): \[\(1, None\)\]"),
    (["", "edema"], r"bad entries \(index, value\): \[\(0, ''\)\]"),
    (["edema", " edema"], r"candidate_labels must be distinct; repeated: \['edema'\]"),
])
def test_bad_candidate_labels_name_the_argument(classifier, model, labels, message):
    counter = CountingTextCalls(model)
    with pytest.raises(ValueError, match=message):
        classifier(picture(), candidate_labels=labels)
    assert counter.calls == 0


@pytest.mark.parametrize("class_prompts, message", [
    ({"Normal": [], "Pneumonia": ["pneumonia ."]}, "class 'Normal' has no prompts"),
    ({"Edema": ["edema ."], "Edema ": ["mild edema ."]}, "duplicate class name 'Edema'"),
    ({1: ["edema ."], "1": ["pneumonia ."]}, "class_prompts keys must be class names"),
    ({"Normal": {"the lungs are clear ."}, "B": ["b ."]}, "class 'Normal': prompts must be a list of strings"),
    ({"A": (["a ."], []), "B": (["b ."], ["no b ."])}, "class 'A' has no negative prompts"),
    ("chexpert_9x9", r"unknown prompt set 'chexpert_9x9'; built-in sets: \['chexpert_5x200', 'chexpert_8x200'"),
])
def test_bad_class_prompts_are_refused_by_the_pipeline_before_embedding(classifier, model, class_prompts, message):
    counter = CountingTextCalls(model)
    with pytest.raises(ValueError, match=message):
        classifier(picture(), class_prompts=class_prompts)
    assert counter.calls == 0


def test_ensemble_template_and_image_arguments_are_checked(classifier, model, processor, tokenizer):
    counter = CountingTextCalls(model)
    for ensemble in ("median", ""):
        with pytest.raises(ValueError, match=rf"ensemble must be one of \['max', 'mean'\], got {ensemble!r}"):
            classifier(picture(), candidate_labels=LABELS, ensemble=ensemble)
        with pytest.raises(ValueError, match="ensemble must be one of"):
            ZeroShotClassifier.from_prompts(model, tokenizer, PROMPTS, ensemble=ensemble)
    with pytest.raises(ValueError, match="hypothesis_template applies to candidate_labels only"):
        classifier(picture(), class_prompts=PROMPTS, hypothesis_template="{}")
    with pytest.raises(ValueError, match="images is empty"):
        classifier([], candidate_labels=LABELS)
    assert counter.calls == 0
    with pytest.raises(ValueError, match="batch_size must be a whole number >= 1, got 0"):
        zero_shot_classify(model, processor, [picture()], PROMPTS, batch_size=0)
    with pytest.raises(ValueError, match="images must be a list of images, got str"):
        zero_shot_classify(model, processor, "xray.png", PROMPTS)


def test_classifier_checks_embedding_width_and_threshold(model, tokenizer):
    pairs = ZeroShotClassifier.from_prompts(model, tokenizer, "chexpert_findings")
    with pytest.raises(ValueError, match=r"image_embeds must be an \(images, 8\) tensor.*got \(2, 5\)"):
        pairs.probabilities(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"got \(8,\)"):
        pairs.logits(torch.randn(8))
    embeds = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1)
    for threshold in (float("nan"), 1.5, -0.1):
        with pytest.raises(ValueError, match="threshold must be a probability in"):
            pairs.predict(embeds, threshold=threshold)
    assert len(pairs.predict(embeds, threshold=0.0)[0]) == len(pairs.class_names)  # every finding at threshold 0


# ----------------------------------------------------------------------------------------------------------------
# Metrics


def test_auroc_refuses_nan_scores_and_labels_that_are_not_binary():
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    with pytest.raises(ValueError, match=r"scores must be finite; NaN or inf in 1 rows \(first: \[1\]\)"):
        roc_auc([0, 1, 0, 1], [0.1, np.nan, 0.3, 0.4])
    with pytest.raises(ValueError, match=r"scores must be finite"):
        roc_curve([0, 1, 0, 1], [0.1, np.inf, 0.3, 0.4])
    for labels, shown in (([0, 2, 0, 1], "2"), ([0, np.nan, 0, 1], "nan"), (["a", "b", "a", "b"], "'a'"),
                          ([-1, 1, -1, 1], "-1")):
        with pytest.raises(ValueError, match=f"labels must be binary .* e.g. row \\d: {shown}"):
            roc_auc(labels, scores)
    with pytest.raises(ValueError, match="at least one positive and one negative"):
        roc_auc([1, 1, 1, 1], scores)
    # valid 0/1 float labels and booleans give scikit-learn's value
    truth = np.array([0.0, 0.0, 1.0, 1.0])
    assert roc_auc(truth, scores) == pytest.approx(sklearn_metrics.roc_auc_score(truth, scores))
    assert roc_auc(truth.astype(bool), scores) == roc_auc(truth, scores)


def test_bootstrap_checks_its_arguments_and_counts_undefined_resamples():
    rng = np.random.default_rng(0)
    labels, scores = rng.random(30) < 0.5, rng.random(30)
    for samples in (0, -1, 1.5):
        with pytest.raises(ValueError, match=f"num_samples .* must be a whole number >= 1, got {samples}"):
            bootstrap_ci(roc_auc, labels, scores, num_samples=samples)
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\)"):
        bootstrap_ci(roc_auc, labels, scores, num_samples=10, confidence=95)
    with pytest.raises(ValueError, match="the arrays are empty"):
        bootstrap_ci(roc_auc, [], [], num_samples=10)
    with pytest.raises(ValueError, match="at least one array"):
        bootstrap_ci(roc_auc, num_samples=10)
    with pytest.raises(ValueError, match="the metric is nan on the full data"):
        bootstrap_ci(lambda a: float("nan"), labels, num_samples=10)
    # a metric that is NaN on some resamples: those are skipped and counted, never averaged in
    flags = labels.copy()
    flags[0] = True  # defined on the full data; undefined on resamples that start with a False
    picky = lambda a: float(a.mean()) if a[0] else float("nan")  # noqa: E731
    result = bootstrap_ci(picky, flags, num_samples=200, seed=1)
    assert 0 < result["skipped"] < 200 and result["num_samples"] + result["skipped"] == 200
    assert all(np.isfinite([result["value"], result["low"], result["high"]]))


def test_macro_f1_and_confusion_matrix_refuse_values_outside_their_class_list():
    truth, predicted = ["a", "b", "a", "c"], ["a", "a", "b", "c"]
    with pytest.raises(ValueError, match=r"values not in labels \['a', 'b'\]: \['c'\]"):
        macro_f1(truth, predicted, labels=["a", "b"])
    with pytest.raises(ValueError, match="class list.* is empty"):
        macro_f1(truth, predicted, labels=[])
    with pytest.raises(ValueError, match=r"repeats \['a'\]"):
        confusion_matrix(truth, predicted, ["a", "a", "b", "c"])
    names = ["a", "b", "c", "d"]  # "d" has no sample: F1 0, as scikit-learn's zero_division=0
    assert macro_f1(truth, predicted, labels=names) == pytest.approx(
        sklearn_metrics.f1_score(truth, predicted, labels=names, average="macro", zero_division=0))
    assert confusion_matrix(truth, predicted, names).tolist() == sklearn_metrics.confusion_matrix(
        truth, predicted, labels=names).tolist()


def test_retrieval_at_k_checks_k_and_scores_and_matches_scikit_learn():
    rng = np.random.default_rng(0)
    scores = rng.random((30, 12))
    partner = rng.integers(0, 12, 30)
    relevant = np.zeros((30, 12), bool)
    relevant[np.arange(30), partner] = True
    for k in (0, 13, 1.5, True):
        with pytest.raises(ValueError, match=rf"k must be a whole number in \[1, 12\] .* got {k!r}"):
            precision_at_k(scores, relevant, k)
    with pytest.raises(ValueError, match="scores must be finite"):
        recall_at_k(np.where(relevant, np.nan, scores), relevant, 1)
    with pytest.raises(ValueError, match=r"must both be \(queries, items\), got \(30, 12\) and \(30, 11\)"):
        recall_at_k(scores, relevant[:, :11], 1)
    with pytest.raises(ValueError, match=r"no queries"):
        precision_at_k(scores[:0], relevant[:0], 1)
    with pytest.raises(ValueError, match=r"1 queries have no relevant item \(rows \[0\]\)"):
        recall_at_k(scores, np.vstack([np.zeros((1, 12), bool), relevant[1:]]), 1)
    for k in (1, 3, 5):  # one relevant item per query: Recall@K is scikit-learn's top-k accuracy, P@K that over k
        expected = sklearn_metrics.top_k_accuracy_score(partner, scores, k=k, labels=np.arange(12))
        assert recall_at_k(scores, relevant, k) == pytest.approx(expected)
        assert precision_at_k(scores, relevant, k) == pytest.approx(expected / k)


# ----------------------------------------------------------------------------------------------------------------
# Evaluation


def test_single_label_evaluation_refuses_malformed_inputs():
    names, probabilities = ["Normal", "Pneumonia"], np.random.default_rng(0).random((4, 2))
    labels = ["Normal", "Pneumonia", "Normal", "Pneumonia"]
    with pytest.raises(ValueError, match=r"probabilities must be \(images, classes\) = \(3, 2\), got \(4, 2\)"):
        evaluate_single_label(names, probabilities, labels[:3], 10)
    nan = probabilities.copy()
    nan[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"probabilities hold NaN or inf for 1 images \(rows \[2\]\)"):
        evaluate_single_label(names, nan, labels, 10)
    with pytest.raises(ValueError, match="num_bootstrap must be a whole number >= 1, got 0"):
        evaluate_single_label(names, probabilities, labels, 0)
    with pytest.raises(ValueError, match="class_names must be distinct"):
        evaluate_single_label(["Normal", "Normal"], probabilities, labels, 10)
    with pytest.raises(ValueError, match=r"labels\[1\] must be one class name .* got NoneType"):
        evaluate_single_label(names, probabilities, ["Normal", None, "Normal", "Normal"], 10)
    with pytest.raises(ValueError, match=r"labels\[0\] must be one class name .* evaluate_multi_label"):
        evaluate_single_label(names, probabilities, [["Normal"], ["Pneumonia"], ["Normal"], ["Normal"]], 10)
    with pytest.raises(ValueError, match=r"labels not in the prompt set's classes .*'Edema': 1"):
        evaluate_single_label(names, probabilities, ["Normal", "Edema", "Normal", "Pneumonia"], 10)


def test_an_all_one_class_label_vector_reports_null_auroc_with_a_reason():
    probabilities = np.random.default_rng(1).random((5, 2))
    report = evaluate_single_label(["Normal", "Pneumonia"], probabilities, ["Pneumonia"] * 5, 20)
    assert report["auroc"] == {} and report["mean_auroc"] is None
    assert report["auroc_undefined"] == {"Normal": "no image of this class",
                                         "Pneumonia": "every image is of this class"}
    assert "no class has both" in report["mean_auroc_undefined"]
    json.dumps(report, allow_nan=False, default=str)  # no NaN anywhere
    predicted = np.array(["Normal", "Pneumonia"])[probabilities.argmax(1)]
    assert report["accuracy"]["value"] == pytest.approx(sklearn_metrics.accuracy_score(["Pneumonia"] * 5, predicted))

    multi = evaluate_multi_label(["A", "B"], probabilities, [["A"]] * 5, 20)
    assert multi["mean_auroc"] is None and multi["skipped"] == ["A", "B"]
    assert multi["skipped_reasons"] == {"A": "every image is positive", "B": "no positive image"}
    assert "no finding of ['A', 'B']" in multi["mean_auroc_undefined"]
    text = markdown_report({"dataset": "x", "split": "test", "num_images": 5, "zero_shot": multi})
    assert "A (every image is positive), B (no positive image)" in text and "No mean AUROC" in text
    assert metric_rows({"dataset": "x", "split": "test", "num_images": 5, "zero_shot": multi}) == []


def test_multi_label_labels_must_be_lists_not_strings_and_match_scikit_learn():
    probabilities = np.random.default_rng(2).random((6, 2))
    # "A" in "AB" is True for a string: a string row would silently count as positive for both
    with pytest.raises(ValueError, match=r"labels\[0\] must be a list of finding names .* got str 'AB'"):
        evaluate_multi_label(["A", "B"], probabilities, ["AB", "A", "B", "", "A", "B"], 10)
    with pytest.raises(ValueError, match=r"labels\[1\] must be a list of finding names .* got NoneType"):
        evaluate_multi_label(["A", "B"], probabilities, [["A"], None, [], [], ["B"], []], 10)
    with pytest.raises(ValueError, match=r"probabilities must be \(images, findings\) = \(5, 2\)"):
        evaluate_multi_label(["A", "B"], probabilities, [["A"], [], ["B"], [], ["A"]], 10)
    labels = [["A"], ["A", "B"], [], ["B"], ["A"], []]
    report = evaluate_multi_label(["A", "B"], probabilities, labels, 10)
    for column, name in enumerate(["A", "B"]):
        truth = [name in row for row in labels]
        assert report["auroc"][name]["value"] == pytest.approx(
            sklearn_metrics.roc_auc_score(truth, probabilities[:, column]))


def test_retrieval_skips_and_counts_a_k_above_the_gallery_and_queries_without_candidates():
    torch.manual_seed(3)
    images, texts = torch.randn(6, 4), torch.randn(4, 4)
    image_labels, text_labels = ["A", "A", "B", "B", "C", "C"], ["A", "A", "B", "B"]
    result = retrieval_metrics(images, image_labels, texts, text_labels, ks=(1, 5, 7))
    assert result["i2t"]["skipped_ks"] == {5: "k exceeds the 4 candidate texts", 7: "k exceeds the 4 candidate texts"}
    assert result["t2i"]["skipped_ks"] == {7: "k exceeds the 6 candidate images"}
    assert result["i2t"]["skipped_queries"]["count"] == 2  # the two C images: no C text to retrieve
    assert "skipped_queries" not in result["t2i"] and set(result["t2i"]["recall"]) == {1, 5}
    scores = (images @ texts.t()).numpy()[:4]  # the four answerable image queries, two relevant texts each
    hits = [text_labels[int(np.argmax(row))] == label for row, label in zip(scores, image_labels[:4])]
    assert result["i2t"]["recall"][1] == pytest.approx(np.mean(hits) / 2)
    assert result["i2t"]["precision"][1] == pytest.approx(np.mean(hits))
    for ks, message in (((0, 1), "each k in ks must be a whole number >= 1, got 0"), ((), "non-empty"),
                        ((1, 1), "distinct")):
        with pytest.raises(ValueError, match=message):
            retrieval_metrics(images, image_labels, texts, text_labels, ks=ks)
    with pytest.raises(ValueError, match=r"image_labels must hold one label per image embedding: 6 embeddings"):
        retrieval_metrics(images, image_labels[:5], texts, text_labels, ks=(1,))
    with pytest.raises(ValueError, match="image and text embeddings differ in width: 4 and 3"):
        retrieval_metrics(images, image_labels, texts[:, :3], text_labels, ks=(1,))
    with pytest.raises(ValueError, match="i2t: no query has a candidate of its class"):
        retrieval_metrics(images, ["X"] * 6, texts, text_labels, ks=(1,))


# ----------------------------------------------------------------------------------------------------------------
# examples/evaluate.py


@pytest.fixture(scope="module")
def rsna(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluation_sets")
    make_synthetic_evaluation_sets(root, images_per_class=3, seed=1)
    return root / "rsna-pneumonia"


def evaluate_args(model_dir, rsna, tmp_path, *extra):
    return ["--model", str(model_dir), "--dataset", "rsna", "--data", str(rsna), "--bootstrap", "20",
            "--output_dir", str(tmp_path / "out"), *map(str, extra)]


def test_evaluate_refuses_an_unknown_split_listing_the_known_ones(model_dir, rsna, tmp_path):
    with pytest.raises(SystemExit, match=r"--split 'tset': .* has the splits \['test', 'train', 'validate'\]"):
        evaluate_script.main(evaluate_args(model_dir, rsna, tmp_path, "--split", "tset"))
    assert not (tmp_path / "out").exists()


def test_evaluate_refuses_a_model_that_is_not_an_egma_checkpoint(bert_dir, rsna, tmp_path):
    with pytest.raises(SystemExit, match=r"--model: .*bert/config.json is not an EGMA config: model_type is 'bert'"):
        evaluate_script.main(evaluate_args(bert_dir, rsna, tmp_path))
    with pytest.raises(SystemExit, match=r"--model .*/missing: no such directory"):
        evaluate_script.main(evaluate_args(tmp_path / "missing", rsna, tmp_path))
    (tmp_path / "weightless").mkdir()
    (tmp_path / "weightless" / "config.json").write_text(json.dumps({"model_type": "egma"}))
    with pytest.raises(SystemExit, match="has no weights file"):
        evaluate_script.main(evaluate_args(tmp_path / "weightless", rsna, tmp_path))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, message", [
    (["--bootstrap", "0"], "--bootstrap must be >= 1, got 0"),
    (["--limit", "0"], "--limit must be >= 1, got 0"),
    (["--batch_size", "-2"], "--batch_size must be >= 1, got -2"),
    (["--ks", "0", "5"], "--ks: each k in ks must be a whole number >= 1, got 0"),
    (["--test_ids", "ids.txt"], "--test_ids applies to --dataset siim only"),
    (["--images_root", "somewhere"], "--images_root applies to the CheXpert sets only"),
])
def test_evaluate_refuses_out_of_range_flags_before_any_work(model_dir, rsna, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as stopped:
        evaluate_script.main(evaluate_args(model_dir, rsna, tmp_path, *extra))
    assert stopped.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_evaluate_refuses_an_output_dir_that_is_a_file_and_leaves_it_alone(model_dir, rsna, tmp_path, capsys):
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    args = evaluate_args(model_dir, rsna, tmp_path)
    args[args.index("--output_dir") + 1] = str(target)
    with pytest.raises(SystemExit):
        evaluate_script.main(args)
    assert f"--output_dir {target} is a file, not a folder" in capsys.readouterr().err
    assert target.read_text() == "keep me"


def test_evaluate_names_a_missing_or_malformed_prompts_file(model_dir, rsna, tmp_path):
    with pytest.raises(SystemExit, match=r"--prompts .*nope.json: no such file"):
        evaluate_script.main(evaluate_args(model_dir, rsna, tmp_path, "--prompts", tmp_path / "nope.json"))
    broken = tmp_path / "broken.json"
    broken.write_text('{"Normal": ["the lungs are clear ."],')
    with pytest.raises(SystemExit, match=r"--prompts .*broken.json is not valid JSON"):
        evaluate_script.main(evaluate_args(model_dir, rsna, tmp_path, "--prompts", broken))
    empty_class = tmp_path / "empty_class.json"
    empty_class.write_text(json.dumps({"Normal": [], "Pneumonia": ["pneumonia ."]}))
    with pytest.raises(SystemExit, match=r"--prompts .*empty_class.json: class 'Normal' has no prompts"):
        evaluate_script.main(evaluate_args(model_dir, rsna, tmp_path, "--prompts", empty_class))


def test_evaluate_stops_when_no_image_is_readable(model_dir, tmp_path):
    make_synthetic_evaluation_sets(tmp_path / "sets", images_per_class=2, seed=3)
    root = tmp_path / "sets" / "rsna-pneumonia"
    images = sorted(path for path in root.rglob("*") if path.suffix in (".dcm", ".png", ".jpg"))
    for path in images:
        path.write_bytes(b"not an image")
    with pytest.raises(SystemExit, match=f"{len(images)} of {len(images)} images cannot be read"):
        evaluate_script.main(evaluate_args(model_dir, root, tmp_path, "--split", "all"))
    assert not (tmp_path / "out").exists()


def test_a_one_class_split_writes_a_report_without_nan(model_dir, rsna, tmp_path):
    assert evaluate_script.main(evaluate_args(model_dir, rsna, tmp_path, "--split", "all", "--limit", "1")) == 0
    text = (tmp_path / "out" / "report.json").read_text()
    report = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in report.json"))
    zero_shot = report["zero_shot"]
    assert zero_shot["mean_auroc"] is None and zero_shot["mean_auroc_undefined"]
    assert set(zero_shot["auroc_undefined"]) == {"Normal", "Pneumonia"}
    assert "Classes without a one-vs-rest AUROC" in (tmp_path / "out" / "report.md").read_text()
    assert load_report(tmp_path / "out" / "report.json") == report


# ----------------------------------------------------------------------------------------------------------------
# Conversion


@pytest.fixture
def original_like(tmp_path):
    """A small state dict in the MedCLIP/EGMA layout (only the projection heads and logit_scale)."""
    state_dict = {"vision_model.projection_head.weight": torch.zeros(8, 32),
                  "text_model.projection_head.weight": torch.zeros(8, 16), "logit_scale": torch.tensor(2.0)}
    torch.save(state_dict, tmp_path / "pytorch_model.bin")
    return tmp_path / "pytorch_model.bin"


def test_conversion_names_the_file_for_anything_that_is_not_a_checkpoint(tmp_path, original_like):
    cases = {}
    cases["text.bin"] = b"this is a text file"
    cases["empty.bin"] = b""
    cases["truncated.bin"] = original_like.read_bytes()[: len(original_like.read_bytes()) // 2]
    cases["objects.bin"] = pickle.dumps({"weights": [1, 2, 3]}, protocol=2)  # loads, but holds no tensors
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=rf"{tmp_path / name} (cannot be read as a PyTorch checkpoint|is not a "
                                             "(PyTorch )?state dict of tensors)"):
            load_original_checkpoint(tmp_path / name)
    with pytest.raises(FileNotFoundError, match=rf"no MedCLIP/EGMA checkpoint at {tmp_path / 'missing.bin'}"):
        load_original_checkpoint(tmp_path / "missing.bin")


def test_conversion_names_the_file_for_state_dicts_of_other_models(tmp_path, model):
    torch.save({"classifier.weight": torch.zeros(2, 3)}, tmp_path / "other.bin")
    with pytest.raises(ValueError, match=rf"{tmp_path / 'other.bin'}: none of the checkpoint's 1 keys follows the "
                                         r"MedCLIP/EGMA layout .*\['classifier.weight'\]"):
        load_original_checkpoint(tmp_path / "other.bin")
    torch.save({}, tmp_path / "empty_dict.bin")
    with pytest.raises(ValueError, match="empty_dict.bin: the checkpoint holds no tensors"):
        load_original_checkpoint(tmp_path / "empty_dict.bin")
    torch.save(model.state_dict(), tmp_path / "egma.bin")
    with pytest.raises(ValueError, match="egma.bin: the checkpoint's keys are EGMAModel's own .* needs no conversion"):
        load_original_checkpoint(tmp_path / "egma.bin")
    torch.save({"state_dict": {"logit_scale": torch.tensor(1.0)}}, tmp_path / "nested.bin")
    with pytest.raises(ValueError, match=r"nested.bin is not a state dict of tensors .* nests dicts under "
                                         r"\['state_dict'\]"):
        load_original_checkpoint(tmp_path / "nested.bin")
    model.save_pretrained(tmp_path / "saved")
    with pytest.raises(FileNotFoundError, match="holds no pytorch_model.bin but a model.safetensors"):
        load_original_checkpoint(tmp_path / "saved")


def test_conversion_checks_the_config_file(tmp_path, original_like):
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match=r"config: .*broken.json is not a readable JSON config"):
        load_original_checkpoint(original_like, config=tmp_path / "broken.json")
    (tmp_path / "bert.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 16}))
    with pytest.raises(ValueError, match=r"config: .*bert.json is not an EGMA config: model_type is 'bert'"):
        load_original_checkpoint(original_like, config=tmp_path / "bert.json")


def test_convert_cli_reports_bad_files_and_output_dirs_without_writing(tmp_path, original_like, capsys):
    (tmp_path / "truncated.bin").write_bytes(original_like.read_bytes()[:100])
    out = tmp_path / "out"
    assert convert_script.main(["--checkpoint", str(tmp_path / "truncated.bin"), "--output_dir", str(out)]) == 1
    error = capsys.readouterr().err
    assert f"{tmp_path / 'truncated.bin'} cannot be read as a PyTorch checkpoint" in error
    assert "Traceback" not in error and not out.exists()
    assert convert_script.main(["--checkpoint", str(tmp_path / "nope.bin"), "--output_dir", str(out)]) == 1
    assert "no MedCLIP/EGMA checkpoint at" in capsys.readouterr().err and not out.exists()
    (tmp_path / "a_file").write_text("keep me")
    assert convert_script.main(["--checkpoint", str(original_like), "--output_dir", str(tmp_path / "a_file")]) == 1
    assert "is a file, not a folder" in capsys.readouterr().err and (tmp_path / "a_file").read_text() == "keep me"
    assert convert_script.main(["--checkpoint", str(original_like), "--output_dir", str(tmp_path)]) == 1
    assert "is the folder of --checkpoint" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# Publishing: model card, reports, push_to_hub


def test_check_egma_checkpoint_names_what_is_missing(tmp_path, model_dir, bert_dir, model):
    assert check_egma_checkpoint(model_dir)["model_type"] == "egma"
    with pytest.raises(ValueError, match="--model_dir: .*config.json is not an EGMA config: model_type is 'bert'"):
        check_egma_checkpoint(bert_dir, "--model_dir")
    model.save_pretrained(tmp_path / "no_processor")
    with pytest.raises(FileNotFoundError, match="has no processor .*EGMAProcessor.save_pretrained"):
        check_egma_checkpoint(tmp_path / "no_processor")
    assert check_egma_checkpoint(tmp_path / "no_processor", processor=False)["model_type"] == "egma"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a saved model directory"):
        check_egma_checkpoint(tmp_path / "file")


def good_report(**overrides) -> dict:
    truth = ["Normal", "Pneumonia"] * 5
    probabilities = np.random.default_rng(0).random((10, 2))
    report = {"dataset": "rsna", "dataset_name": "RSNA Pneumonia", "split": "test", "num_images": 10, "model": "m",
              "prompt_set": "rsna", "ensemble": "max",
              "zero_shot": evaluate_single_label(["Normal", "Pneumonia"], probabilities, truth, 20)}
    report.update(overrides)
    return report


@pytest.mark.parametrize("content, message", [
    ("{", "is not valid JSON"),
    ("[1, 2]", "a report must be a JSON object, got list"),
    (json.dumps({"dataset": "rsna", "num_images": 3}), "missing key 'split'"),
    (json.dumps({"dataset": "rsna", "split": "test", "num_images": "ten", "zero_shot": {}}),
     "'num_images' must be a int"),
    (json.dumps({"dataset": "rsna", "split": "test", "num_images": 3}), "neither 'zero_shot' nor 'retrieval'"),
    ('{"dataset": "rsna", "split": "test", "num_images": 3, "zero_shot": {"auroc": {"A": NaN}}}',
     "NaN is not a number a report may hold"),
    (json.dumps({"dataset": "rsna", "split": "test", "num_images": 3, "zero_shot": {"accuracy": {"value": None}}}),
     "zero_shot.accuracy.value must be a number, got None"),
    (json.dumps({"dataset": "r", "split": "t", "num_images": 3, "retrieval": {"i2t": {"precision": {"1": "x"}}}}),
     r"retrieval.i2t.precision.1 must be a number or an object with a 'value'"),
])
def test_load_report_names_the_file_and_the_key(tmp_path, content, message):
    path = tmp_path / "report.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=rf"{path}.*{message}"):
        load_report(path)


def test_reports_with_nan_are_refused_and_tables_tolerate_a_null_mean():
    with pytest.raises(ValueError, match=r"report.zero_shot.accuracy.value is nan"):
        check_report(good_report(zero_shot={**good_report()["zero_shot"], "accuracy": {"value": float("nan")}}))
    assert "Accuracy" in results_table([good_report()])
    no_mean = good_report(zero_shot={**good_report()["zero_shot"], "mean_auroc": None})
    assert "AUROC" not in results_table([no_mean]).split("Macro-F1")[1]


def test_model_card_names_the_broken_file_or_argument(tmp_path, model_dir, bert_dir):
    with pytest.raises(ValueError, match="model_dir: .*is not an EGMA config"):
        build_model_card(bert_dir, "user/egma")
    for repo_id in ("a/b/c", "user/bad name", "user/x..y", "bad name"):
        with pytest.raises(ValueError, match="repo_id"):
            build_model_card(model_dir, repo_id)
    assert "egma-pretrain" in str(build_model_card(model_dir, "egma-pretrain"))  # a local run's card: a bare name
    with pytest.raises(ValueError, match="repo_id must be 'user/name'"):
        check_repo_id("no-namespace")  # pushing needs a namespace
    (model_dir / "training_config.json").write_text("{")
    with pytest.raises(ValueError, match=r"training_config.json is not valid JSON"):
        build_model_card(model_dir, "user/egma")
    (model_dir / "training_config.json").write_text(json.dumps({"gaze_fraction": "ten"}))
    with pytest.raises(ValueError, match=r"training_config.json: gaze_fraction must be a number in \[0, 1\]"):
        build_model_card(model_dir, "user/egma")
    (model_dir / "training_config.json").unlink()
    (model_dir / "eval_results.json").write_text(json.dumps({"test": {"num_images": 3}}))
    with pytest.raises(ValueError, match=r"eval_results.json: its 'test' entry lacks \['auroc', 'mean_auroc'\]"):
        build_model_card(model_dir, "user/egma")
    (model_dir / "eval_results.json").unlink()
    with pytest.raises(ValueError, match=r"reports\[0\]: missing key 'split'"):
        build_model_card(model_dir, "user/egma", [{"dataset": "rsna"}])
    assert "RSNA Pneumonia" in build_model_card(model_dir, "user/egma", [good_report()]).text


def test_push_dry_run_refuses_bad_inputs_before_staging_anything(tmp_path, model_dir, bert_dir):
    report = tmp_path / "report.json"
    report.write_text(json.dumps(good_report()))
    staged = tmp_path / "staged"
    cases = [
        (["--model_dir", str(bert_dir), "--repo_id", "user/egma"], "is not an EGMA config"),
        (["--model_dir", str(tmp_path / "missing"), "--repo_id", "user/egma"], "no such directory"),
        (["--model_dir", str(model_dir), "--repo_id", "user/bad name"], "is not a valid Hub id"),
        (["--model_dir", str(model_dir), "--repo_id", "user/egma", "--eval_report", str(tmp_path / "nope.json")],
         "nope.json: no such file"),
    ]
    (tmp_path / "nokey.json").write_text(json.dumps({"dataset": "rsna", "num_images": 3}))
    cases.append((["--model_dir", str(model_dir), "--repo_id", "user/egma", "--eval_report",
                   str(tmp_path / "nokey.json")], "nokey.json: missing key 'split'"))
    for args, message in cases:
        with pytest.raises(SystemExit, match=message):
            push_script.main([*args, "--dry_run", str(staged)])
        assert not staged.exists()
    (tmp_path / "a_file").write_text("keep me")
    with pytest.raises(SystemExit, match="--dry_run .*a_file is a file"):
        push_script.main(["--model_dir", str(model_dir), "--repo_id", "user/egma", "--dry_run",
                          str(tmp_path / "a_file")])
    assert push_script.main(["--model_dir", str(model_dir), "--repo_id", "user/egma", "--eval_report", str(report),
                             "--dry_run", str(staged)]) == 0
    assert (staged / "README.md").is_file() and (staged / "model.safetensors").is_file()


PUSH_BAD_INPUTS = textwrap.dedent("""
    import json, sys
    from tests.helpers import load_example
    push = load_example("push_to_hub")
    outcomes = []
    for args in json.loads(sys.argv[1]):
        try:
            outcomes.append(["returned", push.main(args)])
        except SystemExit as stop:
            outcomes.append(["stopped", str(stop)])
    print(json.dumps(outcomes))
""")


@pytest.mark.slow
def test_push_with_bad_inputs_sends_nothing_to_the_hub(tmp_path, model_dir, bert_dir):
    broken = tmp_path / "broken.json"
    broken.write_text('{"dataset": "rsna", "split": "test", "num_images": 3, "zero_shot": {"mean_auroc": NaN}}')
    runs = [["--model_dir", str(bert_dir), "--repo_id", "user/egma"],
            ["--model_dir", str(model_dir), "--repo_id", "user/x--y"],
            ["--model_dir", str(model_dir), "--repo_id", "user/egma", "--eval_report", str(broken)]]
    with HubStandIn() as hub:
        env = {name: value for name, value in os.environ.items() if not name.startswith(("HF_", "TRANSFORMERS_"))}
        env.update(HF_ENDPOINT=hub.url, HF_TOKEN="hf_stand_in", HF_HOME=str(tmp_path / "home"),
                   PYTHONPATH=str(REPO_ROOT))
        result = subprocess.run([sys.executable, "-c", PUSH_BAD_INPUTS, json.dumps(runs)], capture_output=True,
                                text=True, env=env, cwd=REPO_ROOT, timeout=180)
        assert result.returncode == 0, result.stderr[-3000:]
        outcomes = json.loads(result.stdout.strip().splitlines()[-1])
        assert hub.requests == [] and hub.repos == {}
    assert [kind for kind, _ in outcomes] == ["stopped"] * 3
    assert "not an EGMA config" in outcomes[0][1] and "user/x--y" in outcomes[1][1]
    assert "broken.json" in outcomes[2][1] and "NaN" in outcomes[2][1]


# ----------------------------------------------------------------------------------------------------------------
# Analysis and plots


def test_gaze_agreement_counts_non_finite_maps_and_checks_the_threshold():
    similarity = np.random.default_rng(0).random((3, 4, 4))
    gaze = np.zeros((3, 4, 4))
    gaze[:, 1, 1] = 1.0
    gaze[1, 0, 0] = np.nan
    similarity[2, 2, 2] = np.inf
    result = gaze_agreement(similarity, gaze)
    assert result["skipped"] == {"non_finite": 2} and result["scored"] == [0]
    for threshold in (1.0, -0.5, float("nan")):
        with pytest.raises(ValueError, match="threshold must be in"):
            gaze_agreement(similarity, gaze, threshold=threshold)


def test_confusion_matrix_plot_checks_its_shape():
    with pytest.raises(ValueError, match=r"matrix must be \(classes, classes\) = \(3, 3\)"):
        plot_confusion_matrix(np.eye(2), ["a", "b", "c"])
