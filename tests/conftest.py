"""Tiny random EGMA models, a tokenizer built in memory and synthetic inputs: no download anywhere."""

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertTokenizerFast

from egma_hf import EGMAConfig, EGMAImageProcessor, EGMAModel, EGMAProcessor
from egma_hf.training import build_tokenizer

WORDS = (
    "the heart size is normal no focal consolidation pleural effusion pneumothorax lungs are clear there "
    "a small left right lower upper lobe opacity pneumonia mild cardiomegaly edema atelectasis at base "
    "this photo of with and in stable enlarged ."
).split()

# Swin with two stages on 32 px: 4 px patches, one merge -> a 4x4 grid of 32-d patch tokens.
TINY_SWIN = dict(
    model_type="swin", image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4,
    drop_path_rate=0.0,
)
TINY_BERT = dict(
    model_type="bert",
    vocab_size=5 + len(WORDS),
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=80,
    hidden_dropout_prob=0.0,  # deterministic training steps in tests
    attention_probs_dropout_prob=0.0,
)
GRID = 4
IMAGE_SIZE = 32


def pytest_configure(config):
    # Markers of transformers' common model tests (tests/upstream_transformers.py), declared as transformers does.
    for name in ("accelerate_tests", "flash_attn_test", "flash_attn_3_test", "flash_attn_4_test", "torch_compile_test"):
        config.addinivalue_line("markers", f"{name}: used by transformers' common model tests")


def make_tokenizer() -> BertTokenizerFast:
    """The special tokens and WORDS: TINY_BERT's vocabulary."""
    return build_tokenizer([" ".join(WORDS)], characters=False)


def tiny_config(**overrides) -> EGMAConfig:
    kwargs = dict(vision_config=dict(TINY_SWIN), text_config=dict(TINY_BERT), projection_dim=8)
    kwargs.update(overrides)
    return EGMAConfig(**kwargs)


@pytest.fixture
def tokenizer():
    return make_tokenizer()


@pytest.fixture
def processor(tokenizer):
    return EGMAProcessor(image_processor=EGMAImageProcessor(size=IMAGE_SIZE, gaze_grid_size=GRID), tokenizer=tokenizer)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return EGMAModel(tiny_config(global_loss_weight=1.0)).eval()


REPORTS = [
    "The heart size is normal. The lungs are clear. No pleural effusion.",
    "Small left lower lobe opacity. Pneumonia.",
    "Mild cardiomegaly with edema.",
]


def make_batch(processor, seed: int = 0, gaze=(True, False, True)):
    """Three image-report pairs with 3, 2 and 1 sentences; gaze for the samples flagged in `gaze`."""
    rng = np.random.default_rng(seed)
    images = [
        (rng.random((48, 40)) * 255).astype(np.uint8),
        rng.random((30, 36)).astype(np.float32),
        (rng.random((40, 40)) * 65535).astype(np.uint16),
    ]
    counts = [3, 2, 1]
    heatmaps = []
    for image, count, with_gaze in zip(images, counts, gaze):
        h, w = image.shape
        heatmaps.append(rng.random((count, h // 2, w // 2)).astype(np.float32) if with_gaze else None)
    return processor(images=images, text=REPORTS, gaze_heatmaps=heatmaps)


# Start of subprocess scripts that must run as if egma_hf were not installed (remote-code tests).
WITHOUT_EGMA_HF = """
import sys


class BlockEgmaHf:
    def find_spec(self, name, path=None, target=None):
        if name == "egma_hf" or name.startswith("egma_hf."):
            raise ImportError("egma_hf is not installed here")


sys.meta_path.insert(0, BlockEgmaHf())
try:
    import egma_hf  # noqa: F401
    raise SystemExit("egma_hf is still importable")
except ImportError:
    pass
"""


def load_example(name: str):
    """An examples/ script as a module, so tests call its main() in-process."""
    path = Path(__file__).resolve().parent.parent / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"examples_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def start_and_kill_when(command: list[str], ready: Path, cwd, timeout: float = 240) -> None:
    """Run `command` and SIGKILL it as soon as the path `ready` exists (e.g. a checkpoint folder); a real crash."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not ready.is_dir() and time.time() < deadline:
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
