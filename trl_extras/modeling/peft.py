"""The one PEFT check and PEFT model surgery shared by the trainers, rewards and core statistics."""

from __future__ import annotations

import copy
import sys


def is_peft_model(model) -> bool:
    """True when ``model`` is a ``peft.PeftModel`` (any task type). Wrappers (DDP, DeepSpeed) are not unwrapped.

    ``peft`` is not imported for the check: a ``PeftModel`` cannot exist unless ``peft`` was imported already.
    """
    if "peft" not in sys.modules:
        return False
    from peft import PeftModel

    return isinstance(model, PeftModel)


def add_adapter(model, peft_config):
    """``get_peft_model`` on a COPY of the caller's ``peft_config``: PEFT writes into the config it is given (it
    expands ``target_modules="all-linear"`` into a module list, sets ``base_model_name_or_path``), so the user's
    object would differ from what they wrote, and a second trainer built from it (a resume) would fingerprint
    other settings than the first."""
    from peft import get_peft_model

    return get_peft_model(model, copy.deepcopy(peft_config))


def merged_copy(model, adapter_name: str | None = None):
    """An independent plain ``transformers`` model computing what ``model`` computes now.

    A ``PeftModel`` is deep-copied, its active adapter (or ``adapter_name``) merged into the copied base weights and
    every adapter removed (``merge_and_unload``); the original is untouched. Any other model is deep-copied. Quantized (4/8-bit)
    or DeepSpeed-partitioned models cannot be merged this way: the caller reloads them from their path.
    """
    copied = copy.deepcopy(model)
    if is_peft_model(copied):
        active = adapter_name or copied.active_adapter
        copied.set_adapter(active)
        copied = copied.merge_and_unload(adapter_names=[active])
    return copied


def save_model(model, tokenizer, path) -> str:
    """Save a (possibly PEFT) model as a standalone checkpoint with its tokenizer: adapters merged, so that later
    stages (pipeline, iterate) load it by path. Returns the path as a string."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
