"""egma_hf.training: pre-training EGMA with 🤗 Accelerate, as a library (examples/pretrain.py is a leaf over it).

    from egma_hf.training import TrainingSettings, train

    result = train(TrainingSettings(max_steps=100, output_dir="runs/a"))
"""

from .accelerator import configure_logging, make_accelerator, runs_on_cpu_processes
from .checkpoints import (
    BEST_WEIGHTS,
    RESUME_INSENSITIVE,
    TRAINER_STATE,
    TRAINING_CONFIG,
    changed_settings,
    check_output_dir,
    checkpoint_problem,
    list_checkpoints,
    previous_run_settings,
    resume_checkpoint,
    save_checkpoint,
)
from .loop import TrainingResult, train, zero_shot_metrics
from .settings import LOSS_PRESETS, TrainingSettings, config_file_flags
from .setup import (
    EVALUATION_PROMPTS,
    TINY_IMAGE_SIZE,
    TINY_TEXT,
    TINY_VISION,
    build_model_and_processor,
    build_tokenizer,
    check_splits,
    load_readings,
)
from .shard_data import DATA_FLAGS, make_shards, shards_argument_parser

__all__ = [
    "BEST_WEIGHTS",
    "DATA_FLAGS",
    "EVALUATION_PROMPTS",
    "LOSS_PRESETS",
    "RESUME_INSENSITIVE",
    "TINY_IMAGE_SIZE",
    "TINY_TEXT",
    "TINY_VISION",
    "TRAINER_STATE",
    "TRAINING_CONFIG",
    "TrainingResult",
    "TrainingSettings",
    "build_model_and_processor",
    "build_tokenizer",
    "changed_settings",
    "check_output_dir",
    "check_splits",
    "checkpoint_problem",
    "config_file_flags",
    "configure_logging",
    "list_checkpoints",
    "load_readings",
    "make_accelerator",
    "make_shards",
    "previous_run_settings",
    "resume_checkpoint",
    "runs_on_cpu_processes",
    "save_checkpoint",
    "shards_argument_parser",
    "train",
    "zero_shot_metrics",
]
