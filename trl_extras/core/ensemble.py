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

from .registry import Registry

#: Conservative ensemble rewards (``RewardEnsemble(penalty=...)``). Each entry is
#: ``fn(stats: EnsembleStats, members: (K, N) tensor or None, coef) -> (N,)`` and declares
#: ``needs_members`` (needs the member scores, not only mean/var/std) and ``needs_calibration`` (meaningless on
#: uncalibrated Bradley–Terry members, whose arbitrary offsets it would measure: ``RewardEnsemble`` refuses to use
#: it before ``calibrate()`` unless told otherwise).
ENSEMBLE_PENALTIES = Registry("ensemble penalty", required=("needs_members", "needs_calibration"))
#: The names of :data:`ENSEMBLE_PENALTIES` (a live view).
PENALTY_MODES = ENSEMBLE_PENALTIES


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
        mode: a name in :data:`ENSEMBLE_PENALTIES`: ``"variance"`` → mean − coef·var (UWO; Coste et al.: coef 0.5 for best-of-n, 0.1 for PPO),
            ``"std"`` → mean − coef·std, ``"min"`` → minimum over members (WCO; ``coef`` unused),
            ``"mean"`` → the plain mean (no penalty; ``coef`` unused).
        coef: the penalty weight λ >= 0.
    """
    penalty = ENSEMBLE_PENALTIES.get(mode)
    coef = float(coef)
    if not (coef >= 0 and coef == coef):
        raise ValueError(f"The penalty coefficient must be >= 0, got {coef}.")
    if isinstance(members_or_stats, EnsembleStats):
        if penalty.needs_members:
            raise ValueError(f"mode={mode!r} needs the (K, N) member scores, not only their mean/var/std.")
        return penalty(members_or_stats, None, coef)
    members = _check_members(members_or_stats)
    return penalty(ensemble_stats(members), members, coef)


@ENSEMBLE_PENALTIES.register("variance", needs_members=False, needs_calibration=True)
def _uwo_variance(stats: EnsembleStats, members, coef: float) -> torch.Tensor:
    """UWO (Coste et al. 2023): mean − λ·var."""
    return stats.mean - coef * stats.var


@ENSEMBLE_PENALTIES.register("std", needs_members=False, needs_calibration=True)
def _uwo_std(stats: EnsembleStats, members, coef: float) -> torch.Tensor:
    """mean − λ·std (bootstrap-ensemble convention)."""
    return stats.mean - coef * stats.std


@ENSEMBLE_PENALTIES.register("min", needs_members=True, needs_calibration=False)
def _wco_min(stats: EnsembleStats, members, coef: float) -> torch.Tensor:
    """WCO (Coste et al. 2023): the minimum over members (``coef`` unused)."""
    return members.min(dim=0).values


@ENSEMBLE_PENALTIES.register("mean", needs_members=False, needs_calibration=False)
def _mean(stats: EnsembleStats, members, coef: float) -> torch.Tensor:
    """The plain mean (no penalty; ``coef`` unused)."""
    return stats.mean
