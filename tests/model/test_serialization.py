"""save_pretrained / from_pretrained, Auto classes, remote code without egma_hf, and the transformers pipeline."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoProcessor, pipeline

from egma_hf import EGMAConfig, EGMAImageProcessor, EGMAModel, EGMAProcessor
from tests.helpers import TINY_SWIN, WITHOUT_EGMA_HF, make_batch, make_tokenizer, tiny_config


@pytest.fixture
def saved(tmp_path, model, processor):
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    return tmp_path


def outputs_of(model, batch):
    with torch.no_grad():
        out = model.eval()(**batch, return_loss=True)
    keys = ("loss", "mlce_loss", "fine_grained_loss", "egm_loss", "logits_per_image", "patch_embeds")
    return {k: out[k] for k in keys}


@pytest.mark.parametrize("loader", [EGMAModel, AutoModel], ids=["EGMAModel", "AutoModel"])
def test_round_trip_gives_identical_outputs(saved, model, processor, loader):
    batch = make_batch(processor)
    reloaded = loader.from_pretrained(saved)
    assert type(reloaded) is EGMAModel
    expected, actual = outputs_of(model, batch), outputs_of(reloaded, batch)
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0)


def test_config_round_trip_keeps_loss_recipe_and_auto_map(tmp_path):
    config = tiny_config(egm_text_weight=0.3, fine_grained_t2i_softmax_over="texts", mlce_reduction="gaze_samples")
    EGMAModel(config).save_pretrained(tmp_path)
    stored = json.loads((tmp_path / "config.json").read_text())
    assert set(stored["auto_map"]) >= {"AutoConfig", "AutoModel", "AutoModelForZeroShotImageClassification"}
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, EGMAConfig)
    assert (loaded.egm_text_weight, loaded.fine_grained_t2i_softmax_over, loaded.mlce_reduction) == (
        0.3, "texts", "gaze_samples")
    assert loaded.vision_config.model_type == "swin" and loaded.vision_config.embed_dim == TINY_SWIN["embed_dim"]


def test_processor_round_trip(saved, processor):
    reloaded = AutoProcessor.from_pretrained(saved)
    assert isinstance(reloaded, EGMAProcessor) and isinstance(reloaded.image_processor, EGMAImageProcessor)
    image_processor = AutoImageProcessor.from_pretrained(saved)
    assert isinstance(image_processor, EGMAImageProcessor) and image_processor.gaze_grid_size == 4
    expected, actual = make_batch(processor), make_batch(reloaded)
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0)


def test_from_vision_text_pretrained_loads_both_towers(tmp_path):
    torch.manual_seed(0)
    reference = EGMAModel(tiny_config())
    reference.vision_model.save_pretrained(tmp_path / "vision")
    reference.text_model.save_pretrained(tmp_path / "text")
    model = EGMAModel.from_vision_text_pretrained(str(tmp_path / "vision"), str(tmp_path / "text"), projection_dim=8,
                                                  egm_text_weight=0.3)
    assert model.config.egm_text_weight == 0.3
    for name, tensor in reference.vision_model.state_dict().items():
        torch.testing.assert_close(model.vision_model.state_dict()[name], tensor)
    for name, tensor in reference.text_model.state_dict().items():
        torch.testing.assert_close(model.text_model.state_dict()[name], tensor)
    assert torch.isclose(model.logit_scale, torch.tensor(model.config.logit_scale_init_value))


def test_from_vision_text_pretrained_reports_a_missing_path(tmp_path):
    with pytest.raises(OSError):
        EGMAModel.from_vision_text_pretrained(str(tmp_path / "nope"), str(tmp_path / "nope"))


REMOTE_CODE_SCRIPT = WITHOUT_EGMA_HF + textwrap.dedent(
    """
    import json
    import torch

    from PIL import Image
    from transformers import AutoModel, AutoProcessor, pipeline
    path, image_path = sys.argv[1], sys.argv[2]
    model = AutoModel.from_pretrained(path, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    image = Image.open(image_path)
    batch = processor(images=[image], text=["mild cardiomegaly .", "no pleural effusion ."])
    with torch.no_grad():
        logits = model.eval()(**batch).logits_per_image
    classifier = pipeline("zero-shot-image-classification", model=path, trust_remote_code=True)
    scores = classifier(image, candidate_labels=["edema", "pneumonia"], hypothesis_template="{}")
    print(json.dumps({"module": type(model).__module__, "logits": logits.tolist(),
                      "scores": {s["label"]: s["score"] for s in scores}}))
    """
)


@pytest.mark.slow
def test_trust_remote_code_loads_without_egma_hf(saved, model, processor, tmp_path):
    image_path = tmp_path / "xray.png"
    Image.fromarray((np.random.default_rng(0).random((40, 36)) * 255).astype(np.uint8)).save(image_path)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), PYTHONPATH="")
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_CODE_SCRIPT, str(saved), str(image_path)],
        capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["module"].startswith("transformers_modules")  # the copied code, not the package
    batch = processor(images=[Image.open(image_path)], text=["mild cardiomegaly .", "no pleural effusion ."])
    with torch.no_grad():
        expected = model.eval()(**batch).logits_per_image
        prompts = make_tokenizer()(["edema", "pneumonia"], padding=True, return_tensors="pt")
        probs = model(pixel_values=batch["pixel_values"], **prompts).logits_per_image.softmax(-1)[0]
    torch.testing.assert_close(torch.tensor(report["logits"]), expected, atol=1e-5, rtol=1e-5)
    assert report["scores"]["edema"] == pytest.approx(probs[0].item(), abs=1e-4)


def _expected_scores(model, processor, tokenizer, image, labels):
    pixels = processor.image_processor(image)["pixel_values"]
    prompts = tokenizer(labels, padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = model.eval()(pixel_values=pixels, **prompts).logits_per_image.softmax(-1)[0]
    return dict(zip(labels, probs.tolist()))


LABELS = ["pneumonia", "no pleural effusion", "mild cardiomegaly"]


def test_pipeline_with_model_instance(model, processor, tokenizer):
    image = Image.fromarray((np.random.default_rng(1).random((50, 40)) * 255).astype(np.uint8))
    classifier = pipeline("zero-shot-image-classification", model=model, tokenizer=tokenizer,
                          image_processor=processor.image_processor)
    result = classifier(image, candidate_labels=LABELS, hypothesis_template="{}")
    expected = _expected_scores(model, processor, tokenizer, image, LABELS)
    assert sorted(r["label"] for r in result) == sorted(LABELS)
    for entry in result:
        assert entry["score"] == pytest.approx(expected[entry["label"]], abs=1e-4)
    assert len({round(r["score"], 6) for r in result}) > 1  # the prompts are really told apart


def test_pipeline_from_saved_directory(saved, model, processor, tokenizer):
    image = Image.fromarray((np.random.default_rng(2).random((30, 60)) * 255).astype(np.uint8))
    classifier = pipeline("zero-shot-image-classification", model=str(saved))
    assert isinstance(classifier.model, EGMAModel)
    result = classifier([image, image], candidate_labels=LABELS, hypothesis_template="{}", batch_size=2)
    expected = _expected_scores(model, processor, tokenizer, image, LABELS)
    for entry in result[1]:
        assert entry["score"] == pytest.approx(expected[entry["label"]], abs=1e-4)
