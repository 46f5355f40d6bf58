"""Per-token KL divergence between a policy π and a reference π_ref: exact (full vocabulary) and sampled estimators.

Notation: ``B`` sequences, ``T`` completion positions, ``V`` vocabulary. π is the policy that SAMPLED the tokens,
at the sampling temperature: every function divides logits by ``temperature`` before the softmax, so the KL is
the one between the distributions that were actually sampled from.

- :func:`exact_kl` — KL(π‖π_ref) at each position, Σ_v π(v)·(log π(v) − log π_ref(v)), from the full logits
  (the Rao–Blackwellized per-position KL of Amini et al. 2025, "Better Estimation of the KL Divergence Between
  Language Models": unbiased for the sequence KL, variance no greater than Monte Carlo, no extra forward pass).
  Computed in float32 over chunks of positions so only ``(chunk, V)`` float32 temporaries exist at a time.
- :func:`kl_from_logprobs` — the single-sample estimators of J. Schulman, "Approximating KL Divergence" (2020),
  from the log-probabilities of the sampled tokens only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "KL_ESTIMATORS",
    "exact_kl",
    "kl_from_logprobs",
    "logprobs_from_logits",
    "entropy_from_logits",
    "exact_kl_from_logprobs",
]

KL_ESTIMATORS = ("k1", "k2", "k3")


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")


def _positions(shape: torch.Size, mask: torch.Tensor | None, device) -> torch.Tensor:
    """Flat indices of the positions to compute (all, or only the valid ones when a mask is given)."""
    n = shape.numel()
    if mask is None:
        return torch.arange(n, device=device)
    if mask.shape != shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the logits' leading shape {tuple(shape)}.")
    return mask.reshape(-1).bool().nonzero(as_tuple=True)[0].to(device)


def _chunks(idx: torch.Tensor, chunk_size: int | None):
    if chunk_size is not None and chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size}.")
    step = len(idx) if chunk_size is None else chunk_size
    for start in range(0, len(idx), max(step, 1)):
        yield idx[start : start + step]


def exact_kl_from_logprobs(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Σ_v exp(logp)·(logp − ref_logp) over the last dim. ``(..., V)`` log-probabilities -> ``(...)``."""
    return (logp.exp() * (logp - ref_logp)).sum(-1)


