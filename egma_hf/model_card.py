"""Moved to `egma_hf.hub`; this module re-exports it for one release."""

from .hub import (  # noqa: F401
    DEFAULT_TEMPLATE,
    SYNTHETIC_DATA,
    TAGS,
    build_model_card,
    check_repo_id,
    pretraining_report,
)
