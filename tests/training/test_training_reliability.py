"""The training entry points (examples/pretrain.py, finetune_classification.py, ablation.py) given bad input: a clear
error before any work, a corrupt checkpoint skipped with a warning or named in an error, never a hang, a deleted
input or NaN in a result."""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from egma_hf import EGMAImageProcessor, EGMAModel, EGMAProcessor
from egma_hf.evaluation import linear_probe
from egma_hf.evaluation.metrics import roc_auc
from egma_hf.evaluation.reports import percent_cell
from egma_hf.training import (
    TrainingSettings,
    build_tokenizer,
    check_splits,
    checkpoint_problem,
    list_checkpoints,
    resume_checkpoint,
    save_checkpoint,
    train,
)
from tests.helpers import (
    GRID,
    IMAGE_SIZE,
    REPO_ROOT,
    TINY_BERT,
    load_example,
    make_tokenizer,
    start_and_kill_when,
    tiny_config,
)

PRETRAIN = REPO_ROOT / "examples" / "pretrain.py"
# tests/training/test_pretrain.py's tiny run: 48 synthetic readings (30 train), batches of 8, 3 steps an epoch, 6 in all
TINY = ["--synthetic_samples", "48", "--batch_size", "8", "--epochs", "2", "--eval_every", "3",
        "--checkpoint_every", "2", "--warmup_steps", "2", "--num_threads", "1"]

finetune = load_example("finetune_classification")
ablation = load_example("ablation")


@pytest.fixture(scope="module")
def egma_dir(tmp_path_factory):
    """A tiny saved EGMA model with its processor."""
    folder = tmp_path_factory.mktemp("egma")
    torch.manual_seed(0)
    EGMAModel(tiny_config()).save_pretrained(folder)
    EGMAProcessor(EGMAImageProcessor(size=IMAGE_SIZE, gaze_grid_size=GRID), make_tokenizer()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A saved model of another type."""
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("bert")
    BertModel(BertConfig(**{k: v for k, v in TINY_BERT.items() if k != "model_type"})).save_pretrained(folder)
    return folder


def refused_before_any_work(argv, message, tmp_path):
    """Training with the settings of `argv` stops with `message` (a regular expression) and has written nothing."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    with pytest.raises(SystemExit, match=message):
        train(TrainingSettings.from_args([*argv, "--output_dir", str(out), "--cache_dir", str(cache)]))
    assert not out.exists() and not cache.exists()


def files_in(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------------------------
# pretrain.py: flags and config files


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], r"--epochs must be at least 1, got 0"),
    (["--epochs", "-3"], r"--epochs must be at least 1, got -3"),
    (["--gradient_accumulation_steps", "0"], r"--gradient_accumulation_steps must be at least 1, got 0"),
    (["--gradient_accumulation_steps", "-2"], r"--gradient_accumulation_steps must be at least 1, got -2"),
    (["--batch_size", "0"], r"--batch_size must be at least 1, got 0"),
    (["--batch_size", "-8"], r"--batch_size must be at least 1, got -8"),
    (["--lr", "nan"], r"--lr must be a positive number, got nan"),
    (["--lr", "-0.001"], r"--lr must be a positive number, got -0.001"),
    (["--lr", "inf"], r"--lr must be a positive number, got inf"),
    (["--weight_decay", "nan"], r"--weight_decay must be a number >= 0, got nan"),
    (["--global_loss_weight", "-1"], r"--global_loss_weight must be a number >= 0, got -1.0"),
    (["--max_steps", "0"], r"--max_steps must be at least 1, got 0"),
    (["--gaze_fraction", "1.5"], r"--gaze_fraction must be in \[0, 1\], got 1.5"),
    (["--gaze_fraction", "-0.1"], r"--gaze_fraction must be in \[0, 1\], got -0.1"),
    (["--gaze_fraction", "nan"], r"--gaze_fraction must be in \[0, 1\], got nan"),
    (["--keep_checkpoints", "0"], r"--keep_checkpoints must be at least 1, got 0"),
    (["--eval_every", "0"], r"--eval_every must be at least 1, got 0"),
    (["--checkpoint_every", "0"], r"--checkpoint_every must be at least 1, got 0"),
    (["--warmup_steps", "-1"], r"--warmup_steps must be at least 0, got -1"),
    (["--synthetic_samples", "1"], r"--synthetic_samples must be at least 2, got 1"),
    (["--image_size", "0"], r"--image_size must be at least 1, got 0"),
    (["--num_threads", "0"], r"--num_threads must be at least 1, got 0"),
    (["--num_workers", "-1"], r"--num_workers must be at least 0, got -1"),
    (["--seed", "-1"], r"--seed must be in \[0, 2\*\*32\), got -1"),
    (["--corpus_seed", str(2**32)], r"--corpus_seed must be in \[0, 2\*\*32\), got 4294967296"),
    (["--heatmap_recipe", "gaussian"], r"--heatmap_recipe must be auto, egd, egma, reflacx or a sigma in pixels"),
    (["--heatmap_recipe", "0"], r"--heatmap_recipe: a sigma in pixels must be a positive number, got 0"),
    (["--losses", "clip", "--global_loss_weight", "0"], r"--losses clip .* needs --global_loss_weight > 0"),
    (["--resume", "/no/such/step_0000002"], r"--resume /no/such/step_0000002: no such checkpoint folder"),
    (["--resume", "latest", "--overwrite_output_dir"], r"--resume continues the run .* --overwrite_output_dir deletes"),
])
def test_bad_flags_stop_before_any_work(tmp_path, argv, message):
    refused_before_any_work(argv, message, tmp_path)


