"""Construction-time checks of input that would otherwise train nothing, or the wrong thing, without a word.

Each one is called by every trainer it concerns (PPO, CEM, exact-KL GRPO, the reward trainers and scorers), before
any training step, and raises ``ValueError`` naming the argument, the value and what to do:

- :func:`check_prompt_column`: prompts must be text or chat messages with a known ``role`` (a column of ints, or a
  message without a role, used to reach the tokenizer as ``str(prompt)``);
- :func:`check_enough_prompts`: the dataset holds at least one rollout batch (the samplers drop an incomplete
  batch, so a smaller dataset trained 0 steps and reported success);
- :func:`check_fits_positions`: the longest prompt plus ``max_completion_length`` fits the model's
  ``max_position_embeddings``;
- :func:`check_reward_checkpoint`: a reward-model path is a sequence-classification checkpoint, not a causal LM
  (which would get a randomly initialised score head: every reward is noise).
"""

from __future__ import annotations

import json
import os

__all__ = [
    "KNOWN_ROLES",
    "check_enough_prompts",
    "check_fits_positions",
    "check_prompt_column",
    "check_reward_checkpoint",
]

#: Chat roles the chat templates of current models render (OpenAI / HF convention; "developer" is the o1 name of
#: "system"). Others are dropped or rendered as plain text by many templates, silently.
KNOWN_ROLES = ("system", "developer", "user", "assistant", "tool")


def check_prompt_column(prompts, split: str = "train") -> None:
    """Raise unless every prompt is a string or a non-empty list of ``{"role": <known role>, "content": ...}``."""
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, str) or prompt is None:  # None / blank text: the trainers' own "empty prompt" error
            continue
        if isinstance(prompt, list):
            for j, message in enumerate(prompt):
                if not isinstance(message, dict) or "role" not in message:
                    raise ValueError(
                        f"The {split} dataset's prompt at row {i}: message {j} has no 'role' ({message!r:.80}). Chat "
                        f"prompts are lists of {{'role': one of {list(KNOWN_ROLES)}, 'content': str}}."
                    )
                if message["role"] not in KNOWN_ROLES:
                    raise ValueError(
                        f"The {split} dataset's prompt at row {i}: message {j} has the unknown role "
                        f"{message['role']!r}; expected one of {list(KNOWN_ROLES)} (chat templates drop or "
                        "mis-render other roles)."
                    )
                if "content" not in message:
                    raise ValueError(f"The {split} dataset's prompt at row {i}: message {j} has no 'content'.")
            continue
        raise ValueError(
            f"The {split} dataset's prompt at row {i} is {type(prompt).__name__} {prompt!r:.40}; a prompt must be text "
            "or a list of chat messages. Convert the column to strings (e.g. dataset.map) if that is what you mean."
        )


def check_enough_prompts(dataset, needed: int, how: str, split: str = "train") -> None:
    """Raise when ``dataset`` holds fewer than ``needed`` prompts (one optimizer step's worth); ``how`` says how
    ``needed`` follows from the settings. Streamed datasets (no ``len``) are not checked."""
    if dataset is None or not hasattr(dataset, "__len__"):
        return
    if len(dataset) < needed:
        raise ValueError(
            f"The {split} dataset has {len(dataset)} prompts but one rollout batch needs {needed} ({how}); incomplete "
            "batches are dropped, so no step would train. Use more prompts or a smaller per_device_train_batch_size "
            "/ gradient_accumulation_steps / num_mini_batches."
        )


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def check_fits_positions(model_config, tokenizer, prompts, max_prompt_length, max_completion_length: int,
                         owner: str = "The trainer") -> None:  # fmt: skip
    """Raise when the longest prompt (after ``max_prompt_length`` truncation) plus ``max_completion_length``
    exceeds the model's ``max_position_embeddings``. Prompts are tokenized only when the static bound
    ``max_prompt_length + max_completion_length`` does not already fit."""
    limit = getattr(_text_config(model_config), "max_position_embeddings", None)
    if not isinstance(limit, int) or limit <= 0:
        return
    if max_completion_length >= limit:
        raise ValueError(
            f"{owner}: max_completion_length={max_completion_length} leaves no room for the prompt in the model's "
            f"max_position_embeddings={limit}. Set max_completion_length < {limit}."
        )
    if max_prompt_length is not None and max_prompt_length + max_completion_length <= limit:
        return
    if prompts is None or tokenizer is None:
        return
    from .generation import tokenize_prompts

    longest = max((len(ids) for ids in tokenize_prompts(tokenizer, list(prompts), max_prompt_length)), default=0)
    if longest + max_completion_length > limit:
        raise ValueError(
            f"{owner}: prompts of up to {longest} tokens (max_prompt_length={max_prompt_length}) plus "
            f"max_completion_length={max_completion_length} = {longest + max_completion_length} tokens exceed the "
            f"model's max_position_embeddings={limit}: positions past it were never trained. Set max_prompt_length "
            f"<= {limit - max_completion_length} (longer prompts keep their last tokens) or a smaller "
            "max_completion_length."
        )


def check_reward_checkpoint(path, field: str = "reward model path") -> None:
    """Raise when the local checkpoint ``path`` is a causal LM (``architectures`` in its ``config.json`` without a
    ``*ForSequenceClassification``): loading it as a reward model adds a randomly initialised score head. Hub ids and
    adapter-only directories (no ``config.json``) are left to ``from_pretrained``."""
    if not isinstance(path, (str, os.PathLike)):
        return
    config_file = os.path.join(os.path.expanduser(os.fspath(path)), "config.json")
    if not os.path.isfile(config_file):
        return
    try:
        with open(config_file, encoding="utf-8") as f:
            architectures = json.load(f).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return
    if architectures and not any(str(a).endswith("ForSequenceClassification") for a in architectures):
        raise ValueError(
            f"{field}: {os.fspath(path)!r} is a {architectures[0]} checkpoint, not a reward model: loading it as one "
            "adds a randomly initialised score head, so every reward would be noise. Train a reward model from it "
            "first (trl-extras reward-two-stage / reward-ensemble) and pass that, or pass a "
            "*ForSequenceClassification checkpoint."
        )
