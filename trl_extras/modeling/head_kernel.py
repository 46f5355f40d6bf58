"""THE fused chunked head kernel: log-probs, exact KL (+ entropy, reference log-probs) from hidden states and head
weights, without keeping any ``(chunk, V)`` buffer alive between forward and backward.

``head_token_stats(hidden (B, T, H), weight (V, H), bias, labels (B, T), ref_hidden, ref_weight, ref_bias, ...)``
projects ``(B, chunk, H)`` slices through the head(s), runs the per-position arithmetic of
``trl_extras.core.kl.forward_stats`` (the same code as the logits-level kernel: one copy of the math) and frees the
logits before the next chunk. Two gradient modes:

- **frozen head** (the common case: LoRA on the trunk, or a full fine-tune whose head is frozen): the gradient
  w.r.t. the hidden states is LINEAR in the upstream gradients ``g_lp``, ``g_kl`` (one scalar each per position):
  ``∂/∂h = (g_kl·[π⊙(d−KL)]W + g_lp·(W[y] − πW)) / τ``. The forward computes the two ``(B, T, H)`` projections
  ``A = [π⊙(d−KL)]W`` and ``Bm = W[y] − πW`` while the chunk's ``π`` and ``d`` exist, and the backward is one
  fused multiply-add: no logits are recomputed (the checkpoint path projected every chunk three times through each
  head; here twice through the policy head and once through the reference head). Kept for backward: ``2·B·T·H``
  float32 (H ≪ V).
- **frozen head with a gradient hint** (``grad_hint``: PPO's update, ``core.ppo.surrogate_grad_hint``): the caller
  says how the loss depends on each position's log-prob and KL given their values, so the forward knows
  ``(g_lp, g_kl)`` per position and projects the COMBINED logits gradient ``g_kl·π⊙(d−KL) − g_lp·π`` once (plus
  ``g_lp·W[y]``): the policy head twice in all (logits, gradient) and the reference head once, the floor for an
  exact KL with its gradient. The backward checks that the real upstream gradients are the hinted ones times one
  scalar (loss scaling, gradient accumulation) and otherwise recomputes: a wrong hint costs time, never
  correctness.
- **trainable head** (weight or bias requires grad, e.g. a fully fine-tuned head): the backward recomputes each
  chunk's logits (both heads) and applies the closed-form logits gradient (``core.kl.logits_grad``), then the two
  GEMMs for ``∂h`` and ``∂W``.

No gradient flows to the reference. ``labels`` are the completion tokens; ``temperature`` divides the logits.
The projection runs in the autocast dtype when autocast is on (as ``head(hidden)`` would), else in the hidden
states' dtype; every statistic is float32. Under DeepSpeed ZeRO-3 the heads' partitioned weights are gathered for
the direct access (TRL's ``maybe_gather_lm_head_ctx``, a private helper listed in ``utils/upstream.py``); the
caller must run this inside the wrapped model's forward (``modeling.lm`` does).
"""

from __future__ import annotations

import contextlib

import torch

from ..core.kl import forward_stats, logits_grad

__all__ = ["head_token_stats", "is_plain_linear"]


def is_plain_linear(head) -> bool:
    """Whether ``head`` is exactly ``torch.nn.Linear`` (not a PEFT LoRA layer, a 4-bit layer or a subclass), so
    ``head(x) == x @ head.weight.T + head.bias`` may be computed from its weight directly."""
    return type(head) is torch.nn.Linear


def _gathered(*params):
    """ZeRO-3: gather the partitioned head weights for a direct access; a no-op elsewhere."""
    params = [p for p in params if p is not None]
    if not any(hasattr(p, "ds_id") for p in params):
        return contextlib.nullcontext()
    from trl.trainer.utils import maybe_gather_lm_head_ctx  # private TRL helper (utils/upstream.py)

    return maybe_gather_lm_head_ctx(*params)


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    dev = hidden.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else hidden.dtype


