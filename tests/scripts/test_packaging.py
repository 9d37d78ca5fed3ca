"""A non-editable install stands on its own: the built wheel carries the package data (the model-card template),
and pre-training against the installed package runs to the end, model card included."""

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.slow  # builds a wheel and trains in a subprocess


def pip(*args, cwd=None):
    result = subprocess.run([sys.executable, "-m", "pip", *args, "--quiet"], capture_output=True, text=True, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]


def test_wheel_install_pretrains_and_writes_the_model_card(tmp_path):
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    pip("wheel", str(REPO_ROOT), "--no-deps", *isolation, "-w", str(tmp_path / "dist"))
    (wheel,) = (tmp_path / "dist").glob("egma_hf-*.whl")
    assert "egma_hf/templates/model_card.md" in zipfile.ZipFile(wheel).namelist()
    site = tmp_path / "site"
    pip("install", "--no-deps", "--target", str(site), str(wheel))

    # The installed copy, not the checkout, is what the script imports: run from outside the checkout.
    env = dict(os.environ, PYTHONPATH=str(site), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    where = subprocess.run([sys.executable, "-c", "import egma_hf; print(egma_hf.__file__)"], capture_output=True,
                           text=True, env=env, cwd=tmp_path, check=True).stdout.strip()
    assert Path(where).is_relative_to(site), where

    out = tmp_path / "run"
    args = ["--synthetic_samples", "48", "--batch_size", "8", "--max_steps", "2", "--warmup_steps", "1",
            "--num_threads", "1", "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache")]
    result = subprocess.run([sys.executable, str(REPO_ROOT / "examples" / "pretrain.py"), *args], capture_output=True,
                            text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == "zero-shot-image-classification"
    assert "egma" in card.data.tags and "synthetic" in card.text.lower()
