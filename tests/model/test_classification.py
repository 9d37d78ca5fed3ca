"""EGMAForImageClassification: pretrained image tower + linear head, the losses it picks, a linear probe."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForImageClassification

from egma_hf import EGMAForImageClassification, EGMAModel
from tests.helpers import WITHOUT_EGMA_HF, tiny_config

PIXELS = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def pretrained(tmp_path):
    torch.manual_seed(0)
    model = EGMAModel(tiny_config())
    model.save_pretrained(tmp_path / "egma")
    return model, tmp_path / "egma"


def test_head_on_the_pretrained_image_tower(pretrained):
    egma, path = pretrained
    classifier = EGMAForImageClassification.from_pretrained(path, num_labels=5)
    for name, tensor in egma.vision_model.state_dict().items():
        torch.testing.assert_close(classifier.vision_model.state_dict()[name], tensor)
    assert not hasattr(classifier, "text_model")
    logits = classifier.eval()(pixel_values=PIXELS).logits
    assert logits.shape == (4, 5)
    pooled = egma.eval().vision_model(pixel_values=PIXELS).pooler_output  # the un-projected pooled feature
    torch.testing.assert_close(logits, classifier.classifier(pooled))
    assert isinstance(AutoModelForImageClassification.from_pretrained(path, num_labels=2), EGMAForImageClassification)


def test_losses_follow_the_problem_type(pretrained):
    _, path = pretrained
    multi = EGMAForImageClassification.from_pretrained(path, num_labels=3, problem_type="multi_label_classification")
    targets = torch.tensor([[1.0, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0]])
    out = multi(pixel_values=PIXELS, labels=targets)
    torch.testing.assert_close(out.loss, F.binary_cross_entropy_with_logits(out.logits, targets))
    single = EGMAForImageClassification.from_pretrained(path, num_labels=2)
    ids = torch.tensor([0, 1, 1, 0])
    out = single(pixel_values=PIXELS, labels=ids)  # integer labels, no problem_type: single-label
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, ids))
    with pytest.raises(ValueError, match=r"shape \(4, 3\)"):
        multi(pixel_values=PIXELS, labels=torch.ones(4, 2))


def test_linear_probe_trains_only_the_head_and_round_trips(pretrained, tmp_path):
    _, path = pretrained
    model = EGMAForImageClassification.from_pretrained(path, num_labels=2)
    model.freeze_vision_model()
    before = {k: v.clone() for k, v in model.vision_model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    labels = torch.tensor([0, 1, 0, 1])
    first = model.train()(pixel_values=PIXELS, labels=labels).loss
    assert model.training and model.classifier.training and not model.vision_model.training  # frozen = eval
    for _ in range(20):
        optimizer.zero_grad()
        model(pixel_values=PIXELS, labels=labels).loss.backward()
        optimizer.step()
    assert model(pixel_values=PIXELS, labels=labels).loss < first
    for name, tensor in model.vision_model.state_dict().items():  # buffers (e.g. batch-norm statistics) too
        torch.testing.assert_close(tensor, before[name])
    model.save_pretrained(tmp_path / "probe")
    reloaded = EGMAForImageClassification.from_pretrained(tmp_path / "probe")
    torch.testing.assert_close(reloaded.eval()(pixel_values=PIXELS).logits, model.eval()(pixel_values=PIXELS).logits)


REMOTE_CLASSIFIER_SCRIPT = WITHOUT_EGMA_HF + """
import json, torch
from transformers import AutoModelForImageClassification
model = AutoModelForImageClassification.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
pixels = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
print(json.dumps({"module": type(model).__module__, "logits": model(pixel_values=pixels).logits.tolist()}))
"""


@pytest.mark.slow
def test_a_saved_classifier_loads_with_remote_code_without_egma_hf(pretrained, tmp_path):
    _, path = pretrained
    model = EGMAForImageClassification.from_pretrained(path, num_labels=3).eval()
    model.save_pretrained(tmp_path / "classifier")
    auto_map = json.loads((tmp_path / "classifier" / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForImageClassification"] == "modeling_egma.EGMAForImageClassification"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), PYTHONPATH="")
    result = subprocess.run([sys.executable, "-c", REMOTE_CLASSIFIER_SCRIPT, str(tmp_path / "classifier")],
                            capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["module"].startswith("transformers_modules")
    torch.testing.assert_close(torch.tensor(report["logits"]), model(pixel_values=PIXELS).logits, atol=1e-5, rtol=1e-5)
