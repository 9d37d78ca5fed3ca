"""Fixtures shared by every test folder (a tiny random EGMA model, its processor and tokenizer) and pytest hooks;
the helpers they use are in tests/helpers.py."""

import pytest
import torch

from egma_hf import EGMAImageProcessor, EGMAModel, EGMAProcessor
from tests.helpers import GRID, IMAGE_SIZE, make_tokenizer, tiny_config


def pytest_configure(config):
    # Markers of transformers' common model tests (tests/model/upstream_transformers.py), declared as transformers does.
    for name in ("accelerate_tests", "flash_attn_test", "flash_attn_3_test", "flash_attn_4_test", "torch_compile_test"):
        config.addinivalue_line("markers", f"{name}: used by transformers' common model tests")


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
