"""Generalized advantage estimation and advantage normalization for token-level PPO.

References:
- Schulman, Moritz, Levine, Jordan, Abbeel 2016, "High-Dimensional Continuous Control Using Generalized
  Advantage Estimation" (GAE).
- Huang et al. 2024, "The N+ Implementation Details of RLHF with PPO: A Case Study on TL;DR Summarization"
  (γ = 1, λ = 0.95, advantages whitened over the batch).
- The YandexGPT alignment article: "advantage normalization" over the whole batch, with the option to
  keep the mean.
"""

from __future__ import annotations

import torch

from .masked import masked_moments
from .registry import Registry

__all__ = ["compute_gae", "normalize_advantages", "ADVANTAGE_NORMALIZATIONS", "ADVANTAGE_NORMALIZERS"]

#: Advantage normalizations (``advantage_normalization``). Each entry is
#: ``fn(advantages, valid, *, keep_mean, group_index, accelerator, eps) -> advantages'`` over ``(B, T)`` or ``(B,)``
#: inputs with ``valid`` the boolean mask; invalid positions must come back as 0 (:func:`normalize_advantages`
#: checks shapes first and calls the entry).
ADVANTAGE_NORMALIZERS = Registry("advantage normalization")
#: The names of :data:`ADVANTAGE_NORMALIZERS` (a live view).
ADVANTAGE_NORMALIZATIONS = ADVANTAGE_NORMALIZERS


def _standardize(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, keep_mean: bool, eps: float) -> torch.Tensor:
    """``(x − μ)/sqrt(var + eps)``, plus ``μ`` again when ``keep_mean``."""
    mean = mean.to(x.dtype)
    out = (x - mean) * torch.rsqrt(var + eps).to(x.dtype)
    return out + mean if keep_mean else out


@ADVANTAGE_NORMALIZERS.register("none")
def _normalize_none(advantages, valid, *, keep_mean, group_index, accelerator, eps):
    """Unchanged (masked)."""
    return torch.where(valid, advantages, torch.zeros((), dtype=advantages.dtype, device=advantages.device))


@ADVANTAGE_NORMALIZERS.register("batch")
def _normalize_batch(advantages, valid, *, keep_mean, group_index, accelerator, eps):
    """Statistics over all valid positions of the GLOBAL batch (all-reduced across processes with ``accelerator``)."""
    mean, var, _ = masked_moments(advantages, valid, accelerator)
    zero = torch.zeros((), dtype=advantages.dtype, device=advantages.device)
    return torch.where(valid, _standardize(advantages, mean, var, keep_mean, eps), zero)


