"""Moved to `egma_hf.evaluation.plots`; this module re-exports it for one release."""

from .evaluation.plots import *  # noqa: F403
from .evaluation.plots import __all__  # noqa: F401
