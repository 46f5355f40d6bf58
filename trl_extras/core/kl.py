"""Per-token KL divergence between a policy π and a reference π_ref: exact (full vocabulary) and sampled estimators.

Notation: ``B`` sequences, ``T`` completion positions, ``V`` vocabulary. π is the policy that SAMPLED the tokens,
at the sampling temperature: every function divides logits by ``temperature`` before the softmax, so the KL is
the one between the distributions that were actually sampled from.

- :func:`token_stats_from_logits` — the one per-position kernel (log-probs, reference log-probs, exact KL,
  entropy) that :func:`exact_kl`, :func:`logprobs_from_logits`, :func:`entropy_from_logits` and the chunked model
  statistics of ``trl_extras.modeling.lm`` (rollout statistics and the KL loss term of the update) all run.
- :func:`exact_kl` — KL(π‖π_ref) at each position, Σ_v π(v)·(log π(v) − log π_ref(v)), from the full logits
  (the Rao–Blackwellized per-position KL of Amini et al. 2025, "Better Estimation of the KL Divergence Between
  Language Models": unbiased for the sequence KL, variance no greater than Monte Carlo, no extra forward pass).
  Computed in float32 over chunks of positions so only ``(chunk, V)`` float32 temporaries exist at a time.
- :func:`kl_from_logprobs` — the single-sample estimators of J. Schulman, "Approximating KL Divergence" (2020),
  from the log-probabilities of the sampled tokens only.

Which gradient each estimator gives when the KL penalises an RL objective (``KL_ESTIMATORS``; Amini et al. 2025,
Tang & Munos 2025, arXiv 2506.09477). The gradient
of ``β·KL(π‖π_ref)`` over sequences has two parts: a score-function part (how the choice of token t changes the
KL of the states that follow) and a direct part ``Σ_t ∇θ KL(π(·|s_t)‖π_ref(·|s_t))`` (the KL of each visited state
as a function of θ).

- ``k1``/``k2``/``k3`` in the reward (``r_t −= β·k(x_t)``): the policy-gradient surrogate sees them only through
  the advantage, i.e. only the score-function term. For ``k1`` this is the whole gradient in expectation, since
  ``E[∇log π(x)·log π(x)/π_ref(x)] = ∇KL`` (the ``E[∇log π] = 0`` term vanishes); ``k2``/``k3`` in the reward
  give biased gradients of the KL.
- ``exact`` in the reward alone: ``−β·KL_t`` depends on the state, not on the sampled token, so the score-function
  term only penalises reaching high-KL states and the direct term is missing (a one-token bandit does not move
  towards the reference at all). ``PPOTrainer`` therefore adds the direct term to the policy loss:
  state term in the reward + ``β·Σ_t KL_t`` with its gradient in the loss = the full Rao–Blackwellized gradient.
"""

from __future__ import annotations

import torch

from .registry import Registry

__all__ = [
    "KL_ESTIMATORS",
    "KL_PENALTIES",
    "exact_kl",
    "kl_from_logprobs",
    "logprobs_from_logits",
    "entropy_from_logits",
    "exact_kl_from_logprobs",
    "token_stats_from_logits",
    "forward_stats",
    "logits_grad",
]

#: The per-token KL penalties PPO offers (``PPOConfig.kl_estimator``). Each entry is
#: ``fn(logprobs, ref_logprobs, exact_kl=None) -> (B, T)`` and declares two independent axes:
#:
#: - ``needs_full_vocabulary``: the quantity is the exact per-state KL (the trainer must compute ``exact_kl`` from
#:   the full logits) rather than a single-sample estimate from the sampled tokens' log-probs;
#: - ``direct_gradient``: besides ``−β·KL_t`` in the reward, the trainer adds ``β·Σ_t KL_t`` with its gradient to the
#:   policy loss (the direct term of the Rao–Blackwellized gradient, see the module docstring).
KL_PENALTIES = Registry("KL estimator", required=("needs_full_vocabulary", "direct_gradient"))
#: The names of :data:`KL_PENALTIES` (a live view: a newly registered penalty is a valid ``kl_estimator``).
KL_ESTIMATORS = KL_PENALTIES


