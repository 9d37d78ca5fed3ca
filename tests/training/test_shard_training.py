"""Pre-training from shards (`--shards`): make_shards, exact resume after SIGKILL, two real processes on disjoint
rows, and the checks on its settings."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from egma_hf.data import ShardSet
from egma_hf.training import TrainingSettings, make_shards, train
from tests.helpers import REPO_ROOT, start_and_kill_when

SCRIPT = REPO_ROOT / "examples" / "pretrain.py"
TINY = ["--batch_size", "8", "--epochs", "3", "--eval_every", "3", "--checkpoint_every", "2", "--warmup_steps", "2",
        "--log_every", "2"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("egma-cache"))


@pytest.fixture(scope="module")
def shards(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("shards") / "synthetic-48"
    make_shards(["--synthetic_samples", "48", "--cache_dir", cache, "--out_dir", str(out), "--image_size", "128",
                 "--shard_size", "8"])
    return out


def run(args, cache, launcher=(sys.executable, str(SCRIPT)), timeout=300):
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([*launcher, *args, "--cache_dir", cache], capture_output=True, text=True, cwd=REPO_ROOT,
                            env={**__import__("os").environ, **env}, timeout=timeout)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout + result.stderr


def test_make_shards_writes_every_split_of_the_corpus(shards, cache):
    shard_set = ShardSet(shards)
    assert shard_set.settings.image_size == 128 and shard_set.settings.shard_size == 8
    rows = {split: [row["reading_id"] for row in shard_set.read_split(split, columns=["reading_id"])]
            for split in shard_set.splits}
    assert sum(map(len, rows.values())) == shard_set.manifest["rows"] == 47  # one of 48 is discarded by the reader
    assert set(rows) == {"train", "validate", "test"}
    assert all(len(ids) == len(set(ids)) for ids in rows.values())
    assert set(shard_set.gaze_readings("train")) == set(rows["train"])  # the synthetic corpus has gaze everywhere


@pytest.mark.slow
def test_resume_from_shards_after_sigkill_ends_with_the_same_weights(tmp_path, shards, cache):
    # 30 training rows, one loader worker, batches of 8: 3 steps per epoch; the kill once the step-4 checkpoint
    # appears resumes from step 4 (or step 2 if it was incomplete), inside an epoch either way, and the resumed
    # stream must give the very same batches
    flags = [*TINY, "--shards", str(shards), "--num_workers", "1"]
    reference = tmp_path / "uninterrupted"
    run([*flags, "--output_dir", str(reference)], cache)
    killed = tmp_path / "killed"
    start_and_kill_when([sys.executable, str(SCRIPT), *flags, "--output_dir", str(killed), "--cache_dir", cache],
                        killed / "checkpoints" / "step_0000004", cwd=REPO_ROOT)
    assert not (killed / "model.safetensors").exists()
    log = run([*flags, "--output_dir", str(killed), "--resume", "latest"], cache)
    assert "resumed from" in log
    expected, actual = load_file(str(reference / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0)


@pytest.mark.slow
def test_two_processes_train_on_disjoint_rows_that_cover_the_split(tmp_path, shards, cache):
    launcher = (sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m",
                "tests.training.record_gaze_run", str(tmp_path / "record"))
    log = run(["--shards", str(shards), "--batch_size", "5", "--epochs", "1", "--warmup_steps", "1",
               "--output_dir", str(tmp_path / "ddp")], cache, launcher=launcher)
    assert "processes 2, global batch 10" in log
    train_ids = {row["reading_id"] for row in ShardSet(shards).read_split("train", columns=["reading_id"])}
    seen = [[row["reading_id"] for row in json.loads((tmp_path / "record" / f"rank{rank}.json").read_text())["rows"]
             if row["reading_id"] in train_ids] for rank in (0, 1)]
    assert len(train_ids) == 30
    assert len(seen[0]) == len(seen[1]) == 15  # 15 rows per process: 3 batches of 5 each
    assert not set(seen[0]) & set(seen[1])
    assert set(seen[0]) | set(seen[1]) == train_ids
    assert (tmp_path / "ddp" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--data", "{shards}"], "--shards already holds the images"),
        (["--rotation", "200"], "--rotation must be a number in [0.0, 180.0]"),
        (["--image_size", "160", "--batch_size", "8"], "stores 128-px images and the model trains at 160 px"),
        (["--batch_size", "16", "--num_workers", "2"], "need at least 32"),
        (["--gradient_accumulation_steps", "40", "--batch_size", "4"], "fewer than --gradient_accumulation_steps 40"),
    ],
)
def test_bad_shard_settings_stop_the_run_with_the_flag(tmp_path, shards, cache, args, message):
    flags = [*(a.format(shards=shards) for a in args), "--shards", str(shards), "--output_dir", str(tmp_path / "o"),
             "--cache_dir", cache]
    with pytest.raises(SystemExit, match=message.replace("[", r"\[").replace("]", r"\]")):
        train(TrainingSettings.from_args(flags))


def test_augmentation_flags_without_shards_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="--crop_scale: augmentation applies to training from --shards"):
        TrainingSettings.from_args(["--crop_scale", "0.5", "--output_dir", str(tmp_path / "o")]).check()


def test_an_unfinished_shard_folder_is_refused_by_name(tmp_path, shards, cache):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "preprocessing.json").write_text((Path(shards) / "preprocessing.json").read_text())
    with pytest.raises(SystemExit, match=f"--shards {unfinished}: .*preprocessing has not finished"):
        train(TrainingSettings.from_args(["--shards", str(unfinished), "--output_dir", str(tmp_path / "o"),
                                          "--cache_dir", cache]))
    assert not (tmp_path / "o").exists()