@ADVANTAGE_NORMALIZERS.register("group")
def _normalize_group(advantages, valid, *, keep_mean, group_index, accelerator, eps):
    """Statistics per prompt (rows sharing a ``group_index``), process-local."""
    if group_index is None:
        raise ValueError("normalize_advantages(mode='group') needs `group_index` (the prompt id of each row).")
    group_index = torch.as_tensor(group_index, device=advantages.device)
    if group_index.shape != advantages.shape[:1]:
        raise ValueError(
            f"group_index must have shape (B,)={tuple(advantages.shape[:1])}, got {tuple(group_index.shape)}."
        )
    zero = torch.zeros((), dtype=advantages.dtype, device=advantages.device)
    out = torch.zeros_like(advantages)
    for g in torch.unique(group_index):
        rows = group_index == g
        x, m = advantages[rows], valid[rows]
        if not m.any():  # a group whose rows are all empty contributes nothing
            continue
        mean, var, _ = masked_moments(x, m)
        out[rows] = torch.where(m, _standardize(x, mean, var, keep_mean, eps), zero)
    return out


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw GAE(γ, λ) advantages and returns over the valid tokens of each sequence.

    ``δ_t = r_t + γ V(s_{t+1}) − V(s_t)``, ``A_t = Σ_l (γλ)^l δ_{t+l}``, where ``t+1`` is the NEXT VALID position
    (invalid positions are skipped, not treated as zero-reward steps) and the value after the last valid token is
    0 (the episode ends at EOS or at the length limit; the score is in that token's reward).

    Args:
        rewards: ``(B, T)`` per-token rewards (e.g. −β·KL at every token plus the score at the last token).
        values: ``(B, T)`` value estimates V(s_t) at the same positions.
        mask: ``(B, T)`` 1 for valid completion tokens.
        gamma, lam: discount and GAE λ.

    Returns:
        ``(advantages, returns)``, both ``(B, T)`` float; ``returns = advantages + values`` on valid positions;
        both are 0 on invalid positions. Advantages are NOT normalized (see :func:`normalize_advantages`).
    """
    if rewards.shape != values.shape or rewards.shape != mask.shape:
        raise ValueError(
            f"compute_gae: rewards {tuple(rewards.shape)}, values {tuple(values.shape)} and mask "
            f"{tuple(mask.shape)} must have the same (B, T) shape."
        )
    if rewards.dim() != 2:
        raise ValueError(f"compute_gae expects (B, T) tensors, got {rewards.dim()} dims.")
    valid = mask.bool()
    dtype = torch.promote_types(rewards.dtype, values.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float32
    rewards, values = rewards.to(dtype), values.to(dtype)
    B, T = rewards.shape
    advantages = torch.zeros(B, T, dtype=dtype, device=rewards.device)
    next_value = torch.zeros(B, dtype=dtype, device=rewards.device)
    next_adv = torch.zeros(B, dtype=dtype, device=rewards.device)
    # CleanRL-style backward recursion; the carried (next_value, next_adv) only advance at valid positions.
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv_t = delta + gamma * lam * next_adv
        v = valid[:, t]
        advantages[:, t] = torch.where(v, adv_t, 0.0)
        next_value = torch.where(v, values[:, t], next_value)
        next_adv = torch.where(v, adv_t, next_adv)
    returns = torch.where(valid, advantages + values, 0.0)
    return advantages, returns


def normalize_advantages(
    advantages: torch.Tensor,
    mask: torch.Tensor | None = None,
    mode: str = "batch",
    keep_mean: bool = False,
    group_index: torch.Tensor | None = None,
    accelerator=None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Normalize advantages to unit variance (and zero mean unless ``keep_mean``) over valid positions.

    Args:
        advantages: ``(B, T)`` token-level or ``(B,)`` sequence-level advantages.
        mask: same shape as ``advantages``, 1 = valid (``None``: all valid). Invalid positions come back as 0.
        mode: a name in :data:`ADVANTAGE_NORMALIZERS`:
            - ``"batch"``: statistics over all valid positions of the GLOBAL batch; with ``accelerator`` the sums
              and counts are all-reduced across processes, so sharding the batch does not change the result.
            - ``"group"``: statistics per prompt: over all valid positions (tokens of all generations, for
              token-level input; one value per generation for sequence-level input) of the rows sharing a
              ``group_index``. Groups are process-local: all generations of a prompt must be on the same process
              (as ``generate_rollouts`` produces them).
            - ``"none"``: returned unchanged (masked).
        keep_mean: rescale to unit variance but keep the mean: ``(A − μ)/σ + μ`` (old TRL ``shift_mean=False``).
        group_index: ``(B,)`` prompt ids, required for ``"group"``.
        accelerator: an ``accelerate.Accelerator`` for global ``"batch"`` statistics.
        eps: added to the variance (``σ = sqrt(var + eps)``; var is the population variance, ddof=0).

    Returns:
        Tensor shaped like ``advantages``.
    """
    normalizer = ADVANTAGE_NORMALIZERS.get(mode)
    if mask is None:
        mask = torch.ones_like(advantages, dtype=torch.bool)
    if mask.shape != advantages.shape:
        raise ValueError(f"mask {tuple(mask.shape)} does not match advantages {tuple(advantages.shape)}.")
    return normalizer(
        advantages, mask.bool(), keep_mean=keep_mean, group_index=group_index, accelerator=accelerator, eps=eps
    )
