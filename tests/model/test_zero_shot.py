"""Medical zero-shot classification: prompt ensembles, multi-label pairs, class mapping by name, the registered
pipeline (installed and as remote code), and the evaluation of its predictions."""

import json
import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import pipeline

from egma_hf import EGMAZeroShotImageClassificationPipeline, ZeroShotClassifier, zero_shot_classify
from egma_hf.evaluation import evaluate_multi_label, evaluate_single_label, zero_shot_auroc
from egma_hf.pipeline_egma import CUSTOM_PIPELINES, TASK
from egma_hf.zero_shot import embed_pixel_values, embed_prompts, resolve_class_prompts
from tests.helpers import WITHOUT_EGMA_HF

SINGLE = {
    "Pneumonia": ["there is a lower lobe opacity .", "pneumonia .", "focal consolidation at the right base ."],
    "Normal": ["the lungs are clear .", "no focal consolidation ."],
    "Effusion": ["small left pleural effusion ."],
}
PAIRS = {
    "Cardiomegaly": (["the heart is enlarged .", "mild cardiomegaly ."], ["the heart size is normal ."]),
    "Pleural Effusion": (["pleural effusion ."], ["no pleural effusion .", "the lungs are clear ."]),
}


def images(count: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray((rng.random((36 + i, 40)) * 255).astype(np.uint8)) for i in range(count)]


def image_embeds_of(model, processor, pictures) -> torch.Tensor:
    pixel_values = processor.image_processor(images=pictures, return_tensors="pt")["pixel_values"]
    return embed_pixel_values(model.eval(), pixel_values)


def test_max_and_mean_ensembles_follow_their_equations(model, processor, tokenizer):
    classifier = {e: ZeroShotClassifier.from_prompts(model, tokenizer, SINGLE, ensemble=e) for e in ("max", "mean")}
    embeds = image_embeds_of(model, processor, images(4))
    scale = model.logit_scale.exp().item()
    assert classifier["max"].class_names == ["Effusion", "Normal", "Pneumonia"]
    for column, name in enumerate(classifier["max"].class_names):
        prompts = embed_prompts(model, tokenizer, SINGLE[name])
        torch.testing.assert_close(classifier["max"].logits(embeds)[:, column], scale * (embeds @ prompts.t()).amax(1))
        mean = F.normalize(prompts.mean(0), dim=-1)
        torch.testing.assert_close(classifier["mean"].logits(embeds)[:, column], scale * embeds @ mean)
    probabilities = classifier["max"].probabilities(embeds)
    torch.testing.assert_close(probabilities.sum(1), torch.ones(4))
    assert classifier["max"].predict(embeds) == [classifier["max"].class_names[i] for i in probabilities.argmax(1)]


def test_multi_label_scores_are_the_softmax_over_each_positive_negative_pair(model, processor, tokenizer):
    classifier = ZeroShotClassifier.from_prompts(model, tokenizer, PAIRS, ensemble="max")
    assert classifier.multi_label
    embeds = image_embeds_of(model, processor, images(3))
    scale = model.logit_scale.exp().item()
    for column, (_, (positive, negative)) in enumerate(sorted(PAIRS.items())):
        pos = scale * (embeds @ embed_prompts(model, tokenizer, positive).t()).amax(1)
        neg = scale * (embeds @ embed_prompts(model, tokenizer, negative).t()).amax(1)
        expected = torch.stack([pos, neg], 1).softmax(1)[:, 0]
        torch.testing.assert_close(classifier.probabilities(embeds)[:, column], expected)
    same = ZeroShotClassifier.from_prompts(
        model, tokenizer, {k: {"positive": p, "negative": n} for k, (p, n) in PAIRS.items()}, ensemble="max")
    torch.testing.assert_close(same.probabilities(embeds), classifier.probabilities(embeds))


def test_results_do_not_depend_on_class_order_even_for_a_constant_predictor(model, processor, tokenizer):
    pictures = images(12, seed=3)
    labels = ["Normal"] * 7 + ["Pneumonia"] * 3 + ["Effusion"] * 2
    results = []
    for seed in range(3):
        keys = list(SINGLE)
        random.Random(seed).shuffle(keys)
        names, probabilities = zero_shot_classify(model, processor, pictures, {k: SINGLE[k] for k in keys})
        results.append((names, probabilities, evaluate_single_label(names, probabilities, labels, num_bootstrap=50)))
    for names, probabilities, report in results[1:]:
        assert names == results[0][0]
        torch.testing.assert_close(probabilities, results[0][1])
        assert report == results[0][2]

    with torch.no_grad():  # every image now has the same (zero) embedding: all scores tie
        model.visual_projection.weight.zero_()
    for keys in (["Pneumonia", "Normal", "Effusion"], ["Effusion", "Normal", "Pneumonia"]):
        names, probabilities = zero_shot_classify(model, processor, pictures, {k: SINGLE[k] for k in keys})
        report = evaluate_single_label(names, probabilities, labels, num_bootstrap=50)
        assert report["constant_prediction"] == "Effusion"  # ties go to the first name in sorted order
        share = 2 / 12  # accuracy of always predicting "Effusion"; F1 of its class is 2p/(1+p), others 0
        assert report["accuracy"]["value"] == pytest.approx(share)
        assert report["macro_f1"]["value"] == pytest.approx(2 * share / (1 + share) / 3)
        assert report["majority_baseline"] == {"class": "Normal", "accuracy": pytest.approx(7 / 12),
                                               "macro_f1": pytest.approx(2 * (7 / 12) / (1 + 7 / 12) / 3)}


