"""The built-in testbed: an offline tiny-model kit, a "sort the digits" task with a known gold reward, and a real
model offline (SmolLM2-135M-Instruct, :func:`smollm2_path`) with an arithmetic task (:mod:`.arithmetic`)."""

from .data import (
    TestbedConfig,
    clean_pairs,
    dirty_pairs,
    hacked_completions,
    prompt_dataset,
    sft_dataset,
    to_conversational_completion,
    to_conversational_prompt,
)
from .models import (
    CHAT_TEMPLATE,
    TinyModelSpec,
    build_causal_lm,
    build_sequence_classifier,
    build_tokenizer,
    make_tiny_checkpoints,
    save_tiny,
)
from .policy import SFTBuildConfig, build_reward_base, build_sft_policy, default_cache_dir, train_sft_policy
from .smollm2 import smollm2_installed, smollm2_path
from .task import gold_reward, gold_reward_fn, heuristic_reward, heuristic_reward_fn, parse_completion, parse_prompt

__all__ = [
    "CHAT_TEMPLATE",
    "SFTBuildConfig",
    "TestbedConfig",
    "TinyModelSpec",
    "build_causal_lm",
    "build_reward_base",
    "build_sequence_classifier",
    "build_sft_policy",
    "build_tokenizer",
    "clean_pairs",
    "default_cache_dir",
    "dirty_pairs",
    "gold_reward",
    "gold_reward_fn",
    "hacked_completions",
    "heuristic_reward",
    "heuristic_reward_fn",
    "make_tiny_checkpoints",
    "parse_completion",
    "parse_prompt",
    "prompt_dataset",
    "sft_dataset",
    "save_tiny",
    "smollm2_installed",
    "smollm2_path",
    "to_conversational_completion",
    "to_conversational_prompt",
    "task_module",
    "train_sft_policy",
]


def task_module(name: str):
    """The module of a built-in task, for code that runs on either (the pipeline): ``"sort_digits"`` (this package's
    ``data``/``task``) or ``"arithmetic"`` (:mod:`.arithmetic`). Both expose ``prompt_dataset``, ``sft_dataset``,
    ``clean_pairs``, ``dirty_pairs``, ``hacked_completions``, ``gold_reward_fn``, ``heuristic_reward_fn`` and a
    config class ``TaskConfig``."""
    import sys
    import types

    if name == "arithmetic":
        from . import arithmetic

        module = arithmetic
        config = arithmetic.ArithmeticConfig
    elif name == "sort_digits":
        module = sys.modules[__name__]
        config = TestbedConfig
    else:
        raise ValueError(f"Unknown testbed task {name!r}; choose 'sort_digits' or 'arithmetic'.")
    names = ("prompt_dataset", "sft_dataset", "clean_pairs", "dirty_pairs", "hacked_completions", "gold_reward_fn",
             "heuristic_reward_fn")
    return types.SimpleNamespace(TaskConfig=config, **{n: getattr(module, n) for n in names})

