"""push_to_hub and from_pretrained over HTTP, against the local Hub stand-in in tests/hub_stand_in.py.

huggingface_hub reads HF_ENDPOINT and HF_HOME once, on import (its constants, and the HfApi objects it and
transformers build from them), so the client side runs in fresh interpreters whose environment points at the stand-in,
each with its own empty HF_HOME. The parent only builds the same seeded models and checks what the stand-in holds.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load, load_file

from egma_hf import EGMAImageProcessor, EGMAModel, EGMAProcessor
from tests.helpers import GRID, IMAGE_SIZE, REPO_ROOT, WITHOUT_EGMA_HF, make_batch, make_tokenizer, tiny_config
from tests.hub_stand_in import HubStandIn

pytestmark = pytest.mark.slow  # trains or starts processes: excluded from the fast loop, `pytest -m "not slow"`

REPO = "user/egma-tiny"

PUSH_SCRIPT = """
import json, sys
from tests.scripts.test_hub import tiny_model, tiny_processor
repo, seeds = sys.argv[1], sys.argv[2:]
processor, shas = tiny_processor(), []
for seed in seeds:
    tiny_model(int(seed)).push_to_hub(repo)
    shas.append(processor.push_to_hub(repo).oid)
print(json.dumps(shas))
"""

LOAD_SCRIPT = """
import json, sys, torch
from egma_hf import EGMAModel, EGMAProcessor
from tests.helpers import make_batch
repo, revisions, logits = sys.argv[1], sys.argv[2:], {}
for revision in revisions:
    model = EGMAModel.from_pretrained(repo, revision=revision).eval()
    processor = EGMAProcessor.from_pretrained(repo, revision=revision)
    with torch.no_grad():
        logits[revision] = model(**make_batch(processor)).logits_per_image.tolist()
print(json.dumps(logits))
"""

REMOTE_CODE_SCRIPT = WITHOUT_EGMA_HF + """
import json, torch

from PIL import Image
from transformers import AutoModel, AutoProcessor, pipeline
repo, image = sys.argv[1], Image.open(sys.argv[2])
model = AutoModel.from_pretrained(repo, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(repo, trust_remote_code=True)
with torch.no_grad():
    logits = model(**processor(images=[image], text=["mild cardiomegaly .", "no pleural effusion ."])).logits_per_image
classifier = pipeline("zero-shot-image-classification", model=repo, trust_remote_code=True)
scores = classifier(image, candidate_labels=["edema", "pneumonia"], hypothesis_template="{}")
print(json.dumps({"module": type(model).__module__, "logits": logits.tolist(),
                  "scores": {s["label"]: s["score"] for s in scores}}))
"""

MISSING_REPO_SCRIPT = """
import json
from egma_hf import EGMAModel
try:
    EGMAModel.from_pretrained("user/no-such-repo")
except Exception as error:
    print(json.dumps({"types": [cls.__name__ for cls in type(error).__mro__], "message": str(error),
                      "cause": type(error.__cause__).__name__}))
"""


def tiny_model(seed: int) -> EGMAModel:
    torch.manual_seed(seed)
    return EGMAModel(tiny_config(global_loss_weight=1.0)).eval()


def tiny_processor() -> EGMAProcessor:
    return EGMAProcessor(image_processor=EGMAImageProcessor(size=IMAGE_SIZE, gaze_grid_size=GRID),
                         tokenizer=make_tokenizer())


def run_client(hub: HubStandIn, home, script: str, *args: str):
    """Run `script` in a fresh interpreter that talks to `hub`; return the JSON it prints last."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_ENDPOINT=hub.url, HF_TOKEN="hf_stand_in", HF_HOME=str(home), PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env,
                            cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def logits_of(model, processor):
    with torch.no_grad():
        return model(**make_batch(processor)).logits_per_image


@pytest.fixture(scope="module")
def hub():
    with HubStandIn() as server:
        yield server


@pytest.fixture(scope="module")
def pushed(hub, tmp_path_factory):
    """The sha of main after pushing the seed-0 model and then the processor to REPO."""
    [sha] = run_client(hub, tmp_path_factory.mktemp("push"), PUSH_SCRIPT, REPO, "0")
    return sha


def test_push_stores_weights_code_and_processor(hub, pushed, tmp_path):
    files = hub.files(REPO)
    assert set(files) >= {
        "README.md", "config.json", "model.safetensors", "configuration_egma.py", "modeling_egma.py", "losses.py",
        "distributed.py", "image_processing_egma.py", "processing_egma.py", "processor_config.json",
        "tokenizer.json", "tokenizer_config.json",
    }
    assert len(hub.repos[REPO]) == 3  # created empty, then one commit per push
    assert json.loads(files["config.json"])["auto_map"]["AutoModel"] == "modeling_egma.EGMAModel"
    assert json.loads(files["processor_config.json"])["auto_map"]["AutoProcessor"] == "processing_egma.EGMAProcessor"
    tiny_model(0).save_pretrained(tmp_path)
    expected, stored = load_file(tmp_path / "model.safetensors"), load(files["model.safetensors"])
    assert stored.keys() == expected.keys()
    for name, tensor in stored.items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0)


