"""Per-token statistics of completion tokens under a causal LM (and a reference), without full (B, T, V) logits.

A causal LM is a trunk (embeddings + decoder blocks + final norm: ``model.get_decoder()``) followed by an output
head (``model.get_output_embeddings()``, a ``Linear(H, V)``). The vocabulary projection dominates memory:
``B × T × V`` float32 logits are 0.5 GiB at B=8, T=512, V=32k, per model. :func:`completion_token_stats`
runs each trunk once to ``(B, T, H)`` hidden states (cheap: H ≪ V) and then applies the heads over chunks of
positions, so at any time only ``(B, chunk, V)`` logits of each model exist.

Conventions (the same as TRL's GRPO and ``trl_extras.core.rollout``):
- ``input_ids = [prompt | completion]`` of shape ``(B, L)``, prompt left-padded, completion right-padded; the
  completion is the last ``T = logits_to_keep`` tokens, ``input_ids[:, -T:]``, predicted from positions
  ``L−T−1 … L−2``.
- Position ids are derived from ``attention_mask`` (``cumsum − 1``) exactly as ``generate`` does for left-padded
  batches, so the log-probabilities match those of the sampling pass.
- Logits are divided by the sampling ``temperature`` (the distribution that was sampled from).

Models without a separable head (final logit soft-capping, logit scaling, or no ``get_output_embeddings``) fall
back to the model's own forward with ``logits_to_keep``: the full ``(B, T, V)`` logits of the policy and the
reference then coexist (correct numbers, no memory saving). Wrapped models (DDP/DeepSpeed ``.module``) are
unwrapped for the no-grad statistics; :func:`policy_logprobs` calls the wrapper's own forward when it cannot
go through the trunk, so gradient synchronisation hooks still run.
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils.checkpoint import checkpoint

from ..modeling.peft import is_peft_model as _is_peft
from ..modeling.reference import reference_context as _peft_reference  # the "ref" adapter, or the adapter disabled
from .kl import entropy_from_logits, exact_kl_from_logprobs

__all__ = [
    "completion_token_stats",
    "exact_kl_to_reference",
    "policy_logprobs",
    "position_ids_from_mask",
    "split_lm",
]

# config attributes that make ``head(hidden)`` differ from the model's logits (the list TRL's fused LM head knows)
_NON_SEPARABLE_ATTRS = (
    "final_logit_softcapping",
    "logit_scale",
    "output_multiplier",
    "lm_head_multiplier",
    "logits_scaling",
)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` position ids for a left-padded batch, as ``transformers`` generation computes them."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 0)


def _unwrap(model):
    """Strip DDP/DeepSpeed/compile wrappers (objects exposing the real model as ``.module`` / ``._orig_mod``)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "module") and not hasattr(model, "get_output_embeddings"):
            model = model.module
        else:
            return model


