"""The built-in testbed: an offline tiny-model kit and a "sort the digits" task with a known gold reward."""

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
    "to_conversational_completion",
    "to_conversational_prompt",
    "train_sft_policy",
]
