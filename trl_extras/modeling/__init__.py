"""Code that runs or reshapes models: chunked LM statistics (``lm``), generation (``generation``), the value model
(``value``), the reference policy (``reference``), PEFT and k-bit helpers. Pure tensor math lives in ``core``."""

from .peft import is_peft_model, merged_copy
from .reference import (
    REFERENCE_ADAPTER,
    adapter_is_identity,
    add_reference_adapter,
    reference_adapter_hidden,
    reference_context,
    resolve_reference,
)

__all__ = [
    "REFERENCE_ADAPTER",
    "adapter_is_identity",
    "add_reference_adapter",
    "is_peft_model",
    "merged_copy",
    "reference_adapter_hidden",
    "reference_context",
    "resolve_reference",
]
