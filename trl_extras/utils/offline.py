"""The environment every offline entry point sets before any Hugging Face import: no hub, no telemetry thread,
quiet experimental warnings. Used by the test suite, the demo and the benchmark scripts (one definition)."""

from __future__ import annotations

import os

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TRL_EXPERIMENTAL_SILENCE": "1",
    "TRL_EXTRAS_SILENCE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "WANDB_DISABLED": "true",
}


def use_offline_env() -> None:
    """Set :data:`OFFLINE_ENV` where the caller has not set a value (``os.environ.setdefault``). Call it before
    importing transformers/huggingface_hub: they read these variables at import time."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


class NoTelemetryMixin:
    """First base of every trl_extras trainer: no telemetry ping at construction.

    TRL's ``_BaseTrainer.__init__`` sends a usage ping to the Hub unless ``HF_HUB_DISABLE_TELEMETRY`` /
    ``HF_HUB_OFFLINE`` is set; it reports any subclass outside ``trl.`` as ``"other"``, so for our trainers it
    carries nothing but a network call, which a user training on local models does not expect (issue: import and
    local training make no network call). TRL's own trainers keep their telemetry.
    """

    def _send_telemetry(self):
        return None