def test_from_pretrained_over_http_gives_identical_outputs(hub, pushed, processor, tmp_path):
    logits = run_client(hub, tmp_path, LOAD_SCRIPT, REPO, "main")["main"]
    torch.testing.assert_close(torch.tensor(logits), logits_of(tiny_model(0), processor), rtol=0, atol=1e-6)
    assert f"GET /api/models/{REPO}/revision/main" in hub.requests
    assert f"GET /{REPO}/resolve/{pushed}/model.safetensors" in hub.requests  # main was pinned to its sha


def test_trust_remote_code_over_http_without_egma_hf(hub, pushed, processor, tmp_path):
    image_path = tmp_path / "xray.png"
    Image.fromarray((np.random.default_rng(0).random((40, 36)) * 255).astype(np.uint8)).save(image_path)
    report = run_client(hub, tmp_path / "hf_home", REMOTE_CODE_SCRIPT, REPO, str(image_path))
    assert report["module"].startswith("transformers_modules")  # the code downloaded from the stand-in
    for code in ("configuration_egma.py", "modeling_egma.py", "losses.py", "distributed.py", "processing_egma.py"):
        assert f"GET /{REPO}/resolve/{pushed}/{code}" in hub.requests
    model, image = tiny_model(0), Image.open(image_path)
    batch = processor(images=[image], text=["mild cardiomegaly .", "no pleural effusion ."])
    prompts = make_tokenizer()(["edema", "pneumonia"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch).logits_per_image
        probs = model(pixel_values=batch["pixel_values"], **prompts).logits_per_image.softmax(-1)[0]
    torch.testing.assert_close(torch.tensor(report["logits"]), expected, rtol=0, atol=1e-6)
    assert report["scores"] == pytest.approx({"edema": probs[0].item(), "pneumonia": probs[1].item()}, abs=1e-6)


def test_second_push_is_a_new_commit_and_old_revision_still_loads(hub, processor, tmp_path):
    repo = "user/egma-history"
    first, second = run_client(hub, tmp_path / "push", PUSH_SCRIPT, repo, "0", "1")
    # created empty, then per round one commit for the model and one for the processor
    assert [commit.sha for commit in hub.repos[repo]][2::2] == [first, second]
    assert hub.files(repo, first)["model.safetensors"] != hub.files(repo)["model.safetensors"]
    logits = run_client(hub, tmp_path / "load", LOAD_SCRIPT, repo, first, "main")
    torch.testing.assert_close(torch.tensor(logits[first]), logits_of(tiny_model(0), processor), rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.tensor(logits["main"]), logits_of(tiny_model(1), processor), rtol=0, atol=1e-6)


def test_missing_repo_raises_an_error_naming_it(hub, tmp_path):
    report = run_client(hub, tmp_path, MISSING_REPO_SCRIPT)
    assert "OSError" in report["types"] and "user/no-such-repo" in report["message"]
    assert report["cause"] == "RepositoryNotFoundError"
    assert "GET /api/models/user/no-such-repo/revision/main" in hub.requests  # answered 404 RepoNotFound


PUSH_SCRIPT_REPO = "user/egma-card"

REMOTE_PIPELINE_SCRIPT = WITHOUT_EGMA_HF + """
import json
from PIL import Image
from transformers import pipeline
repo, image = sys.argv[1], Image.open(sys.argv[2])
classifier = pipeline("egma-zero-shot-image-classification", model=repo, trust_remote_code=True)
print(json.dumps(classifier(image, class_prompts="chexpert_findings")))
"""


@pytest.fixture(scope="module")
def pushed_with_script(hub, tmp_path_factory):
    """A tiny model with a training config and an evaluation report, published by examples/push_to_hub.py."""
    from egma_hf.evaluation import evaluate_single_label

    root = tmp_path_factory.mktemp("script")
    model_dir = root / "model"
    tiny_model(0).save_pretrained(model_dir)
    tiny_processor().save_pretrained(model_dir)
    (model_dir / "training_config.json").write_text(json.dumps({"data": None, "synthetic_samples": 640,
                                                                "gaze_fraction": 0.1, "epochs": 3, "seed": 0}))
    rng = np.random.default_rng(0)
    truth = rng.choice(["Normal", "Pneumonia"], 40)
    report = {"dataset": "rsna", "dataset_name": "RSNA Pneumonia", "split": "test", "num_images": 40,
              "model": str(model_dir), "prompt_set": "rsna", "ensemble": "max",
              "zero_shot": evaluate_single_label(["Normal", "Pneumonia"], rng.random((40, 2)), truth, 100)}
    (root / "report.json").write_text(json.dumps(report))
    env = {name: value for name, value in os.environ.items() if not name.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_ENDPOINT=hub.url, HF_TOKEN="hf_stand_in", HF_HOME=str(root / "home"), PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run(
        [sys.executable, "examples/push_to_hub.py", "--model_dir", str(model_dir), "--repo_id", PUSH_SCRIPT_REPO,
         "--eval_report", str(root / "report.json"), "--license", "cc-by-nc-4.0", "--datasets", "mimic-eye"],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return report


def test_push_script_uploads_one_commit_with_code_processor_and_a_parsable_card(hub, pushed_with_script):
    from huggingface_hub import ModelCard

    from egma_hf.reporting import metric_rows

    assert len(hub.repos[PUSH_SCRIPT_REPO]) == 2  # created empty, then everything in one commit
    files = hub.files(PUSH_SCRIPT_REPO)
    assert {"pipeline_egma.py", "zero_shot.py", "prompts.py", "processor_config.json", "README.md"} <= set(files)
    config = json.loads(files["config.json"])
    assert config["custom_pipelines"]["egma-zero-shot-image-classification"]["impl"] == (
        "pipeline_egma.EGMAZeroShotImageClassificationPipeline")
    card = ModelCard(files["README.md"].decode())
    data = card.data
    assert data.pipeline_tag == "zero-shot-image-classification" and data.library_name == "transformers"
    assert data.license == "cc-by-nc-4.0" and data.datasets == ["mimic-eye"]
    expected = {row["metric"]: round(100 * row["value"], 2) for row in metric_rows(pushed_with_script)}
    assert {r.metric_name: r.metric_value for r in data.eval_results} == expected
    assert {r.dataset_type for r in data.eval_results} == {"rsna"}
    accuracy = pushed_with_script["zero_shot"]["accuracy"]
    assert f"{100 * accuracy['value']:.1f} ({100 * accuracy['low']:.1f}–{100 * accuracy['high']:.1f})" in card.text
    assert "**10%** of the training readings" in card.text and "not a medical device" in card.text
    assert f'model="{PUSH_SCRIPT_REPO}"' in card.text


def test_pushed_model_loads_with_identical_outputs_and_runs_the_medical_pipeline_remotely(
        hub, pushed_with_script, processor, tmp_path):
    from egma_hf import zero_shot_classify

    logits = run_client(hub, tmp_path / "load", LOAD_SCRIPT, PUSH_SCRIPT_REPO, "main")["main"]
    torch.testing.assert_close(torch.tensor(logits), logits_of(tiny_model(0), processor), rtol=0, atol=1e-6)
    image_path = tmp_path / "xray.png"
    Image.fromarray((np.random.default_rng(3).random((44, 40)) * 255).astype(np.uint8)).save(image_path)
    scores = run_client(hub, tmp_path / "remote", REMOTE_PIPELINE_SCRIPT, PUSH_SCRIPT_REPO, str(image_path))
    names, probabilities = zero_shot_classify(tiny_model(0), processor, [Image.open(image_path)], "chexpert_findings")
    assert {e["label"]: e["score"] for e in scores} == pytest.approx(dict(zip(names, probabilities[0].tolist())),
                                                                     abs=1e-6)
