"""Pure tensor functions for reward-model ensembles: per-member standardization, reductions, penalties.

Shapes: ``K`` ensemble members, ``N`` scored (prompt, completion) pairs. Member scores are a ``(K, N)`` tensor.

References:
    Coste et al. 2023, "Reward Model Ensembles Help Mitigate Overoptimization" (arXiv:2310.02743): mean
    ("mean"), uncertainty-weighted optimization UWO = mean − λ·var ("variance"; their best λ is 0.5 for
    best-of-n and 0.1 for PPO) and worst-case optimization WCO = min over members ("min").
    "std" (mean − λ·std) is the convention of bootstrap-ensemble work; both are supported because the scale of λ
    differs between them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

PENALTY_MODES = ("variance", "std", "min", "mean")


class EnsembleStats(NamedTuple):
    """Per-item reductions over the members: ``mean``, ``var`` (population, ddof=0) and ``std``, each ``(N,)``."""

    mean: torch.Tensor
    var: torch.Tensor
    std: torch.Tensor


def _check_members(members: torch.Tensor) -> torch.Tensor:
    if not isinstance(members, torch.Tensor) or members.dim() != 2:
        shape = tuple(members.shape) if isinstance(members, torch.Tensor) else type(members).__name__
        raise ValueError(f"Ensemble member scores must be a (K, N) tensor, got {shape}.")
    if members.shape[0] < 2:
        raise ValueError(
            f"An ensemble needs at least 2 members to measure disagreement, got K={members.shape[0]} "
            "(a one-member 'ensemble' would report zero variance for every input)."
        )
    if not torch.isfinite(members).all():
        bad = (~torch.isfinite(members)).nonzero()[0].tolist()
        raise ValueError(f"Non-finite ensemble score at (member, item) = {tuple(bad)}.")
    return members


def standardize_members(scores: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Put every member on a common scale: ``(scores[k] − mean[k]) / std[k]``.

    Bradley–Terry rewards are only defined up to a shift (and members trained with different seeds also differ in
    scale), so without this the ensemble variance measures the members' offsets, not their disagreement.

    Args:
        scores: ``(K, N)`` raw member scores.
        mean: ``(K,)`` each member's mean score on a reference set of completions.
        std: ``(K,)`` each member's standard deviation on that set; must be > 0.

    Returns:
        ``(K, N)`` standardized scores, same dtype as ``scores``.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be (K, N), got {tuple(scores.shape)}")
    k = scores.shape[0]
    mean = torch.as_tensor(mean, dtype=scores.dtype, device=scores.device).reshape(-1)
    std = torch.as_tensor(std, dtype=scores.dtype, device=scores.device).reshape(-1)
    if mean.numel() != k or std.numel() != k:
        raise ValueError(f"Calibration has {mean.numel()} means / {std.numel()} stds for {k} members.")
    if not (torch.isfinite(std).all() and (std > 0).all()):
        raise ValueError(f"Calibration std must be finite and > 0 for every member, got {std.tolist()}.")
    return (scores - mean[:, None]) / std[:, None]


def ensemble_stats(members: torch.Tensor) -> EnsembleStats:
    """Mean, population variance (ddof=0) and standard deviation over members.

    Args:
        members: ``(K, N)`` member scores, ``K >= 2``, all finite.

    Returns:
        :class:`EnsembleStats` of ``(N,)`` tensors (unpacks as ``mean, var, std``).
    """
    members = _check_members(members)
    mean = members.mean(dim=0)
    var = ((members - mean) ** 2).mean(dim=0)  # population variance, as in Coste et al.
    return EnsembleStats(mean=mean, var=var, std=var.sqrt())


def penalize(members_or_stats, mode: str = "variance", coef: float = 1.0) -> torch.Tensor:
    """Conservative ensemble reward ``(N,)``.

    Args:
        members_or_stats: ``(K, N)`` member scores, or an :class:`EnsembleStats` (not for ``mode="min"``, which
            needs the members).
        mode: ``"variance"`` → mean − coef·var (UWO; Coste et al.: coef 0.5 for best-of-n, 0.1 for PPO),
            ``"std"`` → mean − coef·std, ``"min"`` → minimum over members (WCO; ``coef`` unused),
            ``"mean"`` → the plain mean (no penalty; ``coef`` unused).
        coef: the penalty weight λ >= 0.
    """
    if mode not in PENALTY_MODES:
        raise ValueError(f"Unknown ensemble penalty mode {mode!r}; choose one of {PENALTY_MODES}.")
    coef = float(coef)
    if not (coef >= 0 and coef == coef):
        raise ValueError(f"The penalty coefficient must be >= 0, got {coef}.")
    if isinstance(members_or_stats, EnsembleStats):
        if mode == "min":
            raise ValueError("mode='min' needs the (K, N) member scores, not only their mean/var/std.")
        stats = members_or_stats
    else:
        members = _check_members(members_or_stats)
        if mode == "min":
            return members.min(dim=0).values
        stats = ensemble_stats(members)
    if mode == "mean":
        return stats.mean
    if mode == "variance":
        return stats.mean - coef * stats.var
    return stats.mean - coef * stats.std
