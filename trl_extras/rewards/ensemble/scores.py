"""``EnsembleScores``: the K members' scores of N items and their reductions (mean, var, std, penalized)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...core.ensemble import ensemble_stats, penalize


@dataclass
class EnsembleScores:
    """Scores of K members on N items.

    Attributes:
        members: ``(K, N)`` float32 member scores (standardized when the ensemble is calibrated).
        mean, var, std: ``(N,)`` reductions over members; ``var`` is the population variance (ddof=0).
        standardized: whether ``members`` are on the calibrated common scale.
    """

    members: torch.Tensor
    mean: torch.Tensor
    var: torch.Tensor
    std: torch.Tensor
    standardized: bool = False

    @classmethod
    def from_members(cls, members: torch.Tensor, standardized: bool = False) -> EnsembleScores:
        stats = ensemble_stats(members)
        return cls(members=members, mean=stats.mean, var=stats.var, std=stats.std, standardized=standardized)

    def penalized(self, mode: str = "variance", coef: float = 1.0) -> torch.Tensor:
        """``(N,)`` conservative reward: ``"variance"`` mean − coef·var (UWO; Coste et al. use coef 0.5 for
        best-of-n, 0.1 for PPO), ``"std"`` mean − coef·std, ``"min"`` worst member (WCO, coef unused), ``"mean"``."""
        return penalize(self.members, mode=mode, coef=coef)
