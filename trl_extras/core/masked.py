"""Masked reductions over padded ``(B, T)`` tensors, optionally global across processes.

Every function takes ``x`` and a ``mask`` of the same shape (bool, int or float; nonzero = valid). The
distributed-aware forms take an ``accelerate.Accelerator``: the statistics are then those of the GLOBAL batch
(all processes' valid elements together), computed from all-reduced sums and counts, so ``N`` processes holding
shards of a batch get exactly the numbers one process would get on the whole batch (up to float summation order).

References: the masked whitening of TRL <= 0.11 (``trl.core.masked_whiten``), OpenRLHF's global advantage
whitening, and Huang et al. 2024, "The N+ Implementation Details of RLHF with PPO" (advantage whitening).
Unlike old TRL, an empty mask raises a ``ValueError`` that says so instead of a cryptic division error.
"""

from __future__ import annotations

import torch

__all__ = [
    "masked_sum",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "masked_moments",
]


def _check(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Return ``mask`` as a float tensor shaped like ``x`` (all ones when ``mask`` is None)."""
    if mask is None:
        return torch.ones_like(x, dtype=x.dtype if x.is_floating_point() else torch.float32)
    if mask.shape != x.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match x shape {tuple(x.shape)}.")
    return mask.to(x.dtype if x.is_floating_point() else torch.float32)


def _zero_invalid(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``x`` with invalid positions set to 0 (``where``, not ``x * m``, so NaN/inf padding cannot leak in)."""
    return torch.where(m.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


def _global_sum(t: torch.Tensor, accelerator) -> torch.Tensor:
    """Sum of ``t`` over all processes (identity without an accelerator or with a single process)."""
    if accelerator is None or getattr(accelerator, "num_processes", 1) == 1:
        return t
    return accelerator.reduce(t.contiguous(), reduction="sum")


def masked_sum(x: torch.Tensor, mask: torch.Tensor | None, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` over valid elements. ``x``, ``mask``: ``(B, T)`` (any shape); ``dim=None`` -> scalar."""
    m = _check(x, mask)
    xm = _zero_invalid(x, m)
    return xm.sum() if dim is None else xm.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None, dim: int | None = None, accelerator=None) -> torch.Tensor:
    """Mean of ``x`` over valid elements.

    Args:
        x, mask: ``(B, T)`` (any shape, same for both).
        dim: ``None`` for a scalar over all valid elements, or the dimension to reduce (e.g. ``1`` -> ``(B,)``
            per-sequence means). With ``dim``, rows without any valid element get 0 (they contribute nothing).
        accelerator: with ``dim=None``, the mean over the valid elements of all processes.

    Raises:
        ValueError: when no element is valid (``dim=None``; globally when an accelerator is given).
    """
    m = _check(x, mask)
    if dim is not None:
        if accelerator is not None:
            raise ValueError("masked_mean: `accelerator` is only supported with dim=None (a global mean).")
        return _zero_invalid(x, m).sum(dim) / m.sum(dim).clamp(min=1)
    total = _global_sum(torch.stack([_zero_invalid(x, m).sum(), m.sum()]).double(), accelerator)
    if total[1] == 0:
        raise ValueError("masked_mean: the mask has no valid element (empty batch or all-padding mask).")
    return (total[0] / total[1]).to(x.dtype if x.is_floating_point() else torch.float32)


def masked_moments(
    x: torch.Tensor, mask: torch.Tensor | None, accelerator=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mean, var, count)`` over the valid elements of ``x`` (global when ``accelerator`` is given).

    Two passes (global mean first, then the global sum of squared deviations) rather than ``E[x²] − E[x]²``,
    which cancels catastrophically when the mean is large relative to the spread (e.g. rewards x100 + 50).
    ``var`` is the population variance (ddof=0); ``count`` the number of valid elements. Computed in float64.

    Raises:
        ValueError: when no element is valid.
    """
    m = _check(x, mask).double()
    xd = _zero_invalid(x.double(), m)
    first = _global_sum(torch.stack([xd.sum(), m.sum()]), accelerator)
    count = first[1]
    if count == 0:
        raise ValueError("masked statistics: the mask has no valid element (empty batch or all-padding mask).")
    mean = first[0] / count
    sq = _global_sum(_zero_invalid((xd - mean) ** 2, m).sum(), accelerator)
    return mean, sq / count, count


def masked_var(x: torch.Tensor, mask: torch.Tensor | None, unbiased: bool = False, accelerator=None) -> torch.Tensor:
    """Variance of ``x`` over valid elements (scalar). ``x``, ``mask``: ``(B, T)``.

    ``unbiased=False`` (default) is the population variance (ddof=0), the one that makes whitened values have
    exactly unit variance; ``unbiased=True`` applies Bessel's correction and needs at least 2 valid elements.
    """
    mean, var, count = masked_moments(x, mask, accelerator)
    if unbiased:
        if count < 2:
            raise ValueError("masked_var(unbiased=True) needs at least 2 valid elements.")
        var = var * count / (count - 1)
    return var.to(x.dtype if x.is_floating_point() else torch.float32)


def masked_whiten(
    x: torch.Tensor,
    mask: torch.Tensor | None,
    shift_mean: bool = True,
    accelerator=None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Whiten ``x`` with the statistics of its valid elements: ``(x − mean) / sqrt(var + eps)``.

    Args:
        x, mask: ``(B, T)``; invalid positions are returned as 0.
        shift_mean: ``False`` adds the mean back (unit variance, mean kept) -- old TRL's ``shift_mean=False``.
        accelerator: statistics over all processes' valid elements (the global batch).
        eps: added to the variance.

    Returns:
        ``(B, T)`` tensor with the dtype of ``x``.
    """
    m = _check(x, mask)
    mean, var, _ = masked_moments(x, mask, accelerator)
    mean = mean.to(x.dtype)
    out = (x - mean) * torch.rsqrt(var + eps).to(x.dtype)
    if not shift_mean:
        out = out + mean
    return _zero_invalid(out, m)