def _log_ratio(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(f"logprobs {tuple(logprobs.shape)} and ref_logprobs {tuple(ref_logprobs.shape)} differ.")
    return ref_logprobs - logprobs  # log r, r = π_ref(x) / π(x)


@KL_PENALTIES.register("k1", needs_full_vocabulary=False, direct_gradient=False)
def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, exact_kl: torch.Tensor | None = None) -> torch.Tensor:
    """``k1 = −log r = log π(x) − log π_ref(x)`` per sampled token ``(B, T)`` (Schulman 2020): unbiased, high
    variance, negative on some tokens."""
    return -_log_ratio(logprobs, ref_logprobs)


@KL_PENALTIES.register("k2", needs_full_vocabulary=False, direct_gradient=False)
def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, exact_kl: torch.Tensor | None = None) -> torch.Tensor:
    """``k2 = ½ (log r)²`` per sampled token ``(B, T)`` (Schulman 2020): biased, low variance, ≥ 0."""
    return 0.5 * _log_ratio(logprobs, ref_logprobs) ** 2


@KL_PENALTIES.register("k3", needs_full_vocabulary=False, direct_gradient=False)
def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, exact_kl: torch.Tensor | None = None) -> torch.Tensor:
    """``k3 = (r − 1) − log r`` per sampled token ``(B, T)`` (Schulman 2020): unbiased, ≥ 0, low variance near π_ref."""
    log_ratio = _log_ratio(logprobs, ref_logprobs)
    return torch.expm1(log_ratio) - log_ratio