@pytest.mark.parametrize("name, text, message", [
    ("empty.yaml", "", r"empty.yaml is empty; expected a mapping of flag names to values"),
    ("comments_only.yaml", "# lr: 0.1\n", r"comments_only.yaml is empty"),
    ("empty.json", "\n", r"empty.json is empty"),
    ("list.yaml", "- lr\n- 0.1\n", r"list.yaml must hold a mapping of flag names to values .*, not list \['lr', 0.1\]"),
    ("number.json", "3", r"number.json must hold a mapping .*, not int 3"),
    ("broken.yaml", "lr: [0.1\n", r"broken.yaml is not valid YAML"),
    ("broken.json", "{'lr': 0.1}", r"broken.json is not valid JSON"),
    ("typos.yaml", "learning_rate: 1\nepoch: 3\n",
     r"unknown setting\(s\) epoch \(did you mean epochs\?\), learning_rate"),
    ("float_epochs.yaml", "epochs: 2.5\n", r"float_epochs.yaml: epochs: 2.5: argument --epochs: invalid int value"),
    ("bool_epochs.yaml", "epochs: true\n", r"bool_epochs.yaml: epochs: True: argument --epochs: invalid int value"),
    ("choice.yaml", "losses: everything\n", r"choice.yaml: losses: 'everything': argument --losses: invalid choice"),
    ("switch.yaml", "overwrite_output_dir: please\n", r"switch.yaml: overwrite_output_dir: 'please': .*ignored"),
    ("null.yaml", "epochs: null\n", r"null.yaml: epochs is null; give a value \(its default is 20\)"),
    ("many.yaml", "lr: [0.1, 0.2]\n", r"many.yaml: lr must be a single value, not a list"),
    ("nested.yaml", "config: other.yaml\n", r"nested.yaml: a --config file cannot name another config file"),
    ("zero_epochs.json", '{"epochs": 0}', r"--epochs must be at least 1, got 0"),  # values are checked as flags are
])
def test_bad_config_files_stop_before_any_work(tmp_path, name, text, message):
    config = tmp_path / name
    config.write_text(text)
    refused_before_any_work(["--config", str(config)], message, tmp_path)


def test_missing_config_file_is_named(tmp_path):
    missing = tmp_path / "run.yaml"
    refused_before_any_work(["--config", str(missing)], re.escape(f"--config {missing}: no such file"), tmp_path)


