"""Shared plumbing of the evaluation tools: loading a policy from a path or instance, reading prompts."""

from __future__ import annotations


def load_policy(model, processing_class=None, role: str = "model"):
    """``(model, tokenizer)`` from a path or a causal-LM instance (tokenizer from ``config._name_or_path`` if omitted)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(model, str):
        tokenizer = processing_class or AutoTokenizer.from_pretrained(model)
        return AutoModelForCausalLM.from_pretrained(model), tokenizer
    if not hasattr(model, "generate"):
        raise TypeError(f"{role} must be a path or a model with `.generate`, got {type(model).__name__}")
    if processing_class is None:
        name = getattr(getattr(model, "config", None), "_name_or_path", None)
        if not name:
            raise ValueError(f"Pass a processing_class (tokenizer) for {role}: it was not loaded from a path.")
        processing_class = AutoTokenizer.from_pretrained(name)
    return model, processing_class


def prompts_from(prompts, what: str = "prompts") -> list:
    """A list of prompts from a list or a ``datasets.Dataset`` with a ``prompt`` column; clear errors otherwise."""
    if hasattr(prompts, "column_names"):
        if "prompt" not in prompts.column_names:
            raise ValueError(f"The {what} dataset has no 'prompt' column (columns: {prompts.column_names}).")
        prompts = prompts["prompt"]
    if isinstance(prompts, str):
        raise TypeError(f"{what} must be a list of prompts, not a single string.")
    prompts = list(prompts)
    if not prompts:
        raise ValueError(f"No {what}: the list is empty.")
    return prompts