@KL_PENALTIES.register("exact", needs_full_vocabulary=True, direct_gradient=True)
def kl_exact(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, exact_kl: torch.Tensor | None = None) -> torch.Tensor:
    """The exact per-state ``KL(π(·|s_t)‖π_ref(·|s_t))`` ``(B, T)``, computed from the full logits beforehand
    (:func:`exact_kl` / ``modeling.lm``) and passed in as ``exact_kl``; the article's choice, with the direct term
    in the loss (Amini et al. 2025)."""
    if exact_kl is None:
        raise ValueError("The 'exact' KL penalty needs `exact_kl` computed from the full logits (see `exact_kl`).")
    return exact_kl


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
    return _rowdot(logp.exp(), logp - ref_logp)


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum(-1)`` for ``(..., V)`` tensors without materializing the product."""
    return torch.matmul(a.unsqueeze(-2), b.unsqueeze(-1)).squeeze(-1).squeeze(-1)


def _log_softmax(logits: torch.Tensor, temperature: float, inplace: bool) -> torch.Tensor:
    """float32 ``log_softmax(logits / temperature)`` as ``x − logsumexp(x)``: the same arithmetic in place (no
    gradient; ``logits`` handed over, or a fresh float32 copy of it) and out of place (with gradient), so the
    rollout's no-grad statistics and the update's log-probs agree bit for bit."""
    x = logits.float()
    inplace = inplace or (x is not logits and not torch.is_grad_enabled())
    if temperature != 1.0:
        x = x.div_(temperature) if inplace else x / temperature
    lse = torch.logsumexp(x, dim=-1, keepdim=True)
    return x.sub_(lse) if inplace else x - lse


def token_stats_from_logits(
    logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    ref_logits: torch.Tensor | None = None,
    temperature: float = 1.0,
    with_exact_kl: bool = False,
    with_entropy: bool = False,
    owned: bool = False,
    ref_owned: bool = False,
) -> dict[str, torch.Tensor]:
    """THE per-position kernel: every log-softmax statistic of the package goes through it, chunk by chunk.

    From the policy's logits (and optionally the reference's) at some positions, all divided by ``temperature``:
    ``logprobs`` of ``labels``, ``ref_logprobs`` of ``labels``, the exact ``exact_kl`` = Σ_v π(v)(log π(v) −
    log π_ref(v)) and the ``entropy`` −Σ_v π(v) log π(v).

    Gradients: when grad mode is on and ``logits`` requires grad, ``logprobs`` and ``exact_kl`` carry the gradient
    with respect to ``logits`` (the direct KL gradient ∇θ KL(π(·|s)‖π_ref(·|s)) used as a loss term); the reference
    is always treated as a constant, and ``entropy`` is a metric (no gradient). Without gradients the kernel
    works in place (``owned``/``ref_owned``: the logits buffers become the log-probs, the reference's then
    log π − log π_ref, and π overwrites log π): the exact KL then allocates no ``(..., V)`` buffer beyond the two
    logits chunks the k1 path needs too.

    Args:
        logits: ``(..., V)`` policy logits (e.g. ``(B, chunk, V)``), any float dtype.
        labels: ``(...)`` token ids, or ``None`` (no ``logprobs``/``ref_logprobs``).
        ref_logits: ``(..., V)`` reference logits at the same positions, or ``None``.
        temperature: sampling temperature.
        with_exact_kl: compute ``exact_kl`` (needs ``ref_logits``). with_entropy: compute ``entropy``.
        owned, ref_owned: the caller hands over ``logits`` / ``ref_logits`` (they may be overwritten).

    Returns:
        dict of ``(...)`` float32 tensors.
    """
    if with_exact_kl and ref_logits is None:
        raise ValueError("token_stats_from_logits: with_exact_kl=True needs `ref_logits`.")
    if ref_logits is not None and ref_logits.shape != logits.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and ref_logits {tuple(ref_logits.shape)} differ in shape.")
    if labels is not None and labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match logits {tuple(logits.shape)}[:-1].")
    _check_temperature(temperature)
    track = torch.is_grad_enabled() and logits.requires_grad
    if track:
        return _token_stats_with_grad(logits, labels, ref_logits, temperature, with_exact_kl, with_entropy, ref_owned)
    return forward_stats(
        logits, labels, ref_logits, temperature, with_exact_kl=with_exact_kl, with_entropy=with_entropy,
        owned=owned, ref_owned=ref_owned,
    )[0]


def forward_stats(
    logits: torch.Tensor,
    labels: torch.Tensor | None,
    ref_logits: torch.Tensor | None,
    temperature: float,
    *,
    with_exact_kl: bool,
    with_entropy: bool,
    owned: bool,
    ref_owned: bool,
    keep_probs: bool = False,
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, torch.Tensor | None]:
    """The no-grad arithmetic of :func:`token_stats_from_logits` (one copy, shared with the fused head kernel of
    ``trl_extras.modeling.head_kernel`` so the rollout's statistics and the update's agree bit for bit).

    Works in place on owned buffers: ``logits`` becomes log π then π, ``ref_logits`` log π_ref then
    ``d = log π − log π_ref``. Returns ``(stats, probs, diff)``: ``stats`` as :func:`token_stats_from_logits`;
    ``probs`` the ``(..., V)`` float32 π when computed (always with ``with_exact_kl`` or ``keep_probs``), ``diff`` the
    ``(..., V)`` float32 ``d`` when ``with_exact_kl`` (both for a closed-form gradient, :func:`logits_grad`)."""
    out = {}
    logp = _log_softmax(logits, temperature, owned)
    del logits  # (an owned buffer now holds logp)
    if labels is not None:
        out["logprobs"] = logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    probs = diff = None
    if with_entropy:
        probs = logp.exp()
        out["entropy"] = -_rowdot(probs, logp)
    if ref_logits is not None:
        ref_logp = _log_softmax(ref_logits, temperature, ref_owned)
        del ref_logits
        if labels is not None:
            out["ref_logprobs"] = ref_logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        if with_exact_kl:
            # in place: (log π − log π_ref) in the reference's buffer (one pass: a − b, the same bits as −b + a), π
            # in logp's buffer (or the entropy's)
            diff = torch.sub(logp, ref_logp, out=ref_logp)
            del ref_logp
            if probs is None:
                probs = logp.exp_()
            out["exact_kl"] = _rowdot(probs, diff)
    if keep_probs and probs is None:
        probs = logp.exp_()
    return out, probs, diff


def logits_grad(
    probs: torch.Tensor,
    diff: torch.Tensor | None,
    kl: torch.Tensor | None,
    labels: torch.Tensor | None,
    grad_lp: torch.Tensor | None,
    grad_kl: torch.Tensor | None,
    temperature: float,
) -> torch.Tensor:
    """Closed-form gradient w.r.t. the logits ``z`` of ``Σ g_lp·log π(y) + Σ g_kl·KL(π‖π_ref)``, ``π = softmax(z/τ)``.

    ``∂ log π(y)/∂z = (onehot(y) − π)/τ`` and ``∂ KL/∂z = π ⊙ (d − KL)/τ`` with ``d = log π − log π_ref``.
    ``probs``/``diff``: ``(..., V)`` float32 buffers, OVERWRITTEN (the result lives in one of them); ``kl``,
    ``labels``, ``grad_*``: ``(...)``. Returns ``(..., V)`` float32."""
    grad = None
    if diff is not None and grad_kl is not None:
        grad = diff.sub_(kl.unsqueeze(-1)).mul_(probs).mul_(grad_kl.unsqueeze(-1))  # π ⊙ (d − KL) · g_kl
    if labels is not None and grad_lp is not None:
        part = probs.mul_(-grad_lp.unsqueeze(-1))  # −π · g_lp (π is not needed any more)
        part.scatter_add_(-1, labels.unsqueeze(-1), grad_lp.unsqueeze(-1).to(part.dtype))  # + onehot(y) · g_lp
        grad = part if grad is None else grad.add_(part)
    if grad is None:
        grad = torch.zeros_like(probs)
    if temperature != 1.0:
        grad = grad.div_(temperature)
    return grad


def _token_stats_with_grad(logits, labels, ref_logits, temperature, with_exact_kl, with_entropy, ref_owned) -> dict:
    """The kernel with gradients: reference under no_grad, then :class:`_LogprobAndKL` (closed-form backward)."""
    out = {}
    ref_logp = None
    if ref_logits is not None:
        with torch.no_grad():
            ref_logp = _log_softmax(ref_logits, temperature, ref_owned)
            del ref_logits
            if labels is not None:
                out["ref_logprobs"] = ref_logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    if with_entropy:  # a metric: no gradient
        with torch.no_grad():
            out["entropy"] = token_stats_from_logits(logits.detach(), temperature=temperature, with_entropy=True)[
                "entropy"
            ]
    lp, kl = _LogprobAndKL.apply(logits, labels, ref_logp if with_exact_kl else None, temperature)
    if labels is not None:
        out["logprobs"] = lp
    if with_exact_kl:
        out["exact_kl"] = kl
    return out


class _LogprobAndKL(torch.autograd.Function):
    """``(log π(y), KL(π‖π_ref))`` per position from logits ``z`` with a closed-form, in-place backward.

    With ``π = softmax(z/τ)`` and ``d = log π − log π_ref``: ``∂ log π(y)/∂z = (onehot(y) − π)/τ`` and
    ``∂ KL/∂z = π ⊙ (d − KL)/τ``. Only ``π`` and ``d`` (two ``(..., V)`` float32 buffers) are kept for backward,
    which is computed in those buffers; autograd's generic graph would keep the logits, ``π``, ``d`` and several
    gradient temporaries. The forward is the same arithmetic as the no-grad kernel (bit-identical outputs).
    """

    @staticmethod
    def forward(ctx, logits, labels, ref_logp, temperature):
        logp = _log_softmax(logits, temperature, inplace=False)  # grad mode is off in forward: a fresh buffer
        lp = logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1) if labels is not None else logp.new_zeros(())
        if labels is None:
            ctx.mark_non_differentiable(lp)
        if ref_logp is not None:
            diff = ref_logp.neg_().add_(logp)  # the reference's buffer (ours, no grad) becomes log π − log π_ref
            probs = logp.exp_()
            kl = _rowdot(probs, diff)
            ctx.save_for_backward(probs, diff, kl, labels)
        else:
            probs = logp.exp_()
            kl = logp.new_zeros(())
            ctx.mark_non_differentiable(kl)
            ctx.save_for_backward(probs, None, None, labels)
        ctx.temperature, ctx.logits_dtype = temperature, logits.dtype
        return lp, kl

    @staticmethod
    def backward(ctx, grad_lp, grad_kl):
        probs, diff, kl, labels = ctx.saved_tensors
        grad = logits_grad(probs, diff, kl, labels, grad_lp, grad_kl, ctx.temperature)
        return grad.to(ctx.logits_dtype), None, None, None


def _chunked_stats(logits, labels, ref_logits, mask, chunk_size, temperature, key, **kwargs) -> torch.Tensor:
    """Run :func:`token_stats_from_logits` over chunks of (valid) positions of ``(..., V)`` logits -> ``(...)``."""
    _check_temperature(temperature)
    lead, V = logits.shape[:-1], logits.shape[-1]
    flat = logits.reshape(-1, V)
    ref_flat = None if ref_logits is None else ref_logits.reshape(-1, V)
    flat_labels = None if labels is None else labels.reshape(-1)
    out = torch.zeros(lead.numel(), dtype=torch.float32, device=logits.device)
    for idx in _chunks(_positions(lead, mask, logits.device), chunk_size):
        if len(idx) == 0:
            continue
        stats = token_stats_from_logits(
            flat[idx],
            None if flat_labels is None else flat_labels[idx],
            None if ref_flat is None else ref_flat[idx],
            temperature,
            **kwargs,
        )
        out = out.index_put((idx,), stats[key])
    return out.view(lead)


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
        ``(B, T)`` float32 KL, ≥ 0 up to rounding. Differentiable with respect to ``logits`` (the reference is a
        constant: the gradient is the direct term ∇θ KL(π(·|s)‖π_ref(·|s))).

    Reference: Amini et al. 2025, "Better Estimation of the KL Divergence Between Language Models" (the
    per-position exact KL is the Rao–Blackwellization of the Monte Carlo estimator).
    """
    if logits.shape != ref_logits.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and ref_logits {tuple(ref_logits.shape)} differ in shape.")
    if logits.dim() < 2:
        raise ValueError("logits must have shape (..., V).")
    return _chunked_stats(logits, None, ref_logits, mask, chunk_size, temperature, "exact_kl", with_exact_kl=True)


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
        estimator: a sampled-token entry of :data:`KL_PENALTIES` (``"k1"``, ``"k2"``, ``"k3"``). (The exact
            penalty needs logits: see :func:`exact_kl`.)
        mask: optional ``(B, T)``; output is 0 where it is false.

    Returns:
        ``(B, T)`` per-token estimates.
    """
    penalty = KL_PENALTIES.get(estimator)
    if penalty.needs_full_vocabulary:
        raise ValueError(f"kl_from_logprobs: the {estimator!r} penalty needs full logits; use `exact_kl` instead.")
    kl = penalty(logprobs, ref_logprobs)
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
        ``(B, T)`` float32 (differentiable with respect to ``logits``).
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"labels {tuple(labels.shape)} do not match logits {tuple(logits.shape)}[:-1].")
    return _chunked_stats(logits, labels, None, None, chunk_size, temperature, "logprobs")


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0, chunk_size: int | None = None) -> torch.Tensor:
    """Entropy −Σ_v π(v) log π(v) of ``softmax(logits / temperature)``. ``(B, T, V)`` -> ``(B, T)`` float32.

    With grad mode on and ``logits`` requiring grad, the result carries the gradient ``∂H/∂z = −π ⊙ (log π + H)/τ``
    (autograd over the whole tensor; ``chunk_size`` is then not used): an entropy *bonus* in a loss (CEM's
    fine-tuning, ``CEMConfig.entropy_coef``). Otherwise the chunked no-grad kernel computes it as a metric (the
    kernel's own ``entropy`` never carries a gradient: PPO's update only logs it)."""
    if torch.is_grad_enabled() and logits.requires_grad:
        _check_temperature(temperature)
        logp = _log_softmax(logits, temperature, inplace=False)
        return -_rowdot(logp.exp(), logp)
    return _chunked_stats(logits, None, None, None, chunk_size, temperature, "entropy", with_entropy=True)
