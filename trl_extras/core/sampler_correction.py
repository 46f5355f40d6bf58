"""The gap between a generation engine's log-probs and the trainer's, and TRL's importance-sampling correction of it.

A separate engine (vLLM) samples with its own kernels, so the log-probability it gives a sampled token differs
slightly from the one the trainer recomputes (and more than slightly when its weights are stale). The trainer's own
log-probs stay the PPO "old" log-probs; these functions measure the gap (``rollout/logprob_gap/mean|max``) and, when
asked for, build TRL GRPO's correction ratio ``exp(trainer - engine)`` per token or per sequence, truncated or masked
outside ``[clip_min, clip_max]`` (``vllm_importance_sampling_mode``), which multiplies each token's policy-gradient
term (Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL training").
"""

from __future__ import annotations

import math

import torch

IMPORTANCE_SAMPLING_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


def logprob_gap(trainer_logps: torch.Tensor, sampler_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``|trainer - engine|`` of the valid tokens the engine scored, flattened to ``(N,)``.

    Args:
        trainer_logps, sampler_logps: ``(B, T)`` log-probs of the sampled tokens; the engine's are NaN where it gave
            none (those tokens are left out, as TRL does, rather than counted as zero).
        mask: ``(B, T)`` 1 on valid completion tokens.
    """
    delta = (trainer_logps.float() - sampler_logps.float().to(trainer_logps.device)).abs()
    keep = mask.bool() & ~torch.isnan(delta)
    return delta[keep]


def importance_sampling_ratio(
    trainer_logps: torch.Tensor,
    sampler_logps: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "sequence_mask",
    clip_min: float | None = None,
    clip_max: float | None = 3.0,
) -> torch.Tensor:
    """TRL GRPO's vLLM importance-sampling ratio, shape ``(B, T)`` (a sequence mode repeats its ratio on each token).

    ``rho = exp(trainer - engine)`` per token (``token_*``) or ``exp(sum over the sequence)`` (``sequence_*``); tokens
    the engine did not score contribute 0 to the log-ratio (ratio 1, no correction). ``*_truncate`` clamps ``rho`` to
    ``[clip_min, clip_max]``; ``*_mask`` sets ratios outside it to 0. Padding positions get 0.

    Args:
        trainer_logps, sampler_logps, mask: ``(B, T)`` as in :func:`logprob_gap`.
        mode: one of :data:`IMPORTANCE_SAMPLING_MODES`.
        clip_min, clip_max: bounds (``None``: unbounded on that side).
    """
    if mode not in IMPORTANCE_SAMPLING_MODES:
        raise ValueError(f"importance sampling mode must be one of {IMPORTANCE_SAMPLING_MODES}, got {mode!r}")
    m = mask.float()
    diff = torch.nan_to_num((trainer_logps.float() - sampler_logps.float().to(trainer_logps.device)) * m, nan=0.0)
    if mode.startswith("sequence"):
        diff = diff.sum(1, keepdim=True).expand_as(diff)
    ratio = torch.exp(diff)
    if mode.endswith("truncate"):
        ratio = torch.clamp(ratio, min=clip_min, max=clip_max)
    else:
        lo = -math.inf if clip_min is None else clip_min
        hi = math.inf if clip_max is None else clip_max
        ratio = ratio.masked_fill((ratio < lo) | (ratio > hi), 0.0)
    return ratio * m
