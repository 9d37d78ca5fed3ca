"""Shared test helpers: tiny random EGMA configs, a tokenizer built in memory, synthetic inputs, example scripts as
modules and processes killed mid-run. No download anywhere. Imported as `from tests.helpers import ...`."""

import importlib.util
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
from transformers import BertTokenizerFast

from egma_hf import EGMAConfig
from egma_hf.training import build_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]

WORDS = (  # noqa: SIM905 (a vocabulary read as text)
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
# One tiny tower per family at 32 px, each with a 4x4 patch grid (ViT and Dinov2 with their class/register tokens).
TINY_TOWERS = {
    "swin": TINY_SWIN,
    "vit": dict(model_type="vit", image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2,
                num_attention_heads=2, intermediate_size=32),
    "dinov2_with_registers": dict(model_type="dinov2_with_registers", image_size=32, patch_size=8, hidden_size=16,
                                  num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, num_register_tokens=4),
    "convnext": dict(model_type="convnext", image_size=32, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2),
    "timm_wrapper": dict(model_type="timm_wrapper", architecture="vit_tiny_patch16_224", num_classes=0,
                         do_pooling=False, model_args=dict(img_size=32, patch_size=8, embed_dim=16, depth=2,
                                                           num_heads=2)),
}
GRID = 4
IMAGE_SIZE = 32


def make_tokenizer() -> BertTokenizerFast:
    """The special tokens and WORDS: TINY_BERT's vocabulary."""
    return build_tokenizer([" ".join(WORDS)], characters=False)


def tiny_config(**overrides) -> EGMAConfig:
    kwargs = dict(vision_config=dict(TINY_SWIN), text_config=dict(TINY_BERT), projection_dim=8)
    kwargs.update(overrides)
    return EGMAConfig(**kwargs)


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


# Start of subprocess scripts that must run as if egma_hf were not installed (remote-code tests): source text that
# blocks the import of egma_hf with a meta-path finder.
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
    path = REPO_ROOT / "examples" / f"{name}.py"
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


def standalone_trees(root: Path, out: Path) -> tuple[Path, Path, Path]:
    """MIMIC-EYE's per-patient files -> EGD-CXR and REFLACX folders plus a MIMIC-CXR-JPG image tree."""
    egd, reflacx, images = out / "egd-cxr", out / "reflacx", out / "mimic-cxr-jpg"
    sheets, fixations, metadata = [], [], []
    for patient in sorted(root.glob("patient_*")):
        subject = patient.name.removeprefix("patient_")
        for image in patient.glob("CXR-JPG/s*/*.jpg"):
            target = images / "files" / f"p{subject[:2]}" / f"p{subject}" / image.parent.name / image.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(image, target)
        if (patient / "EyeGaze").is_dir():
            sheets.append(pd.read_csv(patient / "EyeGaze/master_sheet.csv", dtype=str, keep_default_na=False))
            fixations.append(pd.read_csv(patient / "EyeGaze/fixations.csv", dtype=str, keep_default_na=False))
            shutil.copytree(patient / "EyeGaze/audio_segmentation_transcripts", egd / "audio_segmentation_transcripts",
                            dirs_exist_ok=True)
        if (patient / "REFLACX").is_dir():
            metadata.append(pd.read_csv(patient / "REFLACX/metadata.csv", dtype=str, keep_default_na=False))
            shutil.copytree(patient / "REFLACX/main_data", reflacx / "main_data", dirs_exist_ok=True)
    pd.concat(sheets).to_csv(egd / "master_sheet.csv", index=False)
    pd.concat(fixations).to_csv(egd / "fixations.csv", index=False)
    pd.concat(metadata).to_csv(reflacx / "main_data" / "metadata_phase_3.csv", index=False)
    return egd, reflacx, images