def split_lm(model):
    """``(trunk, head)`` of a causal LM (PEFT-wrapped or not), or ``None`` when the head is not separable.

    ``trunk(input_ids=..., attention_mask=..., position_ids=...)`` returns an output with ``last_hidden_state``
    (PEFT/LoRA layers inside it stay active); ``head`` maps ``(..., H)`` to ``(..., V)`` logits.
    """
    base = _unwrap(model)
    if _is_peft(base):
        base = base.get_base_model()
    config = getattr(base, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for attr in _NON_SEPARABLE_ATTRS:
        value = getattr(config, attr, None)
        if value not in (None, 1, 1.0):
            return None
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if head is None:
        return None
    # the backbone TRL's fused LM head also uses (``getattr(model, base_model_prefix)``)
    trunk = getattr(base, "base_model", None)
    if trunk is None or trunk is base:
        try:
            trunk = base.get_decoder()
        except (AttributeError, ValueError, NotImplementedError):
            trunk = None
    if trunk is None or trunk is base:
        return None
    return trunk, head


def _device_of(module) -> torch.device:
    return next(module.parameters()).device


def trunk_hidden_states(trunk, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``(B, L, H)`` last hidden states of a transformer trunk over left-padded ``(B, L)`` inputs (positions counted
    from each row's first real token, as in generation)."""
    out = trunk(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    )
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def _hidden(trunk, input_ids, attention_mask, T: int) -> torch.Tensor:
    """``(B, T, H)`` hidden states at the positions that predict the last ``T`` tokens."""
    return trunk_hidden_states(trunk, input_ids, attention_mask)[:, -T - 1 : -1, :]


def _full_logits(model, input_ids, attention_mask, T: int) -> torch.Tensor:
    """``(B, T, V)`` logits predicting the last ``T`` tokens, through the model's own forward (fallback path)."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        logits_to_keep=T + 1,
        use_cache=False,
    )
    return out.logits[:, -T - 1 : -1, :]


def _check_inputs(input_ids, attention_mask, logits_to_keep) -> int:
    if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} must both be (B, L)."
        )
    T = int(logits_to_keep)
    if not 0 < T < input_ids.shape[1]:
        raise ValueError(
            f"logits_to_keep={T} must be in [1, L-1] with L={input_ids.shape[1]} (at least one prompt token)."
        )
    return T


def _logp_of(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-softmax ``(..., V)`` float32, log-prob of ``labels`` ``(...)``)."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp, logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def completion_token_stats(
    model,
    ref_model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    logits_to_keep: int,
    temperature: float = 1.0,
    chunk_size: int | None = 64,
    with_exact_kl: bool = True,
    with_entropy: bool = True,
    reference_context=None,
) -> dict[str, torch.Tensor]:
    """Log-probs, reference log-probs, exact KL and entropy of the completion tokens (no gradients).

    Args:
        model: the policy (``PreTrainedModel``, ``PeftModel`` or a DDP/DeepSpeed wrapper of either).
        ref_model: the reference model; ``None`` with a PEFT ``model`` means "the same model under
            ``reference_context``" (its ``"ref"`` adapter, else the adapter disabled; no second copy); ``None`` with
            a plain model computes policy statistics only (``with_exact_kl`` must then be False).
        input_ids, attention_mask: ``(B, L)`` prompt + completion.
        logits_to_keep: ``T``, the number of completion tokens at the end of ``input_ids``.
        temperature: sampling temperature (logits are divided by it).
        chunk_size: positions per head application (``None``: all ``T`` at once).
        with_exact_kl: compute the exact per-token KL(π‖π_ref) = Σ_v π(v)(log π(v) − log π_ref(v)).
        with_entropy: compute the policy's per-token entropy.
        reference_context: optional zero-argument callable returning a context manager under which the PEFT
            ``model`` acts as the reference when ``ref_model`` is None (default:
            ``trl_extras.modeling.reference_context(model)``: the ``"ref"`` adapter if any, else adapter disabled).

    Returns:
        dict of ``(B, T)`` float32 tensors: ``logprobs`` (always), ``ref_logprobs`` (when there is a reference),
        ``exact_kl`` (when ``with_exact_kl``), ``entropy`` (when ``with_entropy``). Values at padded completion
        positions are computed like any other (mask them downstream).
    """
    T = _check_inputs(input_ids, attention_mask, logits_to_keep)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    if chunk_size is not None and chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size}.")
    policy = _unwrap(model)
    use_disabled_adapter = ref_model is None and _is_peft(policy)
    has_ref = ref_model is not None or use_disabled_adapter
    if with_exact_kl and not has_ref:
        raise ValueError(
            "completion_token_stats: with_exact_kl=True needs a reference: pass `ref_model`, or a PEFT model "
            "(whose reference is the base with the adapter disabled)."
        )
    ref = _unwrap(ref_model) if ref_model is not None else policy
    # the reference forward of a PEFT policy runs under its reference context ("ref" adapter, or adapter disabled)
    ref_ctx = contextlib.nullcontext
    if use_disabled_adapter:
        ref_ctx = reference_context or (lambda: _peft_reference(policy))
    labels = input_ids[:, -T:]

    pol_split = split_lm(policy)
    ref_split = split_lm(ref) if has_ref else None
    if pol_split is not None and (not has_ref or ref_split is not None):
        pol_hidden = _hidden(pol_split[0], input_ids, attention_mask, T)
        pol_head = pol_split[1]
        if has_ref:
            with ref_ctx():
                ref_hidden = _hidden(ref_split[0], input_ids, attention_mask, T)
            ref_head = ref_split[1]
        # with a device map the trunk can end on another device than the head (as TRL's fused head handles)
        pol_dev, ref_dev = _device_of(pol_head), _device_of(ref_head) if has_ref else None
        get_pol = lambda s: pol_head(pol_hidden[:, s].to(pol_dev)).to(input_ids.device)  # noqa: E731
        get_ref = lambda s: ref_head(ref_hidden[:, s].to(ref_dev)).to(input_ids.device)  # noqa: E731
    else:
        # fallback: full logits from each model's own forward (documented: no memory saving)
        pol_logits = _full_logits(policy, input_ids, attention_mask, T)
        if has_ref:
            with ref_ctx():
                ref_logits = _full_logits(ref, input_ids, attention_mask, T)
        get_pol = lambda s: pol_logits[:, s].clone()  # noqa: E731  (chunks are scaled in place)
        get_ref = lambda s: ref_logits[:, s].clone()  # noqa: E731

    B = input_ids.shape[0]
    device = input_ids.device
    out = {"logprobs": torch.empty(B, T, dtype=torch.float32, device=device)}
    if has_ref:
        out["ref_logprobs"] = torch.empty(B, T, dtype=torch.float32, device=device)
    if with_exact_kl:
        out["exact_kl"] = torch.empty(B, T, dtype=torch.float32, device=device)
    if with_entropy:
        out["entropy"] = torch.empty(B, T, dtype=torch.float32, device=device)

    step = T if chunk_size is None else chunk_size
    # Memory discipline per chunk (no autograd here): the head output is scaled in place, freed right after its
    # log-softmax; the reference log-probs become (log π − log π_ref) in place, π = exp(log π) is taken in place
    # (or reused from the entropy), and row dot products go through matmul: the exact KL allocates no
    # (B, chunk, V) buffer beyond the k1 path's (fresh large buffers also cost page faults on CPU).
    for start in range(0, T, step):
        s = slice(start, min(start + step, T))
        logp = _log_softmax_owned(get_pol(s), temperature)
        out["logprobs"][:, s] = logp.gather(-1, labels[:, s, None]).squeeze(-1)
        probs = None
        if with_entropy:
            probs = logp.exp()
            out["entropy"][:, s] = -_rowdot(probs, logp)
        if has_ref:
            with ref_ctx():  # a LoRA-wrapped head must be disabled too
                ref_logp = _log_softmax_owned(get_ref(s), temperature)
            out["ref_logprobs"][:, s] = ref_logp.gather(-1, labels[:, s, None]).squeeze(-1)
            if with_exact_kl:
                diff = ref_logp.neg_().add_(logp)  # log π − log π_ref, in the reference's buffer
                del ref_logp
                if probs is None:
                    probs = logp.exp_()  # in logp's buffer: logp is not needed any more
                out["exact_kl"][:, s] = _rowdot(probs, diff)
                del diff
            else:
                del ref_logp
        del logp, probs
    return out


def _log_softmax_owned(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """float32 ``log_softmax(logits / temperature)`` of a tensor this module owns (scaled in place, then freed)."""
    logits = logits.float()
    if temperature != 1.0:
        logits.div_(temperature)
    return torch.log_softmax(logits, dim=-1)


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum(-1)`` for ``(..., V)`` tensors without materializing the product."""
    return torch.matmul(a.unsqueeze(-2), b.unsqueeze(-1)).squeeze(-1).squeeze(-1)


def policy_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    logits_to_keep: int,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    with_entropy: bool = False,
) -> dict[str, torch.Tensor]:
    """Log-probs (and optionally entropy) of the completion tokens WITH gradients, for the policy update.

    Args:
        model: the policy (possibly PEFT- or DDP/DeepSpeed-wrapped).
        input_ids, attention_mask: ``(B, L)``; logits_to_keep: ``T`` completion tokens at the end.
        temperature: sampling temperature.
        chunk_size: ``None`` builds the policy's ``(B, T, V)`` logits once through the model's own forward (the
            wrapper's forward, so DDP/DeepSpeed hooks run). An integer goes through trunk + head in position
            chunks, each recomputed in backward (activation checkpointing), so only ``(B, chunk, V)`` logits
            exist at a time -- for unwrapped models with a separable head; otherwise it falls back to ``None``.
        with_entropy: also return the entropy (computed under no_grad: a metric, not a loss term).

    Returns:
        dict with ``logprobs`` ``(B, T)`` float32 (requires grad when the model has trainable parameters) and
        ``entropy`` ``(B, T)`` when requested.
    """
    T = _check_inputs(input_ids, attention_mask, logits_to_keep)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    labels = input_ids[:, -T:]
    wrapped = _unwrap(model) is not model
    split = None if (chunk_size is None or wrapped) else split_lm(model)
    if split is None:
        logits = _full_logits(model, input_ids, attention_mask, T)
        logp, lp = _logp_of(logits, labels, temperature)
        out = {"logprobs": lp}
        if with_entropy:
            with torch.no_grad():
                out["entropy"] = entropy_from_logits(logits.detach(), temperature)
        return out

    trunk, head = split
    hidden = _hidden(trunk, input_ids, attention_mask, T)

    def _chunk_logp(h, y):
        return _logp_of(head(h), y, temperature)[1]

    lps, ents = [], []
    for start in range(0, T, chunk_size):
        s = slice(start, min(start + chunk_size, T))
        # recompute the chunk's logits in backward instead of keeping (B, chunk, V) activations alive
        lps.append(checkpoint(_chunk_logp, hidden[:, s], labels[:, s], use_reentrant=False))
        if with_entropy:
            with torch.no_grad():
                ents.append(entropy_from_logits(head(hidden[:, s].detach()), temperature))
    out = {"logprobs": torch.cat(lps, dim=1)}
    if with_entropy:
        out["entropy"] = torch.cat(ents, dim=1)
    return out


def exact_kl_to_reference(
    model,
    ref_model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    logits_to_keep: int,
    temperature: float = 1.0,
    chunk_size: int | None = 64,
    reference_context=None,
) -> torch.Tensor:
    """Exact per-token KL(π‖π_ref) of the completion positions WITH gradients for the policy (a loss term).

    Same chunked computation as :func:`completion_token_stats`: the policy trunk runs once (with grad), the
    reference trunk once (no grad), then per chunk of positions ``Σ_v π(v)(log π(v) − log π_ref(v))`` is computed
    under activation checkpointing, so only ``(B, chunk, V)`` logits of each model exist at a time, in forward and
    in backward (the chunk's logits are recomputed there). Models wrapped by DDP/DeepSpeed (or without a
    separable head) go through the wrapper's forward instead: the policy's ``(B, T, V)`` logits are then built
    once, the reference still in chunks.

    Args:
        model: the policy; ref_model: the reference (``None`` + PEFT ``model``: ``reference_context(model)``).
        input_ids, attention_mask: ``(B, L)``; logits_to_keep: ``T``; temperature: sampling temperature.
        chunk_size: positions per chunk (``None``: all at once).
        reference_context: optional zero-argument callable returning a context manager under which ``model``
            acts as the reference (default for PEFT: ``trl_extras.modeling.reference_context(model)``: the
            ``"ref"`` adapter if any, else the adapter disabled).

    Returns:
        ``(B, T)`` float32 KL; gradients flow to the policy only. Mask padded positions downstream.
    """
    T = _check_inputs(input_ids, attention_mask, logits_to_keep)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    step = T if chunk_size is None else int(chunk_size)
    if step <= 0:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size}.")
    policy = _unwrap(model)
    if ref_model is None:
        if reference_context is None:
            if not _is_peft(policy):
                raise ValueError("exact_kl_to_reference: pass `ref_model`, or a PEFT model (adapter disabled).")
            reference_context = lambda: _peft_reference(policy)  # noqa: E731
        ref = policy
    else:
        ref = _unwrap(ref_model)
        reference_context = reference_context or contextlib.nullcontext

    ref_split = split_lm(ref)
    with torch.no_grad(), reference_context():
        if ref_split is not None:
            ref_hidden = _hidden(ref_split[0], input_ids, attention_mask, T)
        else:
            ref_logits_full = _full_logits(ref, input_ids, attention_mask, T)

    def ref_logp(s):
        with torch.no_grad(), reference_context():
            lg = ref_split[1](ref_hidden[:, s]) if ref_split is not None else ref_logits_full[:, s]
            return torch.log_softmax(lg.float() / temperature, dim=-1)

    wrapped = policy is not model
    pol_split = None if wrapped else split_lm(policy)
    kls = []
    if pol_split is None:
        logits = _full_logits(model, input_ids, attention_mask, T)
        for start in range(0, T, step):
            s = slice(start, min(start + step, T))
            logp = torch.log_softmax(logits[:, s].float() / temperature, dim=-1)
            kls.append(exact_kl_from_logprobs(logp, ref_logp(s)))
        return torch.cat(kls, dim=1)

    trunk, head = pol_split
    hidden = _hidden(trunk, input_ids, attention_mask, T)

    def _chunk_kl(h, start, stop):
        # the reference chunk is recomputed too (under no_grad) rather than kept: bounded memory in backward
        logp = torch.log_softmax(head(h).float() / temperature, dim=-1)
        return exact_kl_from_logprobs(logp, ref_logp(slice(start, stop)))

    for start in range(0, T, step):
        stop = min(start + step, T)
        kls.append(checkpoint(_chunk_kl, hidden[:, start:stop], start, stop, use_reentrant=False))
    return torch.cat(kls, dim=1)
