"""Moved to `egma_hf.evaluation.reports`; this module re-exports it for one release."""

from .evaluation.reports import *  # noqa: F403
from .evaluation.reports import __all__  # noqa: F401