def test_a_config_file_with_an_empty_mapping_sets_nothing(tmp_path):
    (tmp_path / "none.json").write_text("{}")
    assert dataclasses.asdict(TrainingSettings.from_args(["--config", str(tmp_path / "none.json")])) == {
        **dataclasses.asdict(TrainingSettings.from_args([])), "config": str(tmp_path / "none.json")}


def test_config_file_settings_are_typed_like_flags_and_flags_win(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("epochs: 3\nlr: 1e-4\nactivation_checkpointing: true\nmax_steps: null\n")
    args = TrainingSettings.from_args(["--config", str(config), "--epochs", "5"])
    assert (args.epochs, args.lr, args.activation_checkpointing, args.max_steps) == (5, 1e-4, True, None)
    assert isinstance(args.lr, float)


# ---------------------------------------------------------------------------------------------------------------
# pretrain.py: the output folder


@pytest.mark.parametrize("relation", ["is", "is inside", "contains"])
@pytest.mark.parametrize("flag", ["--init_from", "--data"])
def test_output_dir_sharing_an_input_is_refused_and_the_input_kept(tmp_path, egma_dir, flag, relation):
    source = tmp_path / "inputs" / "source"
    shutil.copytree(egma_dir, source)  # an EGMA model; --data only has to exist to get this far
    before = files_in(tmp_path / "inputs")
    output = {"is": source, "is inside": source / "run", "contains": source.parent}[relation]
    with pytest.raises(SystemExit, match=re.escape(f"--output_dir {output} {relation} {flag} {source}")):
        train(TrainingSettings.from_args([flag, str(source), "--output_dir", str(output), "--overwrite_output_dir",
                                          "--cache_dir", str(tmp_path / "cache")]))
    assert files_in(tmp_path / "inputs") == before  # nothing deleted, nothing written


def test_output_dir_holding_the_config_file_is_refused(tmp_path):
    config = tmp_path / "runs" / "run.yaml"
    config.parent.mkdir()
    config.write_text("lr: 0.001\n")
    with pytest.raises(SystemExit, match=re.escape(f"--output_dir {config.parent} contains --config {config}")):
        train(TrainingSettings.from_args(["--config", str(config), "--output_dir", str(config.parent),
                                          "--overwrite_output_dir", "--cache_dir", str(tmp_path / "cache")]))
    assert config.read_text() == "lr: 0.001\n"


def test_overwrite_refuses_a_folder_that_is_not_a_previous_run(tmp_path):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "chapter1.tex").write_text("mine")
    (folder / "training_config.json").write_text('{"not": "a pretrain.py run"}')
    with pytest.raises(SystemExit, match="is not empty and holds no run of this script .*; refusing to delete it"):
        train(TrainingSettings(output_dir=str(folder), overwrite_output_dir=True, cache_dir=str(tmp_path / "cache")))
    assert (folder / "chapter1.tex").read_text() == "mine"


def test_a_corrupt_run_settings_file_is_not_a_raw_json_error(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "training_config.json").write_text('{"losses": "egma", "output_')  # half written
    refused = "is not empty and holds no run of this script \\(no readable training_config.json\\)"
    with pytest.raises(SystemExit, match=refused):
        train(TrainingSettings(output_dir=str(folder), cache_dir=str(tmp_path / "cache")))


