"""Pre-training on a large corpus with gaze on a subset: the synthetic MIMIC-CXR twin with the synthetic MIMIC-EYE
readings attached, on one and on two processes. Gaze reaches the loss for the gaze readings only."""

import json
import os
import subprocess
import sys

import pytest

from egma_hf.data import by_split, make_synthetic_mimic_cxr, make_synthetic_mimic_eye, with_gaze_fraction
from egma_hf.training import TrainingSettings, load_readings
from tests.helpers import REPO_ROOT
from tests.training.record_gaze_run import main as record_gaze_run

pytestmark = pytest.mark.slow  # trains, and starts processes

FRACTION = 0.5


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    make_synthetic_mimic_eye(root / "eye", 40, seed=3)
    make_synthetic_mimic_cxr(root / "cxr", 200, seed=3, mimic_eye=root / "eye")
    return root


def flags(corpus, output_dir):
    return ["--data", str(corpus / "cxr"), "--gaze_data", str(corpus / "eye"), "--heatmap_recipe", "12",
            "--gaze_fraction", str(FRACTION), "--batch_size", "8", "--max_steps", "4", "--image_size", "64",
            "--warmup_steps", "1", "--eval_every", "4", "--num_threads", "1", "--output_dir", str(output_dir),
            "--cache_dir", str(corpus / "cache")]


def expected_gaze(corpus, output_dir) -> dict[str, bool]:
    """reading_id -> has_gaze as the run must see it: training rows after --gaze_fraction, the others as read."""
    settings = TrainingSettings.from_args(flags(corpus, output_dir))
    readings, source = load_readings(settings)
    assert "with gaze from MIMIC-EYE" in source
    splits = dict(by_split(readings))
    splits["train"] = with_gaze_fraction(splits["train"], FRACTION, seed=settings.seed)
    return {r: g for split in splits.values() for r, g in zip(split["reading_id"], split["has_gaze"])}


def check_records(records, expected):
    rows = [row for record in records for row in record["rows"]]
    assert rows and all(row["has_gaze"] == expected[row["reading_id"]] for row in rows)
    seen_with_gaze = {row["reading_id"] for row in rows if row["has_gaze"]}
    assert seen_with_gaze and len(seen_with_gaze) < len({row["reading_id"] for row in rows})
    losses = [call for record in records for call in record["losses"]]
    assert len(losses) == 4 * len(records)  # one loss call per step and process
    mixed = [call for call in losses if 0 < call["with_gaze"] < call["pairs"]]
    assert mixed, losses  # batches mixing gaze and gaze-free rows were trained
    # noise in the gaze maps of the gaze-free pairs changes no loss term: gaze enters for gaze rows only
    assert all(call["change"] == 0.0 for call in losses), losses


def test_one_process_trains_gaze_terms_on_gaze_rows_only(corpus, tmp_path):
    output_dir = tmp_path / "one"
    record_gaze_run([str(tmp_path / "records"), *flags(corpus, output_dir)])
    records = [json.loads((tmp_path / "records" / "rank0.json").read_text())]
    check_records(records, expected_gaze(corpus, output_dir))
    results = json.loads((output_dir / "eval_results.json").read_text())
    assert "MIMIC-CXR-JPG" in results["source"] and "with gaze from MIMIC-EYE" in results["source"]


def test_two_processes_train_gaze_terms_on_gaze_rows_only(corpus, tmp_path):
    output_dir = tmp_path / "two"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "tests.training.record_gaze_run", str(tmp_path / "records"), *flags(corpus, output_dir)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "processes 2, global batch 16" in result.stderr + result.stdout
    records = [json.loads((tmp_path / "records" / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    check_records(records, expected_gaze(corpus, output_dir))
    train_rows = [{row["reading_id"] for row in record["rows"][:32]} for record in records]
    assert not train_rows[0] & train_rows[1]  # the ranks' first four training batches are disjoint
