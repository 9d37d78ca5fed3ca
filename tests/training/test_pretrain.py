"""examples/pretrain.py end to end (a tiny run, exact resume after SIGKILL, two real processes) and
egma_hf.training's settings and loop in-process (bad settings, config files, loss presets, a NaN loss)."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from egma_hf.training import TrainingSettings, build_model_and_processor, train
from tests.helpers import REPO_ROOT, start_and_kill_when

pytestmark = pytest.mark.slow  # trains or starts processes: excluded from the fast loop, `pytest -m "not slow"`

SCRIPT = REPO_ROOT / "examples" / "pretrain.py"
TINY = ["--synthetic_samples", "48", "--batch_size", "8", "--epochs", "2", "--eval_every", "3",
        "--checkpoint_every", "2", "--warmup_steps", "2"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("egma-cache"))


def run(args, cache, timeout=300, launcher=(sys.executable,)):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    result = subprocess.run([*launcher, str(SCRIPT), *args, "--cache_dir", cache], capture_output=True, text=True,
                            env=env, cwd=REPO_ROOT, timeout=timeout)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout + result.stderr


def weights(path):
    return load_file(str(Path(path) / "model.safetensors"))


def test_tiny_run_saves_a_model_the_pipeline_loads(tmp_path, cache):
    from PIL import Image
    from transformers import pipeline

    import egma_hf  # noqa: F401  (registers EGMA with the Auto classes)

    out = tmp_path / "run"
    log = run([*TINY, "--output_dir", str(out)], cache)
    assert "processes 1, global batch 8" in log
    results = json.loads((out / "eval_results.json").read_text())
    assert 0.0 <= results["test"]["mean_auroc"] <= 1.0 and results["best_step"] is not None
    assert json.loads((out / "training_config.json").read_text())["losses"] == "egma"
    card = ModelCard.load(out / "README.md")  # the full model card template, filled in
    assert card.data.pipeline_tag == "zero-shot-image-classification"
    reported = [result.metric_value for result in card.data.eval_results]
    assert round(100 * results["test"]["mean_auroc"], 2) in reported  # model-index values are in percent
    assert "this model has not seen real X-rays" in card.text
    classifier = pipeline("zero-shot-image-classification", model=str(out))
    image = next(Path(cache).glob("synthetic-48-seed0/patient_*/CXR-JPG/s*/*.jpg"))
    scores = classifier(Image.open(image), candidate_labels=["pleural effusion", "no pleural effusion"])
    assert abs(sum(s["score"] for s in scores) - 1.0) < 1e-4


def test_resume_after_sigkill_ends_with_the_same_weights(tmp_path, cache):
    # 30 training readings in batches of 8: 3 steps per epoch; with a checkpoint every 2 steps the kill lands after
    # step 2 or 4, so the resumed run starts in the middle of an epoch (skipping batches already seen)
    settings = TINY
    reference = tmp_path / "uninterrupted"
    run([*settings, "--output_dir", str(reference)], cache)

    killed = tmp_path / "killed"
    start_and_kill_when([sys.executable, str(SCRIPT), *settings, "--output_dir", str(killed), "--cache_dir", cache],
                        killed / "checkpoints" / "step_0000002", cwd=REPO_ROOT)
    assert not (killed / "model.safetensors").exists()  # it really died mid-run

    log = run([*settings, "--output_dir", str(killed), "--resume", "latest"], cache)
    assert "resumed from" in log
    expected, actual = weights(reference), weights(killed)
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0)


def test_two_processes_report_the_global_batch(tmp_path, cache):
    launcher = (sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no")
    log = run([*TINY, "--output_dir", str(tmp_path / "ddp"), "--max_steps", "2"], cache, launcher=launcher)
    assert "processes 2, global batch 16" in log
    assert (tmp_path / "ddp" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--gaze_fraction", "1.5"], "--gaze_fraction must be in [0, 1]"),
        (["--data", "/nonexistent/mimic-eye"], "--data: /nonexistent/mimic-eye does not exist"),
        (["--init_from", "/nonexistent/model"], "--init_from: /nonexistent/model does not exist"),
        (["--vision_model", "./no-such-dir", "--text_model", "./no-such-dir"],
         "--vision_model: ./no-such-dir does not exist"),
    ],
)
def test_bad_settings_stop_before_training(tmp_path, args, message):
    with pytest.raises(SystemExit, match=message.replace("[", r"\[").replace("]", r"\]")):
        train(TrainingSettings.from_args([*args, "--output_dir", str(tmp_path / "out")]))
    assert not (tmp_path / "out").exists()


def test_output_dir_of_a_different_run_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    # written by an older version: max_steps_this_run is no setting any more, and does not count as a difference
    previous = {**dataclasses.asdict(TrainingSettings()), "lr": 1.0, "max_steps_this_run": None}
    (out / "training_config.json").write_text(json.dumps(previous))
    with pytest.raises(SystemExit, match=r"holds a different run \(settings differ: \['lr', 'output_dir'\]\)"):
        train(TrainingSettings(output_dir=str(out)))
    (out / "training_config.json").unlink()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="not empty and holds no run"):
        train(TrainingSettings(output_dir=str(out)))


def test_config_file_equals_flags(tmp_path):
    (tmp_path / "run.yaml").write_text("lr: 0.0005\nlosses: egf\ngaze_fraction: 0.1\n")
    from_file = TrainingSettings.from_args(["--config", str(tmp_path / "run.yaml")])
    from_flags = TrainingSettings.from_args(["--lr", "0.0005", "--losses", "egf", "--gaze_fraction", "0.1"])
    assert dataclasses.replace(from_file, config=None) == from_flags
    assert from_flags == TrainingSettings(lr=0.0005, losses="egf", gaze_fraction=0.1)  # flags and Python agree
    assert TrainingSettings.from_args(["--config", str(tmp_path / "run.yaml"), "--lr", "0.01"]).lr == 0.01
    (tmp_path / "bad.yaml").write_text("learning_rate: 1\n")
    with pytest.raises(SystemExit):
        TrainingSettings.from_args(["--config", str(tmp_path / "bad.yaml")])


@pytest.mark.parametrize("preset,expected", [
    ("egma", (1.0, 1.0, 1.0, 1.0)), ("egf", (1.0, 1.0, 1.0, 0.0)), ("egm", (1.0, 0.0, 0.0, 1.0)),
    ("mlce", (1.0, 1.0, 0.0, 0.0)), ("no_gaze", (1.0, 0.0, 1.0, 0.0)), ("clip", (1.0, 0.0, 0.0, 0.0)),
])
def test_loss_presets_set_the_ablation_weights(tmp_path, preset, expected):
    import datasets

    settings = TrainingSettings.from_args(["--losses", preset])
    readings = datasets.Dataset.from_dict({"report": ["No effusion. Small left opacity."]})
    model, _ = build_model_and_processor(settings, readings, tmp_path)
    config = model.config
    assert (config.global_loss_weight, config.mlce_loss_weight, config.fine_grained_loss_weight,
            config.egm_loss_weight) == expected


def test_gaze_fraction_zero_trains_without_gaze(tmp_path, cache):
    log = run([*TINY, "--output_dir", str(tmp_path / "nogaze"), "--gaze_fraction", "0", "--max_steps", "2"], cache)
    assert "gaze kept on 0 training readings" in log


def test_a_non_finite_loss_stops_the_run_and_names_the_batch(tmp_path, cache, monkeypatch):
    from egma_hf.losses import EGMALoss

    original = EGMALoss.__call__

    def poisoned(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(EGMALoss, "__call__", poisoned)
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 0 on readings \[.+\]: \{'loss': nan"):
        train(TrainingSettings.from_args([*TINY, "--output_dir", str(tmp_path / "nan"), "--cache_dir", cache]))


def test_bf16_run_logs_to_tensorboard(tmp_path, cache):
    launcher = (sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
                "--mixed_precision", "bf16", "--dynamo_backend", "no")
    out = tmp_path / "bf16"
    run([*TINY, "--output_dir", str(out), "--max_steps", "2", "--report_to", "tensorboard"], cache, launcher=launcher)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next(out.glob("egma*")))).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "egm_loss", "mlce_loss", "logit_scale", "lr", "samples_per_s", "memory_mb"} <= tags
    assert all(torch.isfinite(torch.tensor(e.value)) for e in events.Scalars("loss"))


def test_pretrained_towers_continued_pretraining_and_a_real_data_root(tmp_path, cache):
    """--vision_model/--text_model from local dirs, then --init_from that run, on --data pointing at a MIMIC-EYE
    root."""
    from egma_hf import EGMAModel
    from tests.helpers import TINY_BERT, make_tokenizer, tiny_config

    reference = EGMAModel(tiny_config(text_config=dict(TINY_BERT, vocab_size=make_tokenizer().vocab_size)))
    reference.vision_model.save_pretrained(tmp_path / "vision")
    reference.text_model.save_pretrained(tmp_path / "text")
    make_tokenizer().save_pretrained(tmp_path / "text")
    from egma_hf.data import make_synthetic_mimic_eye

    mimic_eye = make_synthetic_mimic_eye(tmp_path / "mimic-eye", num_samples=48, seed=1)

    first = tmp_path / "towers"
    log = run([*TINY, "--output_dir", str(first), "--max_steps", "2", "--data", str(mimic_eye),
               "--vision_model", str(tmp_path / "vision"), "--text_model", str(tmp_path / "text")], cache)
    assert f"MIMIC-EYE {mimic_eye}" in log
    trained = EGMAModel.from_pretrained(first)
    assert trained.config.vision_config.embed_dim == reference.config.vision_config.embed_dim

    second = tmp_path / "continued"
    run([*TINY, "--output_dir", str(second), "--max_steps", "2", "--data", str(mimic_eye), "--init_from", str(first),
         "--losses", "egf"], cache)
    continued = EGMAModel.from_pretrained(second)
    assert continued.config.egm_loss_weight == 0.0 and continued.config.mlce_loss_weight == 1.0
    assert not torch.equal(continued.visual_projection.weight, trained.visual_projection.weight)


def test_a_callers_accelerator_must_accumulate_as_the_settings_say(tmp_path):
    from egma_hf.training import make_accelerator

    settings = TrainingSettings(gradient_accumulation_steps=2, output_dir=str(tmp_path / "out"))
    with pytest.raises(ValueError, match=r"accumulates gradients over 1 steps and the settings' "
                                         r"gradient_accumulation_steps is 2"):
        train(settings, make_accelerator(gradient_accumulation_steps=1))
    assert not (tmp_path / "out").exists()


def test_stop_after_steps_then_resume_on_the_callers_accelerator(tmp_path, cache):
    """Two train() calls on one Accelerator: the first stops as a crash would, the second resumes and finishes, and
    saves only its own prepared objects."""
    from egma_hf.training import list_checkpoints, make_accelerator

    accelerator = make_accelerator(num_threads=1)
    settings = TrainingSettings.from_args([*TINY, "--output_dir", str(tmp_path / "run"), "--cache_dir", cache])
    stopped = train(settings, accelerator, stop_after_steps=2)
    assert (stopped.steps, stopped.stopped_early, stopped.test) == (2, True, None)
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_0000002"]
    assert not (tmp_path / "run" / "model.safetensors").exists()

    done = train(dataclasses.replace(settings, resume="latest"), accelerator)
    assert (done.steps, done.stopped_early) == (6, False) and done.best_step in (3, 6)
    results = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    assert done.test["mean_auroc"] == results["test"]["mean_auroc"] and done.best_step == results["best_step"]
    # the checkpoints of the second call hold its model and optimiser only, not the first call's as well
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints" / "step_0000006").glob("*_1.*")) == []
