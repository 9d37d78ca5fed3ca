"""Moved to `egma_hf.evaluation.metrics`; this module re-exports it for one release."""

from .evaluation.metrics import *  # noqa: F403
from .evaluation.metrics import __all__  # noqa: F401
