"""Scoring with a Bradley–Terry reward model, tokenized exactly as TRL's ``RewardTrainer`` trained it.

TRL 1.16's ``RewardTrainer`` appends the EOS *string* to standard (text) chosen/rejected and tokenizes
``prompt + completion`` with the tokenizer's special tokens (so BOS stays), while conversational examples go
through ``apply_chat_template(prompt + completion, tokenize=True)``. GRPO's reward-model scoring drops both BOS
and EOS — a train/score mismatch. Everything in trl_extras that scores with a reward model goes through
:func:`reward_model_input_ids`, which mirrors the training tokenization; a test pins it to TRL's own
``RewardTrainer._prepare_dataset`` so a TRL change fails loudly.
"""

from __future__ import annotations

import math
import numbers
import os

import torch

from ..modeling.generation import is_conversational_prompt
from .source import RewardSource


def reward_model_input_ids(tokenizer, prompt, completion) -> list[int]:
    """Token ids the reward model sees for one (prompt, completion), as ``RewardTrainer`` builds them."""
    if is_conversational_prompt(prompt) or (isinstance(completion, list) and completion and isinstance(completion[0], dict)):
        if not (isinstance(prompt, list) and isinstance(completion, list)):
            raise ValueError("Mixing a conversational prompt/completion with a plain-text one.")
        return list(tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)["input_ids"])
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise TypeError(f"Expected text prompt and completion, got {type(prompt).__name__}/{type(completion).__name__}")
    text = prompt + completion
    if tokenizer.eos_token and not text.endswith(tokenizer.eos_token):
        text = text + tokenizer.eos_token
    return list(tokenizer(text=text)["input_ids"])


def reward_model_batches(tokenizer, prompts, completions, batch_size: int, pad_id: int, max_length: int | None = None):
    """Yield right-padded ``(input_ids, attention_mask)`` ``(B, T)`` batches tokenized as RewardTrainer does.

    ``max_length`` keeps the *last* tokens of longer inputs.
    """
    from trl.trainer.utils import pad  # lazily: importing this module must not import transformers

    for start in range(0, len(prompts), batch_size):
        ids = [
            reward_model_input_ids(tokenizer, p, c)
            for p, c in zip(prompts[start : start + batch_size], completions[start : start + batch_size])
        ]
        if max_length is not None:
            ids = [x[-max_length:] for x in ids]
        ids = [torch.tensor(x, dtype=torch.long) for x in ids]
        yield pad(ids, pad_id, padding_side="right"), pad([torch.ones_like(x) for x in ids], 0, padding_side="right")