def exact_kl(
    logits: torch.Tensor,
    ref_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    chunk_size: int | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Exact per-token KL(π‖π_ref) = Σ_v π(v)·(log π(v) − log π_ref(v)).

    Args:
        logits: ``(B, T, V)`` policy logits at the completion positions (any float dtype).
        ref_logits: ``(B, T, V)`` reference logits at the same positions.
        mask: optional ``(B, T)``; positions where it is false are not computed and are 0 in the output.
        chunk_size: number of positions processed at once (``None``: all at once). Peak extra memory is about
            ``4 × chunk_size × V`` float32 values instead of ``4 × B × T × V``.
        temperature: sampling temperature; both logits are divided by it (π is the sampling distribution).

    Returns:
        ``(B, T)`` float32 KL, ≥ 0 up to rounding. Differentiable with respect to both logits.

    Reference: Amini et al. 2025, "Better Estimation of the KL Divergence Between Language Models" (the
    per-position exact KL is the Rao–Blackwellization of the Monte Carlo estimator).
    """
    if logits.shape != ref_logits.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and ref_logits {tuple(ref_logits.shape)} differ in shape.")
    if logits.dim() < 2:
        raise ValueError("logits must have shape (..., V).")
    _check_temperature(temperature)
    lead = logits.shape[:-1]
    V = logits.shape[-1]
    flat, ref_flat = logits.reshape(-1, V), ref_logits.reshape(-1, V)
    out = torch.zeros(lead.numel(), dtype=torch.float32, device=logits.device)
    for idx in _chunks(_positions(lead, mask, logits.device), chunk_size):
        if len(idx) == 0:
            continue
        logp = F.log_softmax(flat[idx].float() / temperature, dim=-1)
        ref_logp = F.log_softmax(ref_flat[idx].float() / temperature, dim=-1)
        out = out.index_put((idx,), exact_kl_from_logprobs(logp, ref_logp))
    return out.view(lead)


def kl_from_logprobs(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    estimator: str = "k1",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Single-sample estimators of KL(π‖π_ref) from the log-probabilities of tokens sampled from π.

    With ``r = π_ref(x)/π(x)`` and ``log r = ref_logprobs − logprobs`` (J. Schulman, "Approximating KL
    Divergence", 2020):

    - ``"k1"``: ``−log r = log π − log π_ref``. Unbiased, high variance, can be negative per token.
    - ``"k2"``: ``½ (log r)²``. Biased (its mean is an f-divergence close to KL for small KL), low variance, ≥ 0.
    - ``"k3"``: ``(r − 1) − log r``. Unbiased, ≥ 0, low variance when π ≈ π_ref; can blow up when ``r`` is large.

    Args:
        logprobs, ref_logprobs: ``(B, T)`` log-probabilities of the sampled tokens under π (sampling policy,
            at the sampling temperature) and under π_ref.
        estimator: ``"k1"``, ``"k2"`` or ``"k3"``. (The exact estimator needs logits: see :func:`exact_kl`.)
        mask: optional ``(B, T)``; output is 0 where it is false.

    Returns:
        ``(B, T)`` per-token estimates.
    """
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(f"logprobs {tuple(logprobs.shape)} and ref_logprobs {tuple(ref_logprobs.shape)} differ.")
    log_ratio = ref_logprobs - logprobs  # log r
    if estimator == "k1":
        kl = -log_ratio
    elif estimator == "k2":
        kl = 0.5 * log_ratio**2
    elif estimator == "k3":
        kl = torch.expm1(log_ratio) - log_ratio
    elif estimator == "exact":
        raise ValueError("kl_from_logprobs: the 'exact' estimator needs full logits; use `exact_kl` instead.")
    else:
        raise ValueError(f"Unknown KL estimator {estimator!r}; expected one of {KL_ESTIMATORS}.")
    if mask is not None:
        kl = torch.where(mask.bool(), kl, torch.zeros((), dtype=kl.dtype, device=kl.device))
    return kl


def logprobs_from_logits(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, chunk_size: int | None = None
) -> torch.Tensor:
    """Log-probability of ``labels`` under ``softmax(logits / temperature)``.

    Args:
        logits: ``(B, T, V)``; labels: ``(B, T)`` token ids (the token predicted at each position).
        chunk_size: positions per chunk (``None``: all at once); bounds the float32 temporaries to ``(chunk, V)``.

    Returns:
        ``(B, T)`` float32, computed as ``logit[label] − logsumexp(logits)`` (no full log-softmax tensor kept).
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"labels {tuple(labels.shape)} do not match logits {tuple(logits.shape)}[:-1].")
    _check_temperature(temperature)
    V = logits.shape[-1]
    flat, flat_labels = logits.reshape(-1, V), labels.reshape(-1)
    out = []
    for idx in _chunks(torch.arange(flat.shape[0], device=logits.device), chunk_size):
        lg = flat[idx].float() / temperature
        out.append(lg.gather(-1, flat_labels[idx, None]).squeeze(-1) - torch.logsumexp(lg, dim=-1))
    if not out:
        return torch.zeros(labels.shape, dtype=torch.float32, device=logits.device)
    return torch.cat(out).view(labels.shape)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0, chunk_size: int | None = None) -> torch.Tensor:
    """Entropy −Σ_v π(v) log π(v) of ``softmax(logits / temperature)``. ``(B, T, V)`` -> ``(B, T)`` float32."""
    _check_temperature(temperature)
    V = logits.shape[-1]
    flat = logits.reshape(-1, V)
    out = []
    for idx in _chunks(torch.arange(flat.shape[0], device=logits.device), chunk_size):
        logp = F.log_softmax(flat[idx].float() / temperature, dim=-1)
        out.append(-(logp.exp() * logp).sum(-1))
    if not out:
        return torch.zeros(logits.shape[:-1], dtype=torch.float32, device=logits.device)
    return torch.cat(out).view(logits.shape[:-1])