def test_output_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("")
    with pytest.raises(SystemExit, match="--output_dir .*out is a file, not a folder"):
        train(TrainingSettings(output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache")))


def test_output_dir_whose_name_cannot_name_the_model_is_refused(tmp_path):
    with pytest.raises(SystemExit, match=r"--output_dir .*run 1: its name names the model in the model card written "
                                         r"there, and repo_id 'run 1' is not a valid Hub id"):
        train(TrainingSettings(output_dir=str(tmp_path / "run 1"), cache_dir=str(tmp_path / "cache")))
    assert not (tmp_path / "run 1").exists() and not (tmp_path / "cache").exists()


def test_init_from_another_model_type_or_no_model_is_refused(tmp_path, bert_dir):
    refused_before_any_work(["--init_from", str(bert_dir)], r"is not an EGMA config: model_type is 'bert'", tmp_path)
    refused_before_any_work(["--init_from", str(tmp_path)],
                            r"--init_from .* is not a saved model: it has no config.json", tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# pretrain.py: data that cannot train or be scored (checked once the data are known, before training)


def readings(train: int, validate_labels=None, test_labels=None) -> dict:
    """Splits as pretrain.py has them after by_split: `train` readings, and the given label lists."""
    splits = {"train": datasets.Dataset.from_dict({"labels": [["Edema"] if i % 2 else [] for i in range(train)]})}
    for name, labels in (("validate", validate_labels), ("test", test_labels)):
        if labels is not None:
            splits[name] = datasets.Dataset.from_dict({"labels": labels})
    return splits


def test_a_batch_larger_than_the_training_set_is_refused():
    splits = readings(30)
    with pytest.raises(SystemExit, match=r"--batch_size 64 needs at least 64 training readings, and data has 30"):
        check_splits(splits, "data", batch_size=64, num_processes=1)
    with pytest.raises(SystemExit, match=r"--batch_size 16 per process x 2 processes needs at least 32 training "
                                         r"readings, and data has 30: lower --batch_size or use fewer processes"):
        check_splits(splits, "data", batch_size=16, num_processes=2)
    check_splits(splits, "data", batch_size=15, num_processes=2)  # one batch each: trains


@pytest.mark.parametrize("split", ["validate", "test"])
def test_a_split_too_small_to_score_is_refused(split, caplog):
    scoring = {"validate_labels": [["Edema"], ["Edema", "Cardiomegaly"]], "test_labels": [["Edema"], []]}
    scoring[f"{split}_labels"] = [["Edema"]]  # one reading: no finding has a positive and a negative
    with pytest.raises(SystemExit, match=rf"data: the {split} split \(1 reading\) cannot be scored: zero-shot AUROC "
                                         r"needs a finding of \['Cardiomegaly', 'Edema', .*both positive and negative"):
        check_splits(readings(30, **scoring), "data", batch_size=8, num_processes=1)
    scoring[f"{split}_labels"] = [["Edema"], ["Edema"], ["Pneumothorax", "Edema"]]  # Edema everywhere
    scoring[f"{split}_labels"][0].append("Pneumothorax")
    check_splits(readings(30, **scoring), "data", batch_size=8, num_processes=1)  # Pneumothorax scores
    assert f"{split} split: ['Cardiomegaly', 'Edema', 'Lung Opacity', 'Pleural Effusion'] have positives only or " \
           "negatives only" in caplog.text


def test_ablation_checks_every_runs_flags_before_the_first_run(tmp_path):
    for argv, message in ((["--max_steps", "0"], "--max_steps must be at least 1, got 0"),
                          (["--seeds", "0", "-1"], r"--seed must be in \[0, 2\*\*32\), got -1"),
                          (["--lr", "nan"], "--lr must be a positive number, got nan")):
        with pytest.raises(SystemExit, match=message):
            ablation.main(["--quick", *argv, "--output_dir", str(tmp_path / "ablation"),
                           "--cache_dir", str(tmp_path / "cache")])
    assert not (tmp_path / "ablation").exists() and not (tmp_path / "cache").exists()


# ---------------------------------------------------------------------------------------------------------------
# pretrain.py: checkpoints, written by save_checkpoint with a real Accelerator, then damaged on disk


@pytest.fixture
def checkpointed(tmp_path):
    """An output folder with the checkpoints of steps 2 and 4 of a tiny model, and each one's weights."""
    from accelerate import Accelerator

    accelerator = Accelerator()
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    out, weights = tmp_path / "run", {}
    for step in range(1, 5):
        model(torch.randn(3, 4)).sum().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        if step % 2 == 0:
            save_checkpoint(accelerator, out, {"step": step, "best_metric": None, "best_step": None}, keep=2)
            weights[step] = {k: v.clone() for k, v in model.state_dict().items()}
    return SimpleNamespace(accelerator=accelerator, model=model, out=out, weights=weights,
                           step={2: out / "checkpoints" / "step_0000002", 4: out / "checkpoints" / "step_0000004"})


def resume(run, which="latest", num_processes=1):
    return resume_checkpoint(TrainingSettings(output_dir=str(run.out), resume=which), num_processes)


def truncate(path: Path):
    os.truncate(path, path.stat().st_size // 2)


def flip_bytes(path: Path):
    """Same size, different content: what a disk error leaves."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 16] = bytes(16)
    path.write_bytes(bytes(data))


def without_file_list(folder: Path):
    """The checkpoint as written before trainer_state.json listed its files."""
    state = json.loads((folder / "trainer_state.json").read_text())
    (folder / "trainer_state.json").write_text(json.dumps({k: state[k] for k in ("step", "best_metric", "best_step")}))


@pytest.mark.parametrize("damage, problem", [
    (lambda c: truncate(c / "model.safetensors"), r"model.safetensors has \d+ bytes, \d+ when it was written"),
    (lambda c: (c / "optimizer.bin").unlink(), r"optimizer.bin is missing"),
    (lambda c: (c / "random_states_0.pkl").unlink(), r"random_states_0.pkl \(the RNG state of process 0\) is missing"),
    (lambda c: flip_bytes(c / "random_states_0.pkl"), r"random_states_0.pkl \(the RNG state of process 0\) is corrupt"),
    (lambda c: (c / "trainer_state.json").write_text('{"step": 4, "best_'), r"trainer_state.json is not valid JSON"),
    (lambda c: (c / "trainer_state.json").unlink(), r"trainer_state.json is missing"),
    (lambda c: (c / "trainer_state.json").write_text("[4]"), r"trainer_state.json holds no training state"),
    (lambda c: (without_file_list(c), truncate(c / "model.safetensors")),
     r"model.safetensors is not a readable safetensors file"),
    (lambda c: (without_file_list(c), truncate(c / "optimizer.bin")), r"optimizer.bin is truncated or corrupt"),
])
def test_resume_latest_skips_an_incomplete_newest_checkpoint(checkpointed, damage, problem):
    damage(checkpointed.step[4])
    chosen, skipped = resume(checkpointed)
    assert chosen == checkpointed.step[2]
    assert len(skipped) == 1 and re.search(r"^step_0000004: .*" + problem, skipped[0])
    checkpointed.accelerator.load_state(str(chosen))  # and it restores the weights of step 2
    for name, tensor in checkpointed.model.state_dict().items():
        torch.testing.assert_close(tensor, checkpointed.weights[2][name], rtol=0, atol=0)


def test_resume_latest_without_any_complete_checkpoint_names_the_files(checkpointed):
    truncate(checkpointed.step[4] / "model.safetensors")
    (checkpointed.step[2] / "random_states_0.pkl").unlink()
    with pytest.raises(SystemExit, match=r"--resume latest: no complete checkpoint in .*checkpoints \(step_0000004: "
                                         r".*model.safetensors has .*; step_0000002: .*random_states_0.pkl"):
        resume(checkpointed)
    shutil.rmtree(checkpointed.out / "checkpoints")
    with pytest.raises(SystemExit, match=r"--resume latest: no checkpoint in .*checkpoints"):
        resume(checkpointed)


def test_resume_from_a_named_folder_that_is_incomplete_or_no_checkpoint(checkpointed):
    (checkpointed.step[2] / "scheduler.bin").unlink()
    with pytest.raises(SystemExit, match=r"--resume .*step_0000002 is not a complete checkpoint: .*scheduler.bin is "
                                         r"missing"):
        resume(checkpointed, str(checkpointed.step[2]))
    with pytest.raises(SystemExit, match=r"--resume .*run is not a complete checkpoint: .*trainer_state.json is "
                                         r"missing"):
        resume(checkpointed, str(checkpointed.out))  # the run's folder, not one of its checkpoints
    assert resume(checkpointed, str(checkpointed.step[4])) == (checkpointed.step[4], [])


def test_resume_with_another_number_of_processes_is_refused(checkpointed):
    with pytest.raises(SystemExit, match=r"step_0000004 was written by 1 process\(es\) and this run has 2; resume "
                                         r"with 1"):
        resume(checkpointed, num_processes=2)
    without_file_list(checkpointed.step[4])  # older checkpoints: one RNG state per process tells
    with pytest.raises(SystemExit, match=r"step_0000004 .*random_states_1.pkl \(the RNG state of process 1\) is "
                                         r"missing"):
        resume(checkpointed, str(checkpointed.step[4]), num_processes=2)


def test_resume_needs_the_best_weights_its_state_refers_to(checkpointed):
    state_file = checkpointed.step[4] / "trainer_state.json"
    state_file.write_text(json.dumps({**json.loads(state_file.read_text()), "best_metric": 0.7, "best_step": 3}))
    with pytest.raises(SystemExit, match=r"its best validation step 3 has its weights in .*best_weights.safetensors, "
                                         r"which is missing or unreadable"):
        resume(checkpointed)


def test_a_checkpoint_saved_again_replaces_the_old_one_and_stale_ones_never_count(checkpointed):
    """After resuming from step 2 past an incomplete step 4 (and a stale step 6), saving step 4 works, and with
    --keep_checkpoints 1 the new step 4 is what is kept."""
    truncate(checkpointed.step[4] / "model.safetensors")
    stale = checkpointed.out / "checkpoints" / "step_0000006"
    shutil.copytree(checkpointed.step[2], stale)
    save_checkpoint(checkpointed.accelerator, checkpointed.out, {"step": 4, "best_metric": None, "best_step": None},
                    keep=1)
    assert sorted(p.name for p in (checkpointed.out / "checkpoints").iterdir()) == ["step_0000004", "step_0000006"]
    assert checkpoint_problem(checkpointed.step[4], 1) is None


# ---------------------------------------------------------------------------------------------------------------
# pretrain.py end to end (subprocesses, real runs)


def run_pretrain(args, cache, timeout=300):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, str(PRETRAIN), *args, "--cache_dir", str(cache)], capture_output=True,
                          text=True, env=env, cwd=REPO_ROOT, timeout=timeout)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("egma-cache")


@pytest.mark.slow
def test_a_batch_larger_than_the_training_set_stops_instead_of_running_forever(tmp_path, cache):
    result = run_pretrain([*TINY, "--batch_size", "64", "--output_dir", str(tmp_path / "out")], cache, timeout=120)
    assert result.returncode != 0
    assert re.search(r"--batch_size 64 needs at least 64 training readings, and synthetic corpus \(48 readings\) .* "
                     r"has 30: lower --batch_size", result.stderr)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_validation_split_too_small_to_score_stops_before_training(tmp_path):
    # 10 synthetic readings: 7 train, 1 validate, 1 test
    with pytest.raises(SystemExit, match=r"the validate split \(1 reading\) cannot be scored"):
        train(TrainingSettings(synthetic_samples=10, batch_size=4, output_dir=str(tmp_path / "out"),
                               cache_dir=str(tmp_path / "cache"), num_threads=1))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_gradient_accumulation_counts_the_short_last_step_of_an_epoch(tmp_path, cache):
    """3 batches an epoch, 2 per step: accelerate steps after batches 2 and 3, so 2 epochs are 4 steps (they were
    counted as 2, which ended the run after one epoch)."""
    out = tmp_path / "accumulated"
    result = run_pretrain([*TINY, "--gradient_accumulation_steps", "2", "--output_dir", str(out)], cache)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "global batch 16 (8 per process x 2 accumulation), 4 steps" in result.stderr
    assert json.loads((out / "checkpoints" / "step_0000004" / "trainer_state.json").read_text())["step"] == 4
    results = json.loads((out / "eval_results.json").read_text())
    assert results["best_step"] in (3, 4) and 0.0 <= results["test"]["mean_auroc"] <= 1.0


@pytest.mark.slow
def test_without_a_validate_split_the_null_metric_comes_with_its_reason(tmp_path, cache):
    from egma_hf.data import HeatmapSettings, load_mimic_eye, make_synthetic_mimic_eye

    corpus = make_synthetic_mimic_eye(tmp_path / "mimic-eye", num_samples=48, seed=0)
    saved = tmp_path / "saved"
    readings = load_mimic_eye(corpus, HeatmapSettings(recipe=12.0))
    readings.filter(lambda split: split != "validate", input_columns="split").save_to_disk(str(saved))
    out = tmp_path / "out"
    result = run_pretrain([*TINY, "--max_steps", "2", "--data", str(saved), "--output_dir", str(out)], cache)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "eval_results.json").read_text())
    assert results["validate_mean_auroc"] is None and results["best_step"] is None
    expected = f"saved dataset {saved} has no validate split: the weights of the last step are kept"
    assert results["validate_note"] == expected
    assert 0.0 <= results["test"]["mean_auroc"] <= 1.0 and "test_note" not in results


@pytest.mark.slow
def test_killed_run_with_a_truncated_newest_checkpoint_resumes_from_the_one_before(tmp_path, cache):
    reference = tmp_path / "uninterrupted"
    assert run_pretrain([*TINY, "--output_dir", str(reference)], cache).returncode == 0

    killed = tmp_path / "killed"
    start_and_kill_when([sys.executable, str(PRETRAIN), *TINY, "--output_dir", str(killed), "--cache_dir", str(cache)],
                        killed / "checkpoints" / "step_0000004", cwd=REPO_ROOT)
    assert not (killed / "model.safetensors").exists()  # it really died mid-run
    found = list_checkpoints(killed)
    assert len(found) >= 2
    newest, previous = found[-1], found[-2]

    # no RNG state in any checkpoint: stop, naming the file, instead of resuming with a fresh RNG
    aside = tmp_path / "rng-states"
    aside.mkdir()
    for folder in found:
        (folder / "random_states_0.pkl").rename(aside / folder.name)
    with pytest.raises(SystemExit, match=r"no complete checkpoint .*random_states_0.pkl \(the RNG state of process 0\)"
                                         r" is missing"):
        train(TrainingSettings.from_args([*TINY, "--output_dir", str(killed), "--resume", "latest",
                                          "--cache_dir", str(cache)]))
    for folder in found:
        (aside / folder.name).rename(folder / "random_states_0.pkl")

    truncate(newest / "model.safetensors")
    result = run_pretrain([*TINY, "--output_dir", str(killed), "--resume", "latest"], cache)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(rf"--resume latest: skipping incomplete checkpoint {newest.name}: .*model.safetensors has \d+ "
                     r"bytes", result.stderr)
    assert f"resumed from {previous}" in result.stderr
    assert checkpoint_problem(newest, 1) is None  # redone when the run got there
    expected, actual = load_file(str(reference / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------
# finetune_classification.py


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], r"--epochs must be at least 1, got 0"),
    (["--batch_size", "-1"], r"--batch_size must be at least 1, got -1"),
    (["--bootstrap", "0"], r"--bootstrap must be at least 1, got 0"),
    (["--lr", "nan"], r"--lr must be a positive number, got nan"),
    (["--lr", "0"], r"--lr must be a positive number, got 0.0"),
    (["--weight_decay", "-0.1"], r"--weight_decay must be a number >= 0, got -0.1"),
    (["--warmup_epochs", "nan"], r"--warmup_epochs must be in \[0, --epochs 30\], got nan"),
    (["--warmup_epochs", "-1"], r"--warmup_epochs must be in \[0, --epochs 30\], got -1.0"),
    (["--epochs", "2", "--warmup_epochs", "3"], r"--warmup_epochs must be in \[0, --epochs 2\], got 3.0"),
    (["--seed", "-1"], r"--seed must be in \[0, 2\*\*32\), got -1"),
    (["--num_workers", "-2"], r"--num_workers must be at least 0, got -2"),
    (["--num_threads", "0"], r"--num_threads must be at least 1, got 0"),
    (["--label_fraction", "0.1", "inf"], r"--label_fraction must be in \(0, 1\], got inf"),
    (["--validation_fraction", "nan"], r"--validation_fraction must be in \(0, 1\), got nan"),
    (["--images_root", "/"], r"--images_root is for --dataset chexpert"),
])
def test_finetune_bad_flags_stop_before_any_work(egma_dir, tmp_path, argv, message):
    with pytest.raises(SystemExit, match=message):
        finetune.main(["--model", str(egma_dir), "--dataset", "rsna", "--output_dir", str(tmp_path / "out"), *argv])
    assert not (tmp_path / "out").exists()


def test_finetune_model_that_is_not_an_egma_checkpoint_is_refused(tmp_path, bert_dir):
    for folder, message in ((bert_dir, r"is not an EGMA config: model_type is 'bert'"),
                            (tmp_path, r"--model .* is not a saved model: it has no config.json")):
        with pytest.raises(SystemExit, match=message):
            finetune.main(["--model", str(folder), "--dataset", "rsna", "--output_dir", str(tmp_path / "out")])
    without_processor = tmp_path / "weights-only"
    EGMAModel(tiny_config()).save_pretrained(without_processor)
    with pytest.raises(SystemExit, match=r"--model .*weights-only has no processor"):
        finetune.main(["--model", str(without_processor), "--dataset", "rsna"])


def test_finetune_output_dir_that_is_an_input_or_a_file_is_refused(egma_dir, tmp_path):
    before = files_in(egma_dir)
    with pytest.raises(SystemExit, match=r"--output_dir .* is --model: results and classifiers would be written"):
        finetune.main(["--model", str(egma_dir), "--dataset", "rsna", "--output_dir", str(egma_dir), "--save_models"])
    assert files_in(egma_dir) == before
    (tmp_path / "results").write_text("")
    with pytest.raises(SystemExit, match=r"--output_dir .*results is a file, not a folder"):
        finetune.main(["--model", str(egma_dir), "--dataset", "rsna", "--output_dir", str(tmp_path / "results")])


def test_finetune_diverging_training_stops_instead_of_scoring_nan(egma_dir):
    from accelerate import Accelerator

    generator = torch.Generator().manual_seed(0)
    features = 1e10 * torch.randn(16, 8, generator=generator)  # with weights of ~1e30 after one step: inf logits
    labels = np.arange(16) % 2
    settings = linear_probe.LinearProbeSettings(model=str(egma_dir), dataset="rsna", lr=1e30, epochs=3,
                                                batch_size=4, num_workers=0)
    task = linear_probe.task_of("rsna")
    truth = linear_probe.truth(linear_probe.Split([str(i) for i in range(16)], [""] * 16, labels), task)
    rows = linear_probe.FeatureRows(features, labels)
    with pytest.raises(FloatingPointError, match=r"non-finite training loss .* in epoch \d; try a smaller --lr"):
        linear_probe.fit(settings, Accelerator(), torch.nn.Linear(8, 2), linear_probe.head_step, rows, rows, truth,
                         task)


def test_finetune_interval_on_a_tiny_test_split_is_null_with_a_reason_not_nan():
    targets, scores = np.array([True, False]), np.array([0.9, 0.1])
    outcomes = []
    for seed in range(20):  # two images: a single resample is undefined half the time
        result = linear_probe.auroc_interval(roc_auc, targets, scores, num_bootstrap=1, seed=seed)
        json.dumps(result, allow_nan=False)  # never NaN
        assert result["value"] == 1.0
        outcomes.append(result["low"] is None)
        if result["low"] is None:
            assert re.fullmatch(r"no 95% interval: .*undefined on every .*bootstrap resample.*", result["note"])
            assert percent_cell(result) == "100.0 (no CI)"
    assert any(outcomes) and not all(outcomes)


@pytest.mark.parametrize("text", ["", "[PAD]\nheart\n"])
def test_a_vocabulary_file_build_tokenizer_did_not_write_is_refused_by_name(tmp_path, text):
    """An empty or foreign `vocab.txt` would build a text tower with no (or shifted) embeddings."""
    (tmp_path / "vocab.txt").write_text(text)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "vocab.txt")) + ".*does not start with"):
        build_tokenizer(["the heart"], tmp_path)