def _project(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``(n, H) -> (n, V)`` float32 logits, with ``weight``/``bias`` already in ``h``'s dtype."""
    with torch.autocast(h.device.type, enabled=False):
        return torch.nn.functional.linear(h, weight, bias).float()


class _HeadStats(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, ref_hidden, ref_weight, ref_bias, opts):
        temperature, chunk, with_lp, with_ref_lp, with_kl, with_entropy, precompute, dtype, hint = opts
        if hint is not None:  # one projection of the combined logits gradient (see `grad_hint`)
            precompute = False
        B, T, _ = hidden.shape
        dev = hidden.device
        with _gathered(weight, bias, ref_weight, ref_bias):
            w, b = weight.to(dtype), None if bias is None else bias.to(dtype)
            use_ref = ref_hidden is not None
            if use_ref:
                rw = ref_weight.to(dtype) if ref_weight is not weight else w
                rb = None if ref_bias is None else ref_bias.to(dtype)
            zeros = lambda: torch.zeros(B, T, dtype=torch.float32, device=dev)  # noqa: E731
            lp, ref_lp, kl, ent = zeros(), zeros(), zeros(), zeros()
            grad_kl_part = hidden.new_zeros(B, T, hidden.shape[-1], dtype=torch.float32) if precompute and with_kl else None
            grad_lp_part = hidden.new_zeros(B, T, hidden.shape[-1], dtype=torch.float32) if precompute and with_lp else None
            if hint is not None:
                hinted = hidden.new_zeros(B, T, hidden.shape[-1], dtype=torch.float32)
                hint_lp, hint_kl = zeros(), zeros()
            for start in range(0, T, chunk):
                s = slice(start, min(start + chunk, T))
                n = B * (s.stop - s.start)
                h = hidden[:, s].reshape(n, -1).to(dtype)
                y = labels[:, s].reshape(n)
                z = _project(h, w, b)
                rz = _project(ref_hidden[:, s].reshape(n, -1).to(device=dev, dtype=dtype), rw, rb) if use_ref else None
                st, probs, diff = forward_stats(
                    z, y, rz, temperature, with_exact_kl=with_kl, with_entropy=with_entropy, owned=True,
                    ref_owned=True, keep_probs=precompute or hint is not None,
                )
                del z, rz
                shape = (B, s.stop - s.start)
                if hint is not None:
                    g_lp, g_kl = hint(st["logprobs"].view(shape), st["exact_kl"].view(shape) if with_kl else None, s)
                    g_lp = g_lp.reshape(n).float()
                    hint_lp[:, s] = g_lp.view(shape)
                    if with_kl:
                        g_kl = g_kl.reshape(n).float()
                        hint_kl[:, s] = g_kl.view(shape)
                        # g_kl · π ⊙ (d − KL) − g_lp · π = π ⊙ (g_kl·d − (g_kl·KL + g_lp)), in d's buffer (3 passes);
                        # then + g_lp · onehot(y) through W[y]
                        shift = (g_kl * st["exact_kl"] + g_lp).unsqueeze(-1)
                        comb = diff.mul_(g_kl.unsqueeze(-1)).sub_(shift).mul_(probs)
                    else:
                        comb = probs.mul_(-g_lp.unsqueeze(-1))
                    proj = (comb.to(dtype) @ w).float() + g_lp.unsqueeze(-1) * w[y].float()
                    hinted[:, s] = proj.view(*shape, -1)
                    del comb, proj
                lp[:, s] = st["logprobs"].view(shape)
                if with_ref_lp:
                    ref_lp[:, s] = st["ref_logprobs"].view(shape)
                if with_kl:
                    kl[:, s] = st["exact_kl"].view(shape)
                if with_entropy:
                    ent[:, s] = st["entropy"].view(shape)
                if precompute:
                    # the hidden-state gradient is linear in (g_lp, g_kl): project its two parts now, while π and d
                    # exist, so backward needs no logits (module docstring)
                    if with_kl:
                        part = diff.sub_(st["exact_kl"].unsqueeze(-1)).mul_(probs)  # π ⊙ (d − KL)
                        grad_kl_part[:, s] = (part.to(dtype) @ w).float().view(*shape, -1)
                        del part
                    if with_lp:
                        pw = (probs.to(dtype) @ w).float()
                        grad_lp_part[:, s] = (w[y].float() - pw).view(*shape, -1)
                del probs, diff
        ctx.opts = opts
        ctx.hidden_dtype = hidden.dtype
        ctx.precompute = precompute
        if precompute:
            ctx.save_for_backward(grad_lp_part, grad_kl_part)
        elif hint is not None:  # the hinted gradient, and what a recompute needs if the real gradient differs
            ctx.save_for_backward(hidden, weight, bias, labels, ref_hidden, ref_weight, ref_bias, kl, hinted, hint_lp,
                                  hint_kl)  # fmt: skip
        else:
            ctx.save_for_backward(hidden, weight, bias, labels, ref_hidden, ref_weight, ref_bias, kl)
        ctx.mark_non_differentiable(ref_lp, ent)
        if not with_kl:
            ctx.mark_non_differentiable(kl)
        ctx.set_materialize_grads(False)
        return lp, ref_lp, kl, ent

    @staticmethod
    def backward(ctx, g_lp, g_ref_lp, g_kl, g_ent):
        temperature, chunk, with_lp, with_ref_lp, with_kl, with_entropy, _, dtype, hint = ctx.opts
        precompute = ctx.precompute
        none = (None,) * 7
        if g_lp is None and g_kl is None:
            return none + (None,)
        if hint is not None:
            hidden, weight, bias, labels, ref_hidden, ref_weight, ref_bias, kl, hinted, hint_lp, hint_kl = (
                ctx.saved_tensors
            )
            scale = _hint_scale(g_lp, g_kl if with_kl else None, hint_lp, hint_kl if with_kl else None)
            if scale is not None and not ctx.needs_input_grad[1] and not ctx.needs_input_grad[2]:
                grad = hinted * (scale / temperature)
                return (grad.to(ctx.hidden_dtype),) + none
            # the loss is not what the hint said (or the head trains): recompute, correct whatever the hint was
            return _recompute_backward(ctx, g_lp, g_kl, hidden, weight, bias, labels, ref_hidden, ref_weight, ref_bias,
                                       kl)  # fmt: skip
        if precompute:
            grad_lp_part, grad_kl_part = ctx.saved_tensors
            grad = None
            if g_kl is not None and grad_kl_part is not None:
                grad = grad_kl_part * g_kl.unsqueeze(-1)
            if g_lp is not None and grad_lp_part is not None:
                part = grad_lp_part * g_lp.unsqueeze(-1)
                grad = part if grad is None else grad.add_(part)
            if temperature != 1.0:
                grad = grad.div_(temperature)
            return (grad.to(ctx.hidden_dtype),) + none
        return _recompute_backward(ctx, g_lp, g_kl, *ctx.saved_tensors)


def _hint_scale(g_lp, g_kl, hint_lp, hint_kl) -> float | None:
    """``c`` when the real upstream gradients equal ``c ×`` the hinted ones (a loss scale, accumulation division),
    to float32 rounding; ``None`` otherwise."""
    real = [torch.zeros_like(hint_lp) if g_lp is None else g_lp.float()]
    hinted = [hint_lp]
    if hint_kl is not None:
        real.append(torch.zeros_like(hint_kl) if g_kl is None else g_kl.float())
        hinted.append(hint_kl)
    a, h = torch.cat([x.reshape(-1) for x in real]), torch.cat([x.reshape(-1) for x in hinted])
    hh = float(h.dot(h))
    if hh == 0.0:
        return 0.0 if float(a.abs().max()) == 0.0 else None
    c = float(a.dot(h)) / hh
    tol = 1e-5 * max(float(a.abs().max()), abs(c) * float(h.abs().max())) + 1e-30
    return c if float((a - c * h).abs().max()) <= tol else None


def _recompute_backward(ctx, g_lp, g_kl, hidden, weight, bias, labels, ref_hidden, ref_weight, ref_bias, kl):
    """Backward by recomputing each chunk's logits (a trainable head, or a loss other than the hint said)."""
    temperature, chunk, with_lp, with_ref_lp, with_kl, with_entropy, _, dtype, hint = ctx.opts
    B, T, _ = hidden.shape
    need_h, need_w, need_b = ctx.needs_input_grad[:3]
    grad_h = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if need_h else None
    with _gathered(weight, bias, ref_weight, ref_bias):  # (full shapes inside: ZeRO-3 partitions outside)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        w, b = weight.to(dtype), None if bias is None else bias.to(dtype)
        use_ref = ref_hidden is not None
        if use_ref:
            rw = ref_weight.to(dtype) if ref_weight is not weight else w
            rb = None if ref_bias is None else ref_bias.to(dtype)
        for start in range(0, T, chunk):
            s = slice(start, min(start + chunk, T))
            n = B * (s.stop - s.start)
            h = hidden[:, s].reshape(n, -1).to(dtype)
            y = labels[:, s].reshape(n)
            z = _project(h, w, b)
            rz = _project(ref_hidden[:, s].reshape(n, -1).to(device=h.device, dtype=dtype), rw, rb) if use_ref else None
            _, probs, diff = forward_stats(
                z, y, rz if with_kl else None, temperature, with_exact_kl=with_kl, with_entropy=False,
                owned=True, ref_owned=True, keep_probs=True,
            )
            gz = logits_grad(
                probs, diff, kl[:, s].reshape(n) if with_kl else None, y,
                None if g_lp is None else g_lp[:, s].reshape(n).float(),
                None if (g_kl is None or not with_kl) else g_kl[:, s].reshape(n).float(), temperature,
            )
            del probs, diff, z, rz
            gzc = gz.to(dtype)
            if grad_h is not None:
                grad_h[:, s] = (gzc @ w).float().view(B, s.stop - s.start, -1)
            if grad_w is not None:
                grad_w.add_((gzc.t() @ h).float())
            if grad_b is not None:
                grad_b.add_(gz.sum(0))
    return (
        None if grad_h is None else grad_h.to(hidden.dtype),
        None if grad_w is None else grad_w.to(weight.dtype),
        None if grad_b is None else grad_b.to(bias.dtype),
        None, None, None, None, None,
    )


def head_token_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    ref_hidden: torch.Tensor | None = None,
    ref_weight: torch.Tensor | None = None,
    ref_bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = 64,
    with_ref_logprobs: bool = False,
    with_exact_kl: bool = False,
    with_entropy: bool = False,
    grad_hint=None,
) -> dict[str, torch.Tensor]:
    """Per-position statistics of ``softmax((hidden @ weight.T + bias) / temperature)`` (module docstring).

    Args:
        hidden: ``(B, T, H)`` policy hidden states at the positions predicting ``labels`` (may require grad).
        weight, bias: the policy head, ``(V, H)`` and ``(V,)`` or None (gradients when they require grad).
        labels: ``(B, T)`` token ids.
        ref_hidden, ref_weight, ref_bias: the reference's ``(B, T, H_ref)`` hidden states and head (constants);
            needed for ``with_ref_logprobs`` / ``with_exact_kl``. ``ref_hidden`` may live on another device (CPU).
        temperature: logits are divided by it. chunk_size: positions per chunk (``None``: all ``T``); halved
            (rounded up) when the reference is used, since its logits chunk coexists with the policy's.
        with_ref_logprobs / with_exact_kl / with_entropy: which statistics to add to ``logprobs``.
        grad_hint: optional ``fn(logprobs (B, c), exact_kl (B, c) or None, positions: slice) -> (g_lp, g_kl)``,
            the gradient the loss will send to each position's log-prob and KL, given their values (e.g. PPO's
            clipped surrogate + β·KL, times the aggregation weights: ``core.ppo``'s per-position derivative). With
            it the forward projects the COMBINED logits gradient once (one GEMM instead of two); the backward
            checks that the real upstream gradients are the hinted ones times one scalar (loss scaling,
            accumulation) and otherwise recomputes the chunk's logits: a wrong hint costs time, never correctness.

    Returns:
        dict of ``(B, T)`` float32: ``logprobs`` (and ``exact_kl``) differentiable w.r.t. ``hidden`` (and the head
        when trainable); ``ref_logprobs``, ``entropy`` without gradient.
    """
    if hidden.dim() != 3 or labels.shape != hidden.shape[:2]:
        raise ValueError(f"hidden {tuple(hidden.shape)} must be (B, T, H) and labels {tuple(labels.shape)} (B, T).")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    if chunk_size is not None and chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size}.")
    use_ref = with_ref_logprobs or with_exact_kl
    if use_ref and (ref_hidden is None or ref_weight is None):
        raise ValueError("head_token_stats: reference statistics need `ref_hidden` and `ref_weight`.")
    if use_ref and ref_hidden.shape[:2] != hidden.shape[:2]:
        raise ValueError(f"ref_hidden {tuple(ref_hidden.shape)} does not match hidden {tuple(hidden.shape)}.")
    track = torch.is_grad_enabled() and (
        hidden.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )
    head_trainable = weight.requires_grad or (bias is not None and bias.requires_grad)
    precompute = track and not head_trainable
    T = hidden.shape[1]
    chunk = T if chunk_size is None else min(int(chunk_size), T)
    if use_ref and chunk_size is not None:
        # with a reference two (chunk, V) float32 buffers coexist (log π and log π_ref): half the positions per
        # chunk keeps the peak at or below the policy-only (k1) path's one buffer, at no extra arithmetic
        chunk = max(1, (chunk + 1) // 2)
    opts = (
        float(temperature), chunk, True, with_ref_logprobs, with_exact_kl, with_entropy, precompute,
        _compute_dtype(hidden), grad_hint if (precompute and grad_hint is not None) else None,
    )
    lp, ref_lp, kl, ent = _HeadStats.apply(
        hidden, weight, bias, labels, ref_hidden if use_ref else None, ref_weight if use_ref else None,
        ref_bias if use_ref else None, opts,
    )
    out = {"logprobs": lp}
    if with_ref_logprobs:
        out["ref_logprobs"] = ref_lp
    if with_exact_kl:
        out["exact_kl"] = kl
    if with_entropy:
        out["entropy"] = ent
    return out
