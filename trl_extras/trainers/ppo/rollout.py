"""The rollout batch PPO learns from, as one typed record (like torchtune's ``rlhf._types.Trajectory``).

``PPOTrainer._rollout`` fills a :class:`RolloutBatch` once per rollout batch (each process its own rows); the
update reads micro-batches of it (:meth:`RolloutBatch.select`); a checkpoint saved inside the batch's epochs stores
it (:meth:`RolloutBatch.state_dict`), so a resume continues the same batch.

Shapes: ``B`` rows (completions) on this process, ``P`` prompt tokens (left-padded), ``T`` completion tokens
(right-padded). An evaluation rollout has only the sampled and scored fields (prompt/completion ids and masks,
scores); the fields the update needs are ``None`` there. A training batch whose statistics the update computes
itself (PPO's on-policy single pass, ``PPOTrainer._single_pass_update``) has its train scores and groups, and no
log-probs, values or advantages until the update's forward.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

#: The fields every rollout has (an evaluation rollout has only these).
SAMPLED_FIELDS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "scores")
#: The fields the update reads besides the sampled ones (steps 3-10 of ``PPOTrainer._rollout``).
UPDATE_FIELDS = ("train_scores", "group_index", "old_logprobs", "old_values", "advantages", "returns", "ref_logprobs",
                 "kl_coef")  # fmt: skip
#: Fields only some rollouts have (the engine's own log-probs: vLLM, continuous batching).
OPTIONAL_FIELDS = ("sampler_logprobs", "ref_hidden")


@dataclass
class RolloutBatch:
    """One process's rollout batch: the sampled rows and what the update needs of them.

    Attributes:
        prompt_ids: ``(B, P)`` prompt token ids, left-padded.
        prompt_mask: ``(B, P)`` 1 on prompt tokens, 0 on padding.
        completion_ids: ``(B, T)`` sampled completion token ids, right-padded.
        completion_mask: ``(B, T)`` 1 on the tokens through the first EOS, 0 after (padding).
        scores: ``(B,)`` the reward functions' weighted sum, raw (before the missing-EOS penalty, normalization
            and clipping of step 3-4).
        train_scores: ``(B,)`` the scores the policy is trained on (after steps 3-4).
        group_index: ``(B,)`` the prompt group of each row (rows of one prompt are consecutive).
        old_logprobs: ``(B, T)`` log-probs of the sampled tokens under the sampling policy (at ``temperature``).
        old_values: ``(B, T)`` value-model estimates V(s_t) at the rollout, 0 on padding.
        advantages: ``(B, T)`` GAE advantages, normalized (``advantage_normalization``).
        returns: ``(B, T)`` value targets, raw advantages + old values.
        ref_logprobs: ``(B, T)`` log-probs of the sampled tokens under the reference (a sampled-token KL penalty
            with a direct gradient needs them in the update).
        kl_coef: ``(B,)`` the β of this batch's rewards (the adaptive controller may move before the update ends).
        sampler_logprobs: ``(B, T)`` the generation engine's own log-probs of the sampled tokens, when it returns
            them (vLLM, continuous batching): compared with the trainer's (``rollout/logprob_gap``) and, with
            ``vllm_importance_sampling_correction``, the importance-sampling ratio's denominator.
        ref_hidden: ``(B, T, H)`` the reference trunk's final hidden states at the positions that predict each
            completion token, kept from the rollout statistics (``PPOConfig.cache_reference_states`` with the exact
            KL): the update's exact KL runs only the reference's head on them, never its trunk.
        num_items_in_batch: ``()`` not a row tensor: on a micro-batch handed to ``compute_loss``, the valid tokens of
            its optimizer step's whole minibatch on all processes (the ``'dapo'`` normaliser,
            ``PPOSchedule.minibatch_token_counts``); ``None`` on the whole batch. Never indexed nor saved.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    scores: torch.Tensor
    train_scores: torch.Tensor | None = None
    group_index: torch.Tensor | None = None
    old_logprobs: torch.Tensor | None = None
    old_values: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    kl_coef: torch.Tensor | None = None
    sampler_logprobs: torch.Tensor | None = None
    ref_hidden: torch.Tensor | None = None
    num_items_in_batch: torch.Tensor | None = None

    # --------------------------------------------------------------------------------------------------------
    @classmethod
    def row_fields(cls) -> tuple[str, ...]:
        """The per-row tensor fields (first dimension ``B``): all but ``num_items_in_batch``."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "num_items_in_batch")

    def rows(self) -> dict[str, torch.Tensor]:
        """The row tensors that are set, by field name."""
        return {name: t for name in self.row_fields() if (t := getattr(self, name)) is not None}

    def __len__(self) -> int:
        return self.completion_ids.size(0)

    @property
    def is_complete(self) -> bool:
        """Whether it holds what the update needs (advantages, returns, old log-probs and values...), not only
        samples and scores (evaluation, or a batch waiting for the update's single pass)."""
        return all(getattr(self, name) is not None for name in UPDATE_FIELDS)

    @property
    def input_ids(self) -> torch.Tensor:
        """``(B, P + T)`` prompt and completion ids, as the models read them."""
        return torch.cat([self.prompt_ids, self.completion_ids], 1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """``(B, P + T)`` prompt and completion masks."""
        return torch.cat([self.prompt_mask, self.completion_mask], 1)

    def select(self, idx: torch.Tensor) -> RolloutBatch:
        """The rows ``idx`` (``(b,)`` indices on the batch's device) as a batch of ``b`` rows."""
        return RolloutBatch(**{name: t[idx] for name, t in self.rows().items()})


    def to(self, device) -> RolloutBatch:
        """The same batch with every tensor on ``device``."""
        return dataclasses.replace(
            self, **{f.name: t.to(device) for f in dataclasses.fields(self) if (t := getattr(self, f.name)) is not None}
        )

    # --------------------------------------------------------------------------------------------------------
    # The checkpoint format (``rollout_buffer_<process>.pt``): {field name: CPU tensor}, the fields that are set.
    # The dict the trainer saved before this class existed has the same keys, so old checkpoints load unchanged.
    # --------------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The row tensors, detached, on the CPU (``torch.save``-able with ``weights_only`` loading)."""
        return {name: t.detach().cpu() for name, t in self.rows().items()}

    @classmethod
    def from_state_dict(cls, state: dict, where: str = "rollout buffer") -> RolloutBatch:
        """The batch :meth:`state_dict` saved. An unknown or missing field fails naming it (a file of another
        version) rather than training on a partial batch."""
        if not isinstance(state, dict):
            raise ValueError(f"{where}: expected a dict of tensors, got {type(state).__name__}.")
        known = set(cls.row_fields())
        unknown = sorted(set(state) - known)
        missing = [name for name in SAMPLED_FIELDS if name not in state]
        if unknown or missing:
            raise ValueError(
                f"{where} does not hold a PPO rollout batch of this version (unknown fields {unknown}, missing "
                f"{missing}). Resume from a checkpoint at a rollout boundary, or start over."
            )
        batch = cls(**state)
        sizes = {name: t.size(0) for name, t in batch.rows().items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"{where}: the fields have different numbers of rows: {sizes}.")
        return batch