def test_single_label_report_matches_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    names = ["A", "B", "C"]
    truth = rng.choice(names, 60)
    probabilities = rng.random((60, 3))
    report = evaluate_single_label(names, probabilities, truth, num_bootstrap=20)
    predicted = np.array(names)[probabilities.argmax(1)]
    assert report["accuracy"]["value"] == pytest.approx(metrics.accuracy_score(truth, predicted))
    assert report["macro_f1"]["value"] == pytest.approx(metrics.f1_score(truth, predicted, average="macro"))
    assert report["confusion_matrix"] == metrics.confusion_matrix(truth, predicted, labels=names).tolist()
    for column, name in enumerate(names):
        assert report["auroc"][name] == pytest.approx(metrics.roc_auc_score(truth == name, probabilities[:, column]))
    assert report["accuracy"]["low"] <= report["accuracy"]["value"] <= report["accuracy"]["high"]


def test_multi_label_report_counts_findings_outside_the_prompt_set():
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.6], [0.1, 0.3]])
    labels = [["A"], ["B", "Support Devices"], ["A", "B"], []]
    report = evaluate_multi_label(["A", "B"], probabilities, labels, num_bootstrap=20)
    assert report["auroc"]["A"]["value"] == 1.0 and report["auroc"]["B"]["value"] == 1.0
    assert report["labels_not_scored"] == {"Support Devices": 1}
    assert report["positive_counts"] == {"A": 2, "B": 2}


@pytest.mark.parametrize(
    "class_prompts, message",
    [
        ({}, "non-empty dict"),
        ({"Normal": []}, "'Normal' has no prompts"),
        ({"Normal": "the lungs are clear ."}, "must be a list of strings"),
        ({"Normal": ["ok .", ""]}, "non-empty strings"),
        ({"Edema": ["edema ."], " Edema ": ["mild edema ."]}, "duplicate class name 'Edema'"),
        ({"A": ["a ."], "B": (["b ."], ["no b ."])}, "use one form for every class"),
        ({"A": {"positive": ["a ."]}}, "exactly the keys 'positive' and 'negative'"),
        ("chexpert_9x9", "unknown prompt set"),
    ],
)
def test_bad_class_prompts_are_refused_before_any_work(class_prompts, message):
    with pytest.raises(ValueError, match=message):
        resolve_class_prompts(class_prompts)


def test_labels_outside_the_classes_and_empty_sets_are_errors():
    with pytest.raises(ValueError, match=r"labels not in the prompt set's classes .*'Pneumothorax': 2"):
        evaluate_single_label(["Normal", "Pneumonia"], np.zeros((3, 2)), ["Normal", "Pneumothorax", "Pneumothorax"])
    with pytest.raises(ValueError, match="empty"):
        evaluate_single_label(["Normal"], np.zeros((0, 1)), [])
    with pytest.raises(ValueError, match=r"probabilities must be \(images, classes\)"):
        evaluate_single_label(["Normal", "Pneumonia"], np.zeros((2, 3)), ["Normal", "Normal"])


def test_built_in_prompt_sets_resolve(tokenizer):
    positives, negatives = resolve_class_prompts("chexpert_5x200")
    assert list(positives) == sorted(positives) and len(positives) == 5 and negatives is None
    assert all(len(prompts) <= 50 for prompts in positives.values())
    positives, negatives = resolve_class_prompts("rsna")
    assert set(positives) == {"Normal", "Pneumonia"}
    assert set(resolve_class_prompts("chexpert_findings")[1]) == set(resolve_class_prompts("chexpert_findings")[0])


def test_zero_shot_auroc_matches_the_multi_label_classifier(model, processor, tokenizer):
    pictures = images(6, seed=5)
    labels = [["Cardiomegaly"], [], ["Pleural Effusion", "Cardiomegaly"], ["Pleural Effusion"], [], ["Cardiomegaly"]]
    pixels = processor.image_processor(images=pictures, return_tensors="pt")["pixel_values"]
    result = zero_shot_auroc(model, tokenizer, [pixels[:4], pixels[4:]], labels, class_prompts=PAIRS)
    probabilities = ZeroShotClassifier.from_prompts(model, tokenizer, PAIRS, "mean").probabilities(
        image_embeds_of(model, processor, pictures))
    reference = evaluate_multi_label(["Cardiomegaly", "Pleural Effusion"], probabilities.numpy(), labels, 10)
    assert result["auroc"] == pytest.approx({k: v["value"] for k, v in reference["auroc"].items()})