@torch.no_grad()
def score_with_reward_model(
    model, tokenizer, prompts: list, completions: list, batch_size: int = 64, max_length: int | None = None
) -> torch.Tensor:
    """Rewards ``(N,)`` (float32, on CPU) of a sequence-classification model with ``num_labels == 1``.

    Sequences are right-padded with the pad token (EOS if none, as in ``RewardTrainer``); the model pools at the
    last non-pad token. ``max_length`` keeps the *last* tokens of longer inputs (RewardTrainer would drop such
    pairs in training; at scoring time the completion's end is what matters).
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    if getattr(model.config, "num_labels", 1) != 1:
        raise ValueError(f"A reward model must have num_labels == 1, got {model.config.num_labels}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    # the wrapped module's mode: a DeepSpeed engine's own `training` flag does not follow eval()/train()
    was_training = getattr(model, "module", model).training
    model.eval()
    scores = []
    for input_ids, attention_mask in reward_model_batches(tokenizer, prompts, completions, batch_size, pad_id, max_length):
        logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
        scores.append(logits[:, 0].float().cpu())
    if was_training:
        model.train()
    return torch.cat(scores) if scores else torch.zeros(0)


class RewardModelScorer(RewardSource):
    """A reward model as a TRL reward function: ``scorer(prompts, completions, **kwargs) -> list[float]``, and a
    :class:`~trl_extras.rewards.source.RewardSource`.

    Args:
        model: a ``PreTrainedModel`` (sequence classification, ``num_labels=1``; PEFT models work) or a path: a
            full checkpoint, or a LoRA adapter folder (loaded as a ``PeftModel`` on its base, see
            :func:`~trl_extras.rewards.source.load_adapter_reward_model`).
        processing_class: its tokenizer; loaded from the path (or ``config._name_or_path``) when omitted.
        batch_size: sequences per forward pass.
        model_init_kwargs: ``from_pretrained`` kwargs for a path.
        name: display name (default: the path's last folder, or that of the model's ``config._name_or_path``).
    """

    def __init__(self, model, processing_class=None, batch_size: int = 64, model_init_kwargs: dict | None = None,
                 name: str | None = None):  # fmt: skip
        from transformers import AutoTokenizer

        from .source import _model_name, load_reward_model, name_from_path

        self.path = None
        self._model_init_kwargs = dict(model_init_kwargs or {})
        if isinstance(model, (str, os.PathLike)):
            self.path = str(model)
            model, loaded_tokenizer = load_reward_model(self.path, model_init_kwargs)
            processing_class = processing_class or loaded_tokenizer
        if processing_class is None:
            path = getattr(model.config, "_name_or_path", None)
            if not path:
                raise ValueError("Pass `processing_class` for a reward model instance that was not loaded from a path.")
            processing_class = AutoTokenizer.from_pretrained(path)
        self.model = model
        self.processing_class = processing_class
        self.batch_size = batch_size
        self.config = model.config  # TRL's telemetry and utilities read `.config`
        self.name = name or (name_from_path(self.path) if self.path else _model_name(model)) or type(model).__name__

    def _identity_target(self):
        return self.path if self.path is not None else self.model  # the folder's content, or the weights

    def score(self, prompts, completions) -> torch.Tensor:
        return score_with_reward_model(self.model, self.processing_class, prompts, completions, self.batch_size)

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        return self.score(prompts, completions).tolist()

    def modules(self) -> list:
        return [self.model]

    def place(self, device, wrap=None) -> None:
        """To ``device``; with ``wrap`` (e.g. a DeepSpeed inference engine) the model is replaced by ``wrap(model)``."""
        self.model = wrap(self.model) if wrap is not None else self.model.to(device)

    def value_init_model(self):
        from .source import value_init_copy

        # a quantized/partitioned full model is reloaded from its path (an adapter in that state is refused)
        path = self.path or getattr(self.model.config, "_name_or_path", None) or None
        return value_init_copy(self.model, path, self._model_init_kwargs), self.processing_class

    def __repr__(self) -> str:
        return f"RewardModelScorer({self.name!r})"


def check_rewards(name: str, values, expected: int) -> list[float]:
    """Validate one reward function's output: a list of ``expected`` finite floats, else a clear error."""
    if values is None:
        raise ValueError(f"Reward function {name!r} returned None instead of a list of {expected} floats.")
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__len__"):  # a dict would be read as its keys
        raise ValueError(
            f"Reward function {name!r} returned {type(values).__name__} {values!r:.80}; expected a list of {expected} "
            "floats (one per completion)."
        )
    values = values.tolist() if isinstance(values, torch.Tensor) else list(values)
    if len(values) != expected:
        raise ValueError(f"Reward function {name!r} returned {len(values)} values for {expected} completions.")
    out = []
    for i, v in enumerate(values):
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        if not isinstance(v, numbers.Real) and v is not None:
            raise ValueError(
                f"Reward function {name!r} returned {type(v).__name__} {v!r:.80} for completion {i}; rewards must "
                "be numbers (int/float), not strings or other objects."
            )
        if v is None or (isinstance(v, float) and math.isnan(v)) or not math.isfinite(float(v)):
            raise ValueError(f"Reward function {name!r} returned {v!r} for completion {i}; rewards must be finite.")
        out.append(float(v))
    return out
