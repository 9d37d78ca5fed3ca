"""The one place a training or evaluation run sets up its processes: an Accelerator, logging, CPU threads."""

import logging
import os

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration


def runs_on_cpu_processes() -> bool:
    """Several processes on a machine without GPUs (`accelerate launch --multi_gpu` starts them through torchrun):
    accelerate sets up gloo only when told it runs on the CPU."""
    return not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1


def make_accelerator(gradient_accumulation_steps: int = 1, log_with: str | None = None, project_dir=None,
                     num_threads: int | None = None) -> Accelerator:
    """An Accelerator with a seedable sampler (exact resume), logging at INFO on the main process only, and, for a
    single process on a CPU, `num_threads` torch threads (default: every core this process may use;
    `accelerate launch` would otherwise leave one)."""
    accelerator = Accelerator(
        cpu=runs_on_cpu_processes(),
        gradient_accumulation_steps=gradient_accumulation_steps,
        log_with=log_with,
        project_dir=None if project_dir is None else str(project_dir),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    configure_logging(accelerator.is_main_process)
    if accelerator.device.type == "cpu" and accelerator.num_processes == 1:
        torch.set_num_threads(num_threads or len(os.sched_getaffinity(0)))
    return accelerator


def configure_logging(is_main_process: bool) -> None:
    logging.basicConfig(format="%(asctime)s %(message)s", level=logging.INFO if is_main_process else logging.WARNING)
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # not every checkpoint's file list