class CountingTextCalls:
    def __init__(self, model):
        self.calls, self.original = 0, model.get_text_features

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.original(*args, **kwargs)


def test_pipeline_embeds_each_prompt_set_once(model, processor, tokenizer):
    counter = CountingTextCalls(model)
    model.get_text_features = counter
    classifier = pipeline(TASK, model=model, tokenizer=tokenizer, image_processor=processor.image_processor)
    assert isinstance(classifier, EGMAZeroShotImageClassificationPipeline)
    pictures = images(5, seed=7)
    first = classifier(pictures, class_prompts=SINGLE, batch_size=2)
    second = classifier(pictures[:2], class_prompts=SINGLE)
    assert counter.calls == 1  # 6 distinct prompts, one text batch, reused for 7 images in two calls
    classifier(pictures[:1], class_prompts=PAIRS)
    assert counter.calls == 2
    for a, b in zip(second, first[:2]):  # batch size 2 vs 1: equal up to float rounding
        assert [e["label"] for e in a] == [e["label"] for e in b]
        assert [e["score"] for e in a] == pytest.approx([e["score"] for e in b], abs=1e-6)

    names, probabilities = zero_shot_classify(model, processor, pictures, SINGLE)
    for row, result in zip(probabilities, first):
        assert [entry["label"] for entry in result] == [names[i] for i in row.argsort(descending=True)]
        assert [entry["score"] for entry in result] == pytest.approx(sorted(row.tolist(), reverse=True), abs=1e-6)
    top = classifier(pictures[0], class_prompts=SINGLE, top_k=1)
    assert len(top) == 1 and top[0]["label"] == first[0][0]["label"]


def test_pipeline_candidate_labels_match_the_standard_pipeline(model, processor, tokenizer):
    picture = images(1, seed=8)[0]
    labels = ["pneumonia", "mild cardiomegaly", "no pleural effusion"]
    kwargs = dict(model=model, tokenizer=tokenizer, image_processor=processor.image_processor)
    ours = pipeline(TASK, **kwargs)(picture, candidate_labels=labels)
    standard = pipeline("zero-shot-image-classification", **kwargs)(picture, candidate_labels=labels,
                                                                     hypothesis_template="{}")
    assert [e["label"] for e in ours] == [e["label"] for e in standard]
    assert [e["score"] for e in ours] == pytest.approx([e["score"] for e in standard], abs=1e-5)
    with pytest.raises(ValueError, match="exactly one of class_prompts"):
        pipeline(TASK, **kwargs)(picture)
    with pytest.raises(ValueError, match="distinct"):
        pipeline(TASK, **kwargs)(picture, candidate_labels=["edema", "edema"])


REMOTE_PIPELINE_SCRIPT = WITHOUT_EGMA_HF + textwrap.dedent(
    """
    import json
    from PIL import Image
    from transformers import pipeline
    path, image_path, prompts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    classifier = pipeline("egma-zero-shot-image-classification", model=path, trust_remote_code=True)
    image = Image.open(image_path)
    print(json.dumps({"module": type(classifier).__module__,
                      "single": classifier(image, class_prompts=prompts["single"], ensemble="mean"),
                      "pairs": classifier(image, class_prompts=prompts["pairs"])}))
    """
)


@pytest.mark.slow
def test_installed_and_remote_code_pipelines_load_from_a_saved_directory(model, processor, tmp_path):
    plain, shared = tmp_path / "plain", tmp_path / "shared"
    model.save_pretrained(plain)
    processor.save_pretrained(plain)
    picture = images(1, seed=9)[0]
    installed = pipeline(TASK, model=str(plain))  # egma_hf imported: the registry, no remote code
    names, probabilities = zero_shot_classify(model, processor, [picture], PAIRS)
    assert {e["label"]: e["score"] for e in installed(picture, class_prompts=PAIRS)} == pytest.approx(
        dict(zip(names, probabilities[0].tolist())), abs=1e-5)

    model.config.custom_pipelines = CUSTOM_PIPELINES  # as examples/push_to_hub.py does
    model.save_pretrained(shared)
    processor.save_pretrained(shared)
    assert (shared / "pipeline_egma.py").is_file() and (shared / "prompts.py").is_file()
    image_path = tmp_path / "xray.png"
    picture.save(image_path)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), PYTHONPATH="")
    prompts = json.dumps({"single": SINGLE, "pairs": PAIRS})
    result = subprocess.run([sys.executable, "-c", REMOTE_PIPELINE_SCRIPT, str(shared), str(image_path), prompts],
                            capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["module"].startswith("transformers_modules")
    for key, class_prompts, ensemble in (("single", SINGLE, "mean"), ("pairs", PAIRS, "max")):
        names, probabilities = zero_shot_classify(model, processor, [Image.open(image_path)], class_prompts, ensemble)
        expected = dict(zip(names, probabilities[0].tolist()))
        assert {e["label"]: e["score"] for e in report[key]} == pytest.approx(expected, abs=1e-5)
