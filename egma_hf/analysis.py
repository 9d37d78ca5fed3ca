"""Moved to `egma_hf.evaluation.analysis`; this module re-exports it for one release."""

from .evaluation.analysis import *  # noqa: F403
from .evaluation.analysis import __all__  # noqa: F401
