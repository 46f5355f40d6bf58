"""The PPO algorithm's pieces as pure functions over ``(B, T)`` tensors: token rewards, the clipped surrogate, the
clipped value loss, loss aggregation, the approximate KL to the sampling policy, KL controllers, running moments
and the critic's explained variance. ``trl_extras.trainers.ppo.trainer.PPOTrainer`` only orchestrates them.

Notation: ``B`` sequences, ``T`` completion positions; ``mask`` is ``(B, T)``, nonzero on valid completion tokens.

References:
- Schulman et al. 2017, "Proximal Policy Optimization Algorithms" (clipped surrogate).
- Huang et al. 2024, "The N+ Implementation Details of RLHF with PPO: A Case Study on TL;DR Summarization" (clipped
  value loss, reward at the last token, whitening).
- Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences" (adaptive KL controller).
- J. Schulman 2020, "Approximating KL Divergence" (the k3 estimator used by :func:`approx_kl`); CleanRL's PPO.
- TRL's ``GRPOConfig.loss_type`` for the loss aggregation names (:data:`LOSS_TYPES`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .masked import masked_mean, masked_var
from .registry import Registry

__all__ = [
    "aggregation_weights",
    "surrogate_grad_hint",
    "GRPO_LOSS_AGGREGATION",
    "LOSS_AGGREGATIONS",
    "LOSS_TYPES",
    "AggregationContext",
    "AdaptiveKLController",
    "FixedKLController",
    "RunningMoments",
    "aggregate_loss",
    "approx_kl",
    "explained_variance",
    "policy_loss",
    "scores_to_token_rewards",
    "value_loss",
]

#: How per-token losses become one scalar (``loss_type``), with TRL ``GRPOConfig.loss_type``'s names and meanings.
#: Each entry is ``fn(summed (B, T), valid (B, T) bool, ctx: AggregationContext) -> scalar``, where ``summed`` is the
#: per-token loss with invalid positions zeroed. The result is one micro-batch's share: summed over the
#: ``gradient_accumulation_steps`` micro-batches of an optimizer step (and averaged over processes, as DDP averages
#: gradients) it is the step's loss. Shared by ``PPOTrainer`` and ``ExactKLGRPOTrainer`` (which aggregates its KL
#: term exactly as GRPO aggregates its loss: :data:`GRPO_LOSS_AGGREGATION`).
LOSS_AGGREGATIONS = Registry("loss_type")
#: The names of :data:`LOSS_AGGREGATIONS` (a live view).
LOSS_TYPES = LOSS_AGGREGATIONS


@dataclass(frozen=True)
class AggregationContext:
    """What an aggregation may need besides the losses.

    Attributes:
        gradient_accumulation_steps: micro-batches per optimizer step (1 in evaluation).
        num_items_in_batch: valid tokens of the optimizer step's whole batch over all processes (``dapo``).
        num_processes: processes whose gradients are averaged (``dapo``).
        max_completion_length: the constant length normaliser (``dr_grpo``).
    """

    gradient_accumulation_steps: int | float = 1
    num_items_in_batch: float | torch.Tensor | None = None
    num_processes: int = 1
    max_completion_length: int | None = None


@LOSS_AGGREGATIONS.register("dapo")
def aggregate_dapo(summed: torch.Tensor, valid: torch.Tensor, ctx: AggregationContext) -> torch.Tensor:
    """TRL's default: the micro-batch's token sum over the valid tokens of the WHOLE accumulated batch (all
    micro-batches of the step, all processes): every token of the step weighs the same, and gradient accumulation
    does not change the gradient."""
    if ctx.num_items_in_batch is None:
        raise ValueError("aggregate_loss(loss_type='dapo') needs `num_items_in_batch` (tokens of the whole batch).")
    normalizer = torch.as_tensor(ctx.num_items_in_batch, dtype=summed.dtype, device=summed.device).clamp(min=1.0)
    return summed.sum() / (normalizer / ctx.num_processes)


@LOSS_AGGREGATIONS.register("bnpo")
def aggregate_bnpo(summed: torch.Tensor, valid: torch.Tensor, ctx: AggregationContext) -> torch.Tensor:
    """Token mean of each micro-batch, divided by the accumulation steps (micro-batches weigh the same whatever
    their token counts)."""
    return summed.sum() / valid.sum().clamp(min=1) / ctx.gradient_accumulation_steps


@LOSS_AGGREGATIONS.register("grpo")
def aggregate_grpo(summed: torch.Tensor, valid: torch.Tensor, ctx: AggregationContext) -> torch.Tensor:
    """Per-sequence token mean, then the mean over sequences (each sequence weighs the same), divided by the
    accumulation steps (Shao et al. 2024)."""
    per_seq = summed.sum(1) / valid.sum(1).clamp(min=1)
    return per_seq.mean() / ctx.gradient_accumulation_steps


@LOSS_AGGREGATIONS.register("dr_grpo")
def aggregate_dr_grpo(summed: torch.Tensor, valid: torch.Tensor, ctx: AggregationContext) -> torch.Tensor:
    """Sum divided by the constant ``B × max_completion_length``, divided by the accumulation steps (Liu et al.
    2025, "Understanding R1-Zero-Like Training": no length bias)."""
    if ctx.max_completion_length is None:
        raise ValueError("aggregate_loss(loss_type='dr_grpo') needs `max_completion_length`.")
    return summed.sum() / (summed.shape[0] * ctx.max_completion_length) / ctx.gradient_accumulation_steps


@LOSS_AGGREGATIONS.register("luspo")
def aggregate_luspo(summed: torch.Tensor, valid: torch.Tensor, ctx: AggregationContext) -> torch.Tensor:
    """Per-sequence token SUM, then the mean over sequences, divided by the accumulation steps (TRL's ``luspo``)."""
    return summed.sum(1).mean() / ctx.gradient_accumulation_steps


#: How TRL 1.16's GRPO aggregates each of its ``loss_type`` values (several share one aggregation and differ only
#: in the per-token loss): ``ExactKLGRPOTrainer`` aggregates its exact-KL term the same way.
GRPO_LOSS_AGGREGATION = {
    "grpo": "grpo", "sapo": "grpo", "bnpo": "bnpo", "dr_grpo": "dr_grpo", "luspo": "luspo",
    "dapo": "dapo", "cispo": "dapo", "vespo": "dapo",
}  # fmt: skip


def scores_to_token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token rewards ``(B, T)``: ``−β·KL_t`` on every valid token plus the sequence score at the last valid one.

    Args:
        scores: ``(B,)`` sequence scores. kl: ``(B, T)`` per-token KL (an estimate, or the exact KL of the state).
        mask: ``(B, T)`` valid tokens. kl_coef: β.

    Returns:
        ``(B, T)`` rewards, 0 on padding; a row without valid token gets nothing.
    """
    if kl.shape != mask.shape or scores.shape != kl.shape[:1]:
        raise ValueError(
            f"scores_to_token_rewards: scores {tuple(scores.shape)} must be (B,), kl {tuple(kl.shape)} and mask "
            f"{tuple(mask.shape)} (B, T)."
        )
    valid = mask.bool()
    rewards = torch.where(valid, -kl_coef * kl, torch.zeros((), dtype=kl.dtype, device=kl.device))
    last = (valid.long().cumsum(1) * valid).argmax(1)  # index of the last valid token (0 for an empty row)
    has_token = valid.any(1)
    rows = torch.arange(len(scores), device=rewards.device)[has_token]
    rewards[rows, last[has_token]] += scores[has_token].to(rewards.dtype)
    return rewards


def policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, cliprange: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate per token: ``max(−A·ρ, −A·clip(ρ, 1 ± ε))`` with ``ρ = exp(log π − log π_old)``.

    Args:
        logprobs: ``(B, T)`` log-probs of the sampled tokens under the current policy (with gradient).
        old_logprobs: ``(B, T)`` the same under the sampling policy. advantages: ``(B, T)``.
        cliprange: ε; ``None`` = no clipping (the plain importance-weighted policy gradient).

    Returns:
        ``(losses (B, T), clipped (B, T) bool)`` -- ``clipped`` marks tokens where the clipped branch is active
        (its mean over valid tokens is the usual ``clipfrac``). Aggregate with :func:`aggregate_loss`.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    losses = -advantages * ratio
    if cliprange is None:
        return losses, torch.zeros_like(losses, dtype=torch.bool)
    clipped_losses = -advantages * ratio.clamp(1.0 - cliprange, 1.0 + cliprange)
    return torch.max(losses, clipped_losses), clipped_losses > losses


def aggregation_weights(aggregate, shape: tuple, device=None) -> torch.Tensor:
    """``∂ aggregate(x) / ∂x`` at ``x = 0``, ``(B, T)``: the weight of each position's per-token loss in a LINEAR
    aggregation (every entry of :data:`LOSS_AGGREGATIONS` is linear). ``aggregate``: ``(B, T) -> scalar``."""
    with torch.enable_grad():
        x = torch.zeros(shape, device=device, requires_grad=True)
        (w,) = torch.autograd.grad(aggregate(x), x, allow_unused=True)
    return torch.zeros(shape, device=device) if w is None else w


def surrogate_grad_hint(
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    cliprange: float | None,
    kl_coef: torch.Tensor,
    weights: torch.Tensor,
):
    """The gradient PPO's policy loss ``Σ_t w_t·(policy_loss(log π_t) + β·KL_t)`` sends to each position's
    log-prob and KL, as a function of their values: ``fn(logprobs (B, c), kl (B, c) or None, positions: slice) ->
    (g_lp, g_kl)`` for the fused head kernel's ``grad_hint`` (``trl_extras.modeling.head_kernel``).

    Args:
        old_logprobs, advantages: ``(B, T)``; cliprange: ε (or None); kl_coef: ``(B,)`` β of each row;
        weights: ``(B, T)`` aggregation weights (:func:`aggregation_weights`).
    """

    def hint(logprobs: torch.Tensor, kl: torch.Tensor | None, positions: slice):
        w = weights[:, positions].to(logprobs.device)
        with torch.enable_grad():
            x = logprobs.detach().float().requires_grad_(True)
            losses, _ = policy_loss(x, old_logprobs[:, positions].to(x.device), advantages[:, positions].to(x.device),
                                    cliprange)  # fmt: skip
            (g_lp,) = torch.autograd.grad((losses * w).sum(), x)
        g_kl = None if kl is None else (kl_coef.to(w.device, torch.float32)[:, None] * w).expand_as(kl)
        return g_lp, g_kl

    return hint


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, cliprange_value: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss per token: ``½·max((V − R)², (V_old + clip(V − V_old, ±ε_v) − R)²)`` (Huang et al.).

    Args:
        values: ``(B, T)`` new values (with gradient); old_values: ``(B, T)`` rollout values; returns: ``(B, T)``.
        cliprange_value: ε_v; ``None`` = the plain squared error ``½(V − R)²``.

    Returns:
        ``(losses (B, T), clipped (B, T) bool)``.
    """
    losses = (values - returns) ** 2
    if cliprange_value is None:
        return 0.5 * losses, torch.zeros_like(losses, dtype=torch.bool)
    clipped_values = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    clipped_losses = (clipped_values - returns) ** 2
    return 0.5 * torch.max(losses, clipped_losses), clipped_losses > losses


def aggregate_loss(
    losses: torch.Tensor,
    mask: torch.Tensor,
    loss_type: str = "dapo",
    gradient_accumulation_steps: int = 1,
    num_items_in_batch: float | torch.Tensor | None = None,
    num_processes: int = 1,
    max_completion_length: int | None = None,
) -> torch.Tensor:
    """One micro-batch's share of the optimizer step's loss, from per-token losses (see :data:`LOSS_AGGREGATIONS`).

    Summed over the ``gradient_accumulation_steps`` micro-batches of an optimizer step (and averaged over processes,
    as DDP averages gradients) this is the step's loss.

    Args:
        losses: ``(B, T)`` per-token losses of the micro-batch. mask: ``(B, T)`` valid tokens.
        loss_type: a name in :data:`LOSS_AGGREGATIONS`.
        gradient_accumulation_steps: micro-batches per optimizer step (``bnpo``, ``grpo``, ``dr_grpo``).
        num_items_in_batch: ``dapo``: valid tokens of the whole accumulated batch over all processes.
        num_processes: ``dapo``: processes whose gradients are averaged.
        max_completion_length: ``dr_grpo``: the constant length normaliser.

    Returns:
        scalar loss.
    """
    if losses.shape != mask.shape:
        raise ValueError(f"aggregate_loss: losses {tuple(losses.shape)} and mask {tuple(mask.shape)} differ.")
    aggregation = LOSS_AGGREGATIONS.get(loss_type)
    valid = mask.bool()
    summed = torch.where(valid, losses, torch.zeros((), dtype=losses.dtype, device=losses.device))
    ctx = AggregationContext(gradient_accumulation_steps, num_items_in_batch, num_processes, max_completion_length)
    return aggregation(summed, valid, ctx)


def approx_kl(logratio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Approximate KL(π_old‖π) from tokens sampled by π_old: the mean of ``(ρ − 1) − log ρ``, ``ρ = π/π_old``.

    Schulman's k3 with ``r = π(x)/π_old(x)`` on samples ``x ~ π_old``: ``E[r − 1] = 0`` and ``E[−log r] =
    KL(π_old‖π)``, so the mean is unbiased for KL(π_old‖π) and every term is ≥ 0 (CleanRL's ``approx_kl``).

    Args:
        logratio: ``(B, T)`` ``log π(x_t) − log π_old(x_t)``. mask: ``(B, T)``.

    Returns:
        scalar mean over valid tokens.
    """
    return masked_mean(torch.expm1(logratio) - logratio, mask)


def explained_variance(
    values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, accelerator=None
) -> torch.Tensor:
    """``1 − Var(returns − values) / Var(returns)`` over valid tokens of ``(B, T)`` tensors (1 = perfect critic,
    ≤ 0 = useless). With ``accelerator`` both variances are over the valid tokens of all processes (the global
    batch), not this process's share.

    Returns a scalar; NaN when ``Var(returns)`` is 0 (all valid returns equal, e.g. every reward 0 with no KL
    penalty, or a single valid token): the ratio is undefined there, and CleanRL's ``np.nan if var_y == 0`` says so
    instead of a clamped denominator's 1.0 (zero residual) or −1e8-scale number (any residual). The variances are
    two-pass float64 moments (``masked_moments``), so equal float32 returns give exactly 0.
    """
    var_returns = masked_var(returns, mask, accelerator=accelerator)
    ev = 1.0 - masked_var(returns - values, mask, accelerator=accelerator) / var_returns
    return torch.where(var_returns == 0, torch.full_like(ev, float("nan")), ev)


class AdaptiveKLController:
    """Ziegler et al. 2019 proportional controller: ``β ← β·(1 + clip(KL/target − 1, ±0.2)·n/horizon)``.

    ``current_kl`` is the mean per-sequence KL of the last rollout batch and ``n`` its number of sequences.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = float(init_kl_coef), float(target), int(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value


class FixedKLController:
    """A constant β."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value


class RunningMoments:
    """Running mean and (population) std of scalars, merged batch by batch (Chan et al. parallel update)."""

    def __init__(self):
        self.mean, self.var, self.count = 0.0, 1.0, 0

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().double().flatten()
        n = x.numel()
        if n == 0:
            return
        batch_mean, batch_var = x.mean().item(), x.var(unbiased=False).item()
        total = self.count + n
        delta = batch_mean - self.mean
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.var = m2 / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(max(self.var, 1e-12))

    def state_dict(self) -> dict:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), int(state["count"])
