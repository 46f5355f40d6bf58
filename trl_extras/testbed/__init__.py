"""The built-in testbed: an offline tiny-model kit, a "sort the digits" task with a known gold reward, and a real
model offline (SmolLM2-135M-Instruct, :func:`smollm2_path`) with an arithmetic task (:mod:`.arithmetic`)."""

from .data import (
    SORT_HARD,
    TestbedConfig,
    clean_pairs,
    dirty_pairs,
    hacked_completions,
    prompt_dataset,
    sft_dataset,
    sort_hard_config,
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
from .names import testbed_model_path
from .policy import SFTBuildConfig, build_reward_base, build_sft_policy, default_cache_dir, train_sft_policy
from .smollm2 import smollm2_installed, smollm2_path
from .task import gold_reward, gold_reward_fn, heuristic_reward, heuristic_reward_fn, parse_completion, parse_prompt

__all__ = [
    "CHAT_TEMPLATE",
    "SFTBuildConfig",
    "SORT_HARD",
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
    "sort_hard_config",
    "smollm2_installed",
    "smollm2_path",
    "to_conversational_completion",
    "to_conversational_prompt",
    "task_module",
    "testbed_model_path",
    "train_sft_policy",
]


#: The built-in tasks, by name (``task_module``, the pipeline's ``task``).
TASKS = ("sort_digits", "sort_hard", "arithmetic")


def task_module(name: str):
    """The module of a built-in task, for code that runs on any (the pipeline): ``"sort_digits"`` (this package's
    ``data``/``task``), ``"sort_hard"`` (the same with the demonstrators' systematic wrong mode, :data:`SORT_HARD`)
    or ``"arithmetic"`` (:mod:`.arithmetic`). Each exposes ``prompt_dataset``, ``sft_dataset``, ``clean_pairs``,
    ``dirty_pairs``, ``hacked_completions``, ``gold_reward_fn``, ``heuristic_reward_fn``, a config class (or factory)
    ``TaskConfig(seed=...)`` and ``sft_policy(seed, progress)``: the path of the task's starting SFT policy (the
    tiny kit policy built on the task's corpus with that seed, cached), or None where the task needs a real model."""
    import sys
    import types

    if name == "arithmetic":
        from . import arithmetic

        module = arithmetic
        config = arithmetic.ArithmeticConfig
    elif name in ("sort_digits", "sort_hard"):
        module = sys.modules[__name__]
        config = TestbedConfig if name == "sort_digits" else sort_hard_config
    else:
        raise ValueError(f"Unknown testbed task {name!r}; choose one of {TASKS}.")

    def sft_policy(seed: int = 0, progress: bool = True):
        if name == "arithmetic":
            return None
        return build_sft_policy(SFTBuildConfig(seed=seed, testbed=config(seed=seed)), progress=progress)

    names = ("prompt_dataset", "sft_dataset", "clean_pairs", "dirty_pairs", "hacked_completions", "gold_reward_fn",
             "heuristic_reward_fn")
    return types.SimpleNamespace(TaskConfig=config, sft_policy=sft_policy, **{n: getattr(module, n) for n in names})

