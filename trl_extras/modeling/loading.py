"""Loading checkpoints without transformers' false alarms, and with the checks that mean something.

transformers 5 prints a "LOAD REPORT" (``score.weight MISSING ... newly initialized``, ``lm_head.weight
UNEXPECTED``) whenever a checkpoint's keys differ from the model's. Where that difference is the intent (a head the
caller initialises itself, a head an adapter restores afterwards) the report alarms users on every run. These
helpers hold the report back and check the keys themselves: weights missing outside the expected modules are still
reported (a warning) or refused (an error).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

logger = logging.getLogger(__name__)

__all__ = ["load_checking_missing", "quiet_loading_report"]


class _DropLoadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


@contextmanager
def quiet_loading_report():
    """Hold transformers' load report (MISSING/UNEXPECTED keys) back: the caller checks the keys itself. A filter,
    not a higher level: transformers 5 runs an extra tensor-parallel check (and warns) when the level is raised."""
    from transformers.utils import logging as hf_logging

    hf_logger = hf_logging.get_logger("transformers.modeling_utils")
    report_filter = _DropLoadReport()
    hf_logger.addFilter(report_filter)
    try:
        yield
    finally:
        hf_logger.removeFilter(report_filter)


def load_checking_missing(auto_class, path, expected_missing=(), on_missing: str = "warn", **kwargs):
    """``auto_class.from_pretrained(path, **kwargs)`` without transformers' load report.

    Args:
        expected_missing: top-level module names allowed to be missing (e.g. ``("score", "classifier")``, a head the
            caller initialises itself).
        on_missing: other missing weights ``"warn"`` (named in a warning) or ``"error"`` (a ``ValueError``: a trunk
            that did not load).
    """
    if on_missing not in ("warn", "error"):
        raise ValueError(f"on_missing must be 'warn' or 'error', got {on_missing!r}")
    with quiet_loading_report():
        model, info = auto_class.from_pretrained(path, output_loading_info=True, **kwargs)
    missing = sorted(k for k in info.get("missing_keys", ()) if k.split(".")[0] not in expected_missing)
    if missing and on_missing == "error":
        raise ValueError(f"Loading {path}: weights missing from the checkpoint: {missing[:5]}.")
    if missing:
        logger.warning("%s: %s MISSING from the checkpoint: newly initialized.", path, ", ".join(missing[:5]))
    return model
