"""The models PPOTrainer trains: a per-token value model and, under DeepSpeed, policy + value as one module.

``TokenValueModel`` turns a sequence classifier (e.g. a copy of the reward model) into ``V(s_t)`` at every position;
``PolicyAndValueModel`` is the Trainer's model under DeepSpeed (one engine over both); ``policy_and_values`` is the
update's forward shared by both layouts.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from .lm import policy_logprobs, trunk_hidden_states
from .peft import is_peft_model

__all__ = [
    "PolicyAndValueModel",
    "TokenValueModel",
    "classifier_with_new_head",
    "gathered_for_update",
    "policy_and_values",
]

#: attribute names of a sequence classifier's head (transformers' conventions)
HEAD_NAMES = ("score", "classifier")


def classifier_with_new_head(path: str, **model_init_kwargs) -> nn.Module:
    """``AutoModelForSequenceClassification(num_labels=1)`` on the trunk of the checkpoint at ``path`` (a causal LM),
    for a caller that initialises the head itself (the value model's zero head).

    transformers reports such a load as "score.weight MISSING ... newly initialized" and "lm_head.weight UNEXPECTED",
    which is the intended outcome here, not a problem, and alarms users on every run: the report is silenced for
    this one load and replaced by a check that means something -- any missing weight outside the head is an error
    (a trunk that did not load).
    """
    from transformers import AutoModelForSequenceClassification

    from .loading import load_checking_missing

    return load_checking_missing(
        AutoModelForSequenceClassification, path, HEAD_NAMES, on_missing="error", num_labels=1, **model_init_kwargs
    )


# ----------------------------------------------------------------------------------------------------------------
# The value model: per-token values from a sequence-classification model
# ----------------------------------------------------------------------------------------------------------------
class TokenValueModel(nn.Module):
    """Wraps a ``*ForSequenceClassification`` model (``num_labels=1``, PEFT allowed) to return ``(B, L)`` values.

    A sequence classifier pools its ``score`` head at the last token; PPO needs ``V(s_t)`` at every position, so
    the backbone's hidden states go through the same head everywhere. A value model copied from the reward model
    therefore starts out predicting, at the last token, exactly the reward model's score.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.config = model.config  # TRL's telemetry and utilities read `.config`
        base = self._base()
        if getattr(base, base.base_model_prefix, None) is None:
            raise ValueError(f"Value model {type(base).__name__} has no backbone at `{base.base_model_prefix}`.")
        if self._head(base) is None:
            raise ValueError(f"Value model {type(base).__name__} has no `score` or `classifier` head.")

    def _base(self):
        m = self.model
        return m.get_base_model() if is_peft_model(m) else m

    @staticmethod
    def _head(base):
        return getattr(base, "score", None) or getattr(base, "classifier", None)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        base = self._base()
        hidden = trunk_hidden_states(getattr(base, base.base_model_prefix), input_ids, attention_mask)
        return self._head(base)(hidden).squeeze(-1).float()


def policy_and_values(
    policy: nn.Module,
    value_model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    logits_to_keep: int,
    temperature: float,
    with_policy: bool = True,
    chunk_size: int | None = None,
    with_exact_kl: bool = False,
    ref_model: nn.Module | None = None,
    reference_context=None,
    with_ref_logprobs: bool = False,
    with_entropy: bool = False,
    ref_hidden: torch.Tensor | None = None,
    grad_hint=None,
) -> tuple[dict | None, torch.Tensor]:
    """The update's forward: policy log-probs of the last ``T = logits_to_keep`` tokens (and optionally their
    exact KL to the reference, with gradient) and their values.

    Args:
        policy: causal LM (possibly PEFT/DDP-wrapped); value_model: :class:`TokenValueModel` (possibly DDP-wrapped).
        input_ids, attention_mask: ``(B, L)`` prompt + completion.
        with_policy: ``False`` during the value warm-up (no policy forward at all).
        chunk_size, with_exact_kl, ref_model, reference_context, with_ref_logprobs, with_entropy, ref_hidden: as in
            :func:`trl_extras.modeling.lm.policy_logprobs` (``ref_hidden``: the reference trunk's output cached at
            rollout, used only with ``with_exact_kl``); grad_hint: as in ``policy_logprobs`` (PPO's surrogate)
            (the same chunked pass as the rollout's ``completion_token_stats``).

    Returns:
        ``(policy_logprobs(...) dict or None, values (B, T))`` -- ``values[:, t]`` is ``V(s_t)``, read at the
        position that predicts completion token ``t``.
    """
    T = logits_to_keep
    values = value_model(input_ids, attention_mask)[:, -T - 1 : -1]
    if not with_policy:
        return None, values
    out = policy_logprobs(
        policy, input_ids, attention_mask, T, temperature=temperature, chunk_size=chunk_size,
        with_exact_kl=with_exact_kl, ref_model=ref_model, reference_context=reference_context,
        with_ref_logprobs=with_ref_logprobs, with_entropy=with_entropy,
        ref_hidden=ref_hidden if with_exact_kl else None, grad_hint=grad_hint,
    )
    return out, values


class PolicyAndValueModel(nn.Module):
    """Policy and value model as ONE module, the Trainer's model under DeepSpeed.

    DeepSpeed builds one engine per ``accelerator.prepare`` call around one model and one optimizer, and ZeRO only
    partitions parameters that belong to that model; the value model's parameters in a second, unprepared module
    would be invisible to it. As one module, both are partitioned, clipped (jointly: DeepSpeed's
    ``gradient_clipping`` sees one parameter set), checkpointed and resumed together. ``forward`` is the only entry
    the update uses, so DeepSpeed's hooks run around both models.
    """

    def __init__(self, policy: nn.Module, value_model: TokenValueModel):
        super().__init__()
        self.policy = policy
        self.value_model = value_model
        self.config = policy.config  # TRL telemetry, DeepSpeed "auto" sizes and model cards read the policy's

    def forward(self, input_ids, attention_mask, logits_to_keep: int, temperature: float, **kwargs):
        return policy_and_values(self.policy, self.value_model, input_ids, attention_mask, logits_to_keep, temperature, **kwargs)

    def generate(self, *args, **kwargs):  # rollouts sample from the policy
        return self.policy.generate(*args, **kwargs)

    # Activation checkpointing is the policy's (the value model's is set when it is built): the Trainer turns it on
    # through these, TRL's unwrap_model_for_generation turns it off and on around generation.
    @property
    def is_gradient_checkpointing(self) -> bool:
        return getattr(self.policy, "is_gradient_checkpointing", False)

    def activation_checkpointing_enable(self, **kwargs):
        enable = getattr(self.policy, "activation_checkpointing_enable", None)
        if enable is None:  # transformers < 5.x names
            kwargs["gradient_checkpointing_kwargs"] = kwargs.pop("activation_checkpointing_kwargs", None)
            enable = self.policy.gradient_checkpointing_enable
        enable(**kwargs)

    def gradient_checkpointing_enable(self, **kwargs):
        self.policy.gradient_checkpointing_enable(**kwargs)

    def gradient_checkpointing_disable(self):
        self.policy.gradient_checkpointing_disable()


def gathered_for_update(params: list):
    """A context in which ``params`` can be written: DeepSpeed ZeRO-3 gathers them (rank 0's write is broadcast)."""
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=0)
    return nullcontext()
