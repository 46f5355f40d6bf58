"""Best-of-n as an optimizer: its KL, the unbiased estimator of its expected reward, and Gao et al.'s fitted forms.

Shapes: ``P`` prompts, ``m`` samples drawn once per prompt from the policy. Pure tensor functions.

References:
    Gao, Schulman & Hilton 2022, "Scaling Laws for Reward Model Overoptimization" (arXiv:2210.10760):
    ``KL_bon(n) = log n − (n − 1)/n`` (their eq. 1; exact for continuous rewards, an upper bound otherwise — Beirami
    et al. 2024, "Theoretical guarantees on the best-of-n alignment policy"), the unbiased best-of-n estimator of
    their appendix (draw ``m >= n`` samples once, weight the sample of proxy rank ``i`` by the probability that it
    is the argmax of a uniformly random ``n``-subset: ``C(i − 1, n − 1) / C(m, n)``), and the functional forms
    ``R_bon(d) = d (α − β d)`` and ``R_RL(d) = d (α − β log d)`` of the gold gain against ``d = sqrt(KL)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch


def best_of_n_kl(n) -> float | torch.Tensor:
    """``log n − (n − 1)/n`` nats: KL(best-of-n ‖ base policy) for a continuous reward (Gao et al. 2022, eq. 1).

    For rewards with ties (a discrete distribution) it is an upper bound. ``n`` is an int >= 1 or a tensor of them.
    """
    if isinstance(n, torch.Tensor):
        if (n < 1).any():
            raise ValueError(f"n must be >= 1, got {n.tolist()}")
        n = n.double()
        return torch.log(n) - (n - 1) / n
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    return math.log(n) - (n - 1) / n


def best_of_n_weights(m: int, n: int, dtype=torch.float64) -> torch.Tensor:
    """``(m,)`` probability that the sample of ascending rank ``i`` (1-based) of ``m`` is the maximum of a uniformly
    random ``n``-subset: ``C(i − 1, n − 1) / C(m, n)`` (zero for ``i < n``; sums to 1), from exact integers."""
    if isinstance(m, bool) or isinstance(n, bool) or int(m) != m or int(n) != n:
        raise ValueError(f"m and n must be integers, got m={m!r}, n={n!r}")
    if not 1 <= n <= m:
        raise ValueError(f"best-of-n needs 1 <= n <= m (samples per prompt), got n={n}, m={m}")
    total = math.comb(m, n)  # exact integers: int / int is correctly rounded, however large
    return torch.tensor([math.comb(i - 1, n - 1) / total for i in range(1, m + 1)], dtype=dtype)


def _tie_averaged(sorted_keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``values`` (P, m), already in the order of ``sorted_keys`` (P, m), replaced by their mean over each run of
    equal keys: with uniform random tie-breaking every member of a tied group is equally likely to be picked."""
    new_group = torch.ones_like(sorted_keys, dtype=torch.bool)
    new_group[:, 1:] = sorted_keys[:, 1:] != sorted_keys[:, :-1]
    group = new_group.long().cumsum(1) - 1
    sums = torch.zeros_like(values).scatter_add_(1, group, values)
    counts = torch.zeros_like(values).scatter_add_(1, group, torch.ones_like(values))
    return (sums / counts.clamp(min=1)).gather(1, group)


def expected_best_of_n(proxy: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    """Unbiased estimate, per prompt, of ``E[values of the best-of-n answer]`` where best-of-n picks the answer
    with the highest ``proxy`` among ``n`` fresh samples (Gao et al. 2022, appendix).

    Uses all ``m`` samples at once instead of drawing ``m / n`` disjoint groups: sorted by proxy, the sample of rank
    ``i`` gets weight :func:`best_of_n_weights` ``(m, n)[i]``. Ties in ``proxy`` are broken uniformly at random
    (their ``values`` are averaged within the tied group), so the estimate does not depend on sample order.

    Args:
        proxy: ``(P, m)`` scores of the selecting reward (the proxy, or a penalized ensemble).
        values: ``(P, m)`` what to average over the selected answers (gold, the proxy itself, ...).
        n: samples per best-of-n draw, ``1 <= n <= m``.

    Returns:
        ``(P,)`` float64 expected value per prompt (its mean over prompts is the curve's point at this ``n``).
    """
    if proxy.dim() != 2 or proxy.shape != values.shape:
        raise ValueError(
            f"proxy and values must both be (P, m) tensors of one shape, got {tuple(proxy.shape)} and "
            f"{tuple(values.shape)}"
        )
    if not (torch.isfinite(proxy).all() and torch.isfinite(values).all()):
        raise ValueError("proxy and values must be finite")
    weights = best_of_n_weights(proxy.shape[1], n)
    keys, order = proxy.double().sort(dim=1, stable=True)
    ordered = _tie_averaged(keys, values.double().gather(1, order))
    return ordered @ weights


def best_of_n_curve(proxy: torch.Tensor, values: torch.Tensor, ns: Sequence[int]) -> torch.Tensor:
    """``(len(ns), P)``: :func:`expected_best_of_n` for every ``n`` in ``ns`` (one sort shared by all)."""
    return torch.stack([expected_best_of_n(proxy, values, n) for n in ns])


class FunctionalFit(NamedTuple):
    """Least-squares fit of a gold gain curve: ``alpha``, ``beta``, ``r2`` (centered R² of the gain)."""

    alpha: float
    beta: float
    r2: float


def _fit_two(x1: torch.Tensor, x2: torch.Tensor, y: torch.Tensor) -> FunctionalFit:
    """``y ≈ α x1 − β x2`` by least squares without intercept."""
    design = torch.stack([x1, -x2], dim=1)
    coef = torch.linalg.lstsq(design, y[:, None]).solution[:, 0]
    residual = y - design @ coef
    total = ((y - y.mean()) ** 2).sum()
    r2 = 1.0 - float((residual**2).sum() / total) if total > 0 else float("nan")
    return FunctionalFit(alpha=float(coef[0]), beta=float(coef[1]), r2=r2)


def _check_curve(d, gain) -> tuple[torch.Tensor, torch.Tensor]:
    d = torch.as_tensor(d, dtype=torch.float64).reshape(-1)
    gain = torch.as_tensor(gain, dtype=torch.float64).reshape(-1)
    if d.shape != gain.shape:
        raise ValueError(f"d and gain must have one length, got {d.numel()} and {gain.numel()}")
    if d.numel() < 2:
        raise ValueError(f"fitting two coefficients needs >= 2 points, got {d.numel()}")
    if (d < 0).any() or not (torch.isfinite(d).all() and torch.isfinite(gain).all()):
        raise ValueError("d must be finite and >= 0, gain finite")
    return d, gain


def fit_best_of_n(d, gain) -> FunctionalFit:
    """Fit Gao et al.'s best-of-n form ``gain(d) = d (α − β d)`` where ``d = sqrt(KL)`` and ``gain = gold(d) −
    gold(0)``: linear in ``(α, β)``, least squares without intercept. ``d``, ``gain``: ``(C,)`` curve points."""
    d, gain = _check_curve(d, gain)
    return _fit_two(d, d * d, gain)


def fit_rl(d, gain) -> FunctionalFit:
    """Fit Gao et al.'s RL form ``gain(d) = d (α − β log d)`` (``d log d`` taken as 0 at ``d = 0``); as
    :func:`fit_best_of_n`."""
    d, gain = _check_curve(d, gain)
    d_log_d = torch.where(d > 0, d * torch.log(d.clamp(min=1e-300)), torch.zeros_like(d))
    return _fit_two(d, d_log_d, gain)
