"""Per-token statistics of completion tokens under a causal LM (and a reference), without full (B, T, V) logits.

A causal LM is a trunk (embeddings + decoder blocks + final norm: ``model.get_decoder()``) followed by an output
head (``model.get_output_embeddings()``, a ``Linear(H, V)``). The vocabulary projection dominates memory:
``B × T × V`` float32 logits are 0.5 GiB at B=8, T=512, V=32k, per model. :func:`completion_token_stats`
runs each trunk once to ``(B, T, H)`` hidden states (cheap: H ≪ V) and then applies the heads over chunks of
positions, so at any time only ``(B, chunk, V)`` logits of each model exist.

Conventions (the same as TRL's GRPO and ``trl_extras.modeling.generation``):
- ``input_ids = [prompt | completion]`` of shape ``(B, L)``, prompt left-padded, completion right-padded; the
  completion is the last ``T = logits_to_keep`` tokens, ``input_ids[:, -T:]``, predicted from positions
  ``L−T−1 … L−2``.
- Position ids are derived from ``attention_mask`` (``cumsum − 1``) exactly as ``generate`` does for left-padded
  batches, so the log-probabilities match those of the sampling pass.
- Logits are divided by the sampling ``temperature`` (the distribution that was sampled from).

Models without a separable head (final logit soft-capping, logit scaling, or no ``get_output_embeddings``) fall
back to the model's own forward with ``logits_to_keep``: the full ``(B, T, V)`` logits of the policy and the
reference then coexist (correct numbers, no memory saving). Wrapped models (DDP/DeepSpeed ``.module``) are
unwrapped for the no-grad statistics; with gradients, :func:`policy_logprobs` runs trunk + chunked head INSIDE the
wrapper's forward (its hooks synchronise gradients), so no ``(B, T, V)`` tensor exists there either.
:func:`reference_hidden_states` caches the reference trunk's output once per rollout batch so the update runs only
the reference's head.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from ..core.kl import token_stats_from_logits
from .head_kernel import head_token_stats, is_plain_linear
from .peft import is_peft_model as _is_peft
from .reference import reference_context as _peft_reference  # the "ref" adapter, or the adapter disabled

__all__ = [
    "completion_entropies",
    "completion_token_stats",
    "exact_kl_to_reference",
    "policy_logprobs",
    "position_ids_from_mask",
    "reference_hidden_states",
    "split_lm",
]

#: The previous paths, for benchmarks' before/after comparisons only (``benchmarks/exact_kl_memory.py``): False sends
#: plain heads through the activation-checkpointed head (not the fused kernel), resp. makes a DDP/DeepSpeed wrapper
#: in grad mode build its full (B, T, V) logits (the chunked pass not run inside its forward).
_FUSED_HEAD = True
_INSIDE_WRAPPER = True

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


def trunk_hidden_states(
    trunk, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """``(B, L, H)`` last hidden states of a transformer trunk over left-padded ``(B, L)`` inputs (``position_ids``
    ``(B, L)``, default: counted from each row's first real token, as in generation)."""
    out = trunk(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask) if position_ids is None else position_ids,
        use_cache=False,
    )
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def _hidden(trunk, input_ids, attention_mask, T: int, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, T, H)`` hidden states at the positions that predict the last ``T`` tokens."""
    return trunk_hidden_states(trunk, input_ids, attention_mask, position_ids)[:, -T - 1 : -1, :]


def _full_logits(model, input_ids, attention_mask, T: int, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, T, V)`` logits predicting the last ``T`` tokens, through the model's own forward (fallback path), at
    ``position_ids`` (default: from the mask), as the split paths run the trunk."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask) if position_ids is None else position_ids,
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


def _resolve_reference(policy, ref_model, reference_context, required: bool, caller: str):
    """``(reference module or None, context factory)``: ``ref_model``; else the PEFT policy under
    ``reference_context`` (default: ``trl_extras.modeling.reference_context``: its ``"ref"`` adapter if any, else
    the adapter disabled); else ``None`` (an error when ``required``)."""
    if ref_model is not None:
        return _unwrap(ref_model), reference_context or contextlib.nullcontext
    if reference_context is not None:
        return policy, reference_context
    if _is_peft(policy):
        return policy, lambda: _peft_reference(policy)
    if required:
        raise ValueError(
            f"{caller}: the exact KL needs a reference: pass `ref_model`, or a PEFT model (whose reference is the "
            "base with the adapter disabled)."
        )
    return None, None


def _plain_head(head):
    """``(weight, bias)`` of a head the fused kernel can read directly (exactly ``nn.Linear``), else ``None``.

    A TRAINABLE head partitioned by DeepSpeed ZeRO-3 (``ds_id``) is not read directly: its gradient must reach the
    partition through the module's own hooks, so it goes through the (checkpointed) module call instead."""
    if not is_plain_linear(head):
        return None
    params = [p for p in (head.weight, head.bias) if p is not None]
    if any(hasattr(p, "ds_id") and p.requires_grad for p in params):
        return None
    return head.weight, head.bias


@contextlib.contextmanager
def _forward_replaced(module, fn):
    """Inside the block ``module(...)`` runs ``fn(...)``: an instance attribute shadows the class's ``forward`` (an
    existing instance-level ``forward``, e.g. accelerate's autocast wrapper, is put back on exit)."""
    had = "forward" in module.__dict__
    previous = module.__dict__.get("forward")
    module.forward = fn
    try:
        yield
    finally:
        if had:
            module.forward = previous
        else:
            del module.forward


def _inside_wrapper(model, policy, compute):
    """Run ``compute()`` as the forward of the DDP/DeepSpeed ``model`` wrapping ``policy`` (the approach of TRL's
    ``add_fused_lm_head``): the wrapper's pre/post-forward hooks run around the trunk and the chunked head kernel, so
    gradients synchronise (and ZeRO-3 gathers parameters) as after an ordinary forward, and no ``(B, T, V)`` tensor
    exists."""
    with _forward_replaced(policy, lambda *args, **kwargs: compute()):
        return model()


def reference_hidden_states(
    model,
    ref_model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    logits_to_keep: int,
    reference_context=None,
) -> torch.Tensor:
    """The reference trunk's final hidden states ``(B, T, H)`` at the positions predicting the last ``T`` tokens (no
    gradient), for :func:`policy_logprobs` ``(ref_hidden=...)``: computed once per rollout batch, the update then
    runs only the reference HEAD per chunk, never its trunk.

    Args:
        model: the policy (its PEFT reference is used when ``ref_model`` is None: the ``"ref"`` adapter or the
            adapter disabled, see ``reference_context``).
        ref_model: a separate reference model (plain, PEFT, 4-bit, or DDP/DeepSpeed-wrapped), or None.
        input_ids, attention_mask: ``(B, L)``; logits_to_keep: ``T``.

    Size: ``B × T × H`` elements of the trunk's output dtype (e.g. B=8, T=512, H=896 in bf16: 7 MiB; the logits
    they replace would be ``B × T × V`` floats: 2.3 GiB at V=152k).

    Raises ValueError when the reference's head is not separable (soft-capping / logit scaling / no
    ``get_output_embeddings``): such a reference has no hidden-state shortcut.
    """
    T = _check_inputs(input_ids, attention_mask, logits_to_keep)
    ref, ref_ctx = _resolve_reference(_unwrap(model), ref_model, reference_context, True, "reference_hidden_states")
    split = split_lm(ref)
    if split is None:
        raise ValueError(
            f"reference_hidden_states: the reference {type(ref).__name__} has no separable head (logit soft-capping or "
            "scaling, or no output embeddings); its statistics need its full forward."
        )
    with torch.no_grad(), ref_ctx():
        return _hidden(split[0], input_ids, attention_mask, T)


@dataclass
class _TokenStatsPlan:
    """What one :func:`_token_stats` call computes and on which modules: its arguments checked and resolved once,
    then read by every step below (``B`` rows, ``L`` tokens, the last ``T`` of which are the completion)."""

    model: Any  # as the caller passed it: possibly a DDP/DeepSpeed wrapper, whose forward must run in grad mode
    policy: Any  # ``model`` unwrapped
    policy_split: tuple | None  # the policy's (trunk, head); None: the full-logits path
    ref: Any  # the reference module (None: no reference)
    ref_context: Callable | None  # zero-argument context factory under which ``ref`` acts as the reference
    ref_split: tuple | None  # the reference's (trunk, head) when it is needed and separable
    use_ref: bool  # a reference is needed (its log-probs or the exact KL) and exists
    cached_ref_hidden: torch.Tensor | None  # (B, T, H) reference trunk output given by the caller
    input_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, L)
    position_ids: torch.Tensor  # (B, L)
    labels: torch.Tensor  # (B, T): the completion tokens whose log-probs are taken
    T: int
    chunks: list[slice]  # the positions of each head application, covering 0 … T−1 in order
    temperature: float
    chunk_size: int | None
    track: bool  # grad mode (the update) or not (the rollout)
    with_ref_logprobs: bool
    with_exact_kl: bool
    with_entropy: bool
    return_ref_hidden: bool
    grad_hint: Any

    @property
    def device(self) -> torch.device:
        """Where the outputs live: the inputs' device (a head may sit on another one under device_map)."""
        return self.input_ids.device

    @property
    def runs_inside_wrapper(self) -> bool:
        """Grad mode through a DDP/DeepSpeed wrapper with a separable head: the wrapper's forward must run (its hooks
        synchronise gradients), so the trunk and the chunked head run inside it (:func:`_inside_wrapper`)."""
        return self.track and self.policy is not self.model and self.policy_split is not None


def _plan_token_stats(
    model, ref_model, input_ids, attention_mask, logits_to_keep, temperature, chunk_size, with_ref_logprobs,
    with_exact_kl, with_entropy, reference_context, caller, ref_hidden, return_ref_hidden, position_ids, grad_hint,
) -> _TokenStatsPlan:
    """Check the arguments of :func:`_token_stats` (errors name the argument and the value) and resolve the modules:
    the unwrapped policy, the reference and its context, and which of them has a separable (trunk, head)."""
    T = _check_inputs(input_ids, attention_mask, logits_to_keep)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    if chunk_size is not None and chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size}.")
    policy = _unwrap(model)
    ref, ref_ctx = _resolve_reference(policy, ref_model, reference_context, with_exact_kl, caller)
    use_ref = ref is not None and (with_ref_logprobs or with_exact_kl)
    if ref_hidden is not None and ref_hidden.shape[:2] != (input_ids.shape[0], T):
        raise ValueError(
            f"{caller}: ref_hidden {tuple(ref_hidden.shape)} must be (B, T, H) = ({input_ids.shape[0]}, {T}, H)."
        )
    ref_split = split_lm(ref) if use_ref else None
    if use_ref and ref_split is None and ref_hidden is not None:
        raise ValueError(f"{caller}: ref_hidden was given but the reference has no separable head.")
    track = torch.is_grad_enabled()
    policy_split = split_lm(policy)
    if track and policy is not model and not _INSIDE_WRAPPER:
        policy_split = None  # (the previous behaviour, for benchmarks: the wrapper's own forward, full logits)
    step = T if chunk_size is None else chunk_size
    return _TokenStatsPlan(
        model=model, policy=policy, policy_split=policy_split, ref=ref, ref_context=ref_ctx, ref_split=ref_split,
        use_ref=use_ref, cached_ref_hidden=ref_hidden, input_ids=input_ids, attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask) if position_ids is None else position_ids,
        labels=input_ids[:, -T:], T=T, chunks=[slice(start, min(start + step, T)) for start in range(0, T, step)],
        temperature=temperature, chunk_size=chunk_size, track=track, with_ref_logprobs=with_ref_logprobs,
        with_exact_kl=with_exact_kl, with_entropy=with_entropy, return_ref_hidden=return_ref_hidden,
        grad_hint=grad_hint,
    )


@dataclass
class _ReferenceOutputs:
    """The reference's side of one call, computed once before the policy's chunks: either ``hidden`` ``(B, T, H)``
    (its trunk's output, cached or just computed) with its ``head`` (and ``plain_head``, its ``(weight, bias)`` when
    the fused kernel can read it directly), or, for a reference without a separable head, its full ``logits``
    ``(B, T, V)``."""

    hidden: torch.Tensor | None = None
    head: Any = None
    plain_head: tuple | None = None
    logits: torch.Tensor | None = None


def _completion_hidden(plan: _TokenStatsPlan, trunk) -> torch.Tensor:
    """``(B, T, H)``: a trunk's hidden states at the positions predicting the completion (``H ≪ V``: the cheap part
    of a causal LM, run once per call; the head is then applied per chunk)."""
    return _hidden(trunk, plan.input_ids, plan.attention_mask, plan.T, plan.position_ids)


def _run_reference(plan: _TokenStatsPlan) -> _ReferenceOutputs | None:
    """The reference's trunk once (no grad, under its context), unless the caller cached its ``(B, T, H)`` output;
    its full ``(B, T, V)`` logits when its head is not separable. None when no reference is needed."""
    if not plan.use_ref:
        return None
    with torch.no_grad(), plan.ref_context():
        if plan.ref_split is None:
            return _ReferenceOutputs(
                logits=_full_logits(plan.ref, plan.input_ids, plan.attention_mask, plan.T, plan.position_ids)
            )
        trunk, head = plan.ref_split
        hidden = plan.cached_ref_hidden if plan.cached_ref_hidden is not None else _completion_hidden(plan, trunk)
        return _ReferenceOutputs(hidden=hidden, head=head, plain_head=_plain_head(head))


def _reference_chunk_logits(plan: _TokenStatsPlan, reference: _ReferenceOutputs, s: slice) -> torch.Tensor:
    """``(B, c, V)`` reference logits of the chunk ``s`` (no grad): its head on the chunk's hidden states (under the
    reference context: a LoRA-wrapped head must be disabled too), or a slice of its full logits."""
    with torch.no_grad(), plan.ref_context():
        if reference.logits is not None:
            return reference.logits[:, s]
        return reference.head(reference.hidden[:, s].to(_device_of(reference.head))).to(plan.device)


def _chunk_stats_from_logits(
    plan: _TokenStatsPlan, reference: _ReferenceOutputs | None, logits: torch.Tensor, s: slice, owned: bool
) -> dict[str, torch.Tensor]:
    """``(B, c)`` statistics of the chunk ``s`` from the policy's ``(B, c, V)`` logits (``owned``: the kernel may
    overwrite them in place) and the reference's logits of the same chunk (``core.kl.token_stats_from_logits``). In
    grad mode the entropy is left out here: it is a metric, computed without gradient by :func:`_entropy_metric`."""
    ref_logits = _reference_chunk_logits(plan, reference, s) if reference is not None else None
    return token_stats_from_logits(
        logits, plan.labels[:, s], ref_logits, plan.temperature, with_exact_kl=plan.with_exact_kl,
        with_entropy=plan.with_entropy and not plan.track, owned=owned, ref_owned=plan.ref_split is not None,
    )


def _fused_kernel_stats(
    plan: _TokenStatsPlan, hidden: torch.Tensor, plain_head: tuple, reference: _ReferenceOutputs | None
) -> dict[str, torch.Tensor]:
    """Path (1): both heads are plain ``nn.Linear``: the fused kernel (``modeling.head_kernel``) takes the policy's
    ``(B, T, H)`` hidden states and head weights (and the reference's) and returns ``(B, T)`` statistics; no
    ``(B, c, V)`` buffer survives a chunk and a frozen head's logits are not recomputed in backward."""
    weight, bias = plain_head
    out = head_token_stats(
        hidden.to(weight.device), weight, bias, plan.labels.to(weight.device),
        ref_hidden=reference.hidden if reference is not None else None,
        ref_weight=reference.plain_head[0] if reference is not None else None,
        ref_bias=reference.plain_head[1] if reference is not None else None,
        temperature=plan.temperature, chunk_size=plan.chunk_size,
        with_ref_logprobs=plan.use_ref and plan.with_ref_logprobs, with_exact_kl=plan.with_exact_kl,
        with_entropy=plan.with_entropy, grad_hint=plan.grad_hint,
    )
    return {k: v.to(plan.device) for k, v in out.items()}


def _checkpointed_head_stats(
    plan: _TokenStatsPlan, hidden: torch.Tensor, head, reference: _ReferenceOutputs | None
) -> dict[str, list[torch.Tensor]]:
    """Path (2): a head the fused kernel cannot read (e.g. LoRA-wrapped): per chunk, the head on the ``(B, c, H)``
    hidden states then :func:`_chunk_stats_from_logits`, under activation checkpointing in grad mode (the chunk's
    ``(B, c, V)`` logits are recomputed in backward rather than kept). Returns each statistic's ``(B, c)`` pieces."""
    head_device = _device_of(head)
    # in grad mode the checkpointed function returns one tensor: the statistics stacked on a last axis, in this order
    keys = ["logprobs"] + (["ref_logprobs"] if plan.use_ref and plan.with_ref_logprobs else [])
    keys += ["exact_kl"] if plan.with_exact_kl else []

    def chunk_fn(h, start, stop):
        logits = head(h.to(head_device)).to(plan.device)
        st = _chunk_stats_from_logits(plan, reference, logits, slice(start, stop), owned=True)
        return torch.stack([st[k] for k in keys], -1) if plan.track else st

    pieces: dict[str, list] = {}
    for s in plan.chunks:
        if plan.track:
            stacked = checkpoint(chunk_fn, hidden[:, s], s.start, s.stop, use_reentrant=False)
            st = {k: stacked[..., i] for i, k in enumerate(keys)}
        else:
            st = chunk_fn(hidden[:, s], s.start, s.stop)
        for k, v in st.items():
            pieces.setdefault(k, []).append(v)
    return pieces


def _full_logits_stats(
    plan: _TokenStatsPlan, logits: torch.Tensor, reference: _ReferenceOutputs | None
) -> dict[str, list[torch.Tensor]]:
    """Path (3): the policy's own ``(B, T, V)`` logits (no separable head; documented: no memory saving for the
    policy), sliced per chunk into :func:`_chunk_stats_from_logits`. Returns each statistic's ``(B, c)`` pieces."""
    pieces: dict[str, list] = {}
    for s in plan.chunks:
        for k, v in _chunk_stats_from_logits(plan, reference, logits[:, s], s, owned=False).items():
            pieces.setdefault(k, []).append(v)
    return pieces


def _entropy_metric(plan: _TokenStatsPlan, chunk_logits: Callable[[slice], torch.Tensor]) -> torch.Tensor:
    """``(B, T)`` policy entropy in grad mode, without gradient (a metric, not a loss term): the chunks' logits
    ``chunk_logits(s)`` ``(B, c, V)`` computed again from detached inputs, one chunk at a time."""
    with torch.no_grad():
        ents = [
            token_stats_from_logits(chunk_logits(s), temperature=plan.temperature, with_entropy=True)["entropy"]
            for s in plan.chunks
        ]
        return torch.cat(ents, dim=1)


def _compute_token_stats(plan: _TokenStatsPlan) -> dict[str, torch.Tensor]:
    """The statistics of one call: the reference first (:func:`_run_reference`), then the policy through the first
    path that applies: (1) :func:`_fused_kernel_stats`, (2) :func:`_checkpointed_head_stats`, (3)
    :func:`_full_logits_stats`; the per-chunk pieces are joined into ``(B, T)`` tensors. Under a DDP/DeepSpeed
    wrapper in grad mode this runs as the wrapper's forward (:func:`_token_stats`)."""
    reference = _run_reference(plan)
    if plan.policy_split is None:
        # the model's forward: under a wrapper in grad mode the wrapper's own (its hooks run around it)
        logits = _full_logits(
            plan.model if plan.track else plan.policy, plan.input_ids, plan.attention_mask, plan.T, plan.position_ids
        )
        pieces = _full_logits_stats(plan, logits, reference)

        def chunk_logits_again(s: slice) -> torch.Tensor:  # (B, c, V), for the entropy metric
            return logits[:, s].detach()
    else:
        trunk, head = plan.policy_split
        hidden = _completion_hidden(plan, trunk)
        plain_head = _plain_head(head)
        ref_readable = reference is None or reference.plain_head is not None
        if _FUSED_HEAD and plain_head is not None and ref_readable:
            out = _fused_kernel_stats(plan, hidden, plain_head, reference)
            if plan.return_ref_hidden and reference is not None:
                out["ref_hidden"] = reference.hidden
            return out
        pieces = _checkpointed_head_stats(plan, hidden, head, reference)
        head_device = _device_of(head)

        def chunk_logits_again(s: slice) -> torch.Tensor:  # (B, c, V), for the entropy metric
            return head(hidden[:, s].detach().to(head_device)).to(plan.device)
    # ref_logprobs come with the exact KL's reference logits; returned only when asked for
    out = {k: torch.cat(v, dim=1) for k, v in pieces.items() if k != "ref_logprobs" or plan.with_ref_logprobs}
    if plan.with_entropy and plan.track:
        out["entropy"] = _entropy_metric(plan, chunk_logits_again)
    if plan.return_ref_hidden and reference is not None and reference.hidden is not None:
        out["ref_hidden"] = reference.hidden
    return out


def _token_stats(
    model,
    ref_model,
    input_ids,
    attention_mask,
    logits_to_keep,
    temperature,
    chunk_size,
    with_ref_logprobs: bool,
    with_exact_kl: bool,
    with_entropy: bool,
    reference_context,
    caller: str,
    ref_hidden: torch.Tensor | None = None,
    return_ref_hidden: bool = False,
    position_ids: torch.Tensor | None = None,
    grad_hint=None,
) -> dict[str, torch.Tensor]:
    """The one driver of the chunked statistics, in grad mode (update) or not (rollout); see the callers.

    Paths, in order of preference: (1) trunk -> (B, T, H) hidden, then the fused head kernel
    (``modeling.head_kernel``) when the heads are plain ``nn.Linear``; (2) trunk + head per chunk under activation
    checkpointing (a LoRA-wrapped or otherwise non-plain head); (3) the model's own (B, T, V) logits (no separable
    head). Under a DDP/DeepSpeed wrapper in grad mode, (1) and (2) run INSIDE the wrapper's forward.
    ``ref_hidden``: the reference trunk's cached ``(B, T, H)`` output (:func:`reference_hidden_states`): its trunk
    is then not run. ``position_ids``: ``(B, L)`` (default: from the mask, as generation counts them).

    Read top to bottom: :func:`_plan_token_stats` (checks, modules) -> :func:`_compute_token_stats` (reference,
    then the policy's path) -> :func:`_fused_kernel_stats` / :func:`_checkpointed_head_stats` /
    :func:`_full_logits_stats`.
    """
    plan = _plan_token_stats(
        model, ref_model, input_ids, attention_mask, logits_to_keep, temperature, chunk_size, with_ref_logprobs,
        with_exact_kl, with_entropy, reference_context, caller, ref_hidden, return_ref_hidden, position_ids, grad_hint,
    )
    if plan.runs_inside_wrapper:
        # With gradients, a DDP/DeepSpeed wrapper's own forward must run (its hooks synchronise gradients): the trunk
        # and the chunked head run inside it, so no (B, T, V) tensor exists there either.
        return _inside_wrapper(model, plan.policy, lambda: _compute_token_stats(plan))
    return _compute_token_stats(plan)


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
    ref_hidden: torch.Tensor | None = None,
    return_ref_hidden: bool = False,
    position_ids: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Log-probs, reference log-probs, exact KL and entropy of the completion tokens (no gradients).

    Args:
        model: the policy (``PreTrainedModel``, ``PeftModel`` or a DDP/DeepSpeed wrapper of either).
        ref_model: the reference model; ``None`` with a PEFT ``model`` means "the same model with the adapter
            disabled" (no second copy); ``None`` with a plain model computes policy statistics only
            (``with_exact_kl`` must then be False).
        input_ids, attention_mask: ``(B, L)`` prompt + completion.
        logits_to_keep: ``T``, the number of completion tokens at the end of ``input_ids``.
        temperature: sampling temperature (logits are divided by it).
        chunk_size: positions per head application (``None``: all ``T`` at once).
        with_exact_kl: compute the exact per-token KL(π‖π_ref) = Σ_v π(v)(log π(v) − log π_ref(v)).
        with_entropy: compute the policy's per-token entropy.
        reference_context: optional zero-argument callable returning a context manager under which the
            reference runs: the PEFT ``model`` itself when ``ref_model`` is None (default:
            ``trl_extras.modeling.reference_context(model)``: the ``"ref"`` adapter if any, else the adapter
            disabled).
        ref_hidden: the reference trunk's ``(B, T, H)`` output if already computed (:func:`reference_hidden_states`).
        return_ref_hidden: also return ``ref_hidden`` (the reference trunk's ``(B, T, H)`` output this call
            computed), for the update to reuse (``policy_logprobs(ref_hidden=...)``).
        position_ids: ``(B, L)`` (default: from ``attention_mask``, as generation counts them).

    Returns:
        dict of ``(B, T)`` float32 tensors: ``logprobs`` (always), ``ref_logprobs`` (when there is a reference),
        ``exact_kl`` (when ``with_exact_kl``), ``entropy`` (when ``with_entropy``). Values at padded completion
        positions are computed like any other (mask them downstream).

    Same numbers, bit for bit, as :func:`policy_logprobs` on the same inputs (same trunk/head path, same chunks,
    same kernel), so the PPO ratio is exactly 1 at the first update when both run in the same autocast/mode.
    """
    with torch.no_grad():
        return _token_stats(
            model, ref_model, input_ids, attention_mask, logits_to_keep, temperature, chunk_size,
            with_ref_logprobs=True, with_exact_kl=with_exact_kl, with_entropy=with_entropy,
            reference_context=reference_context, caller="completion_token_stats", ref_hidden=ref_hidden,
            return_ref_hidden=return_ref_hidden, position_ids=position_ids,
        )


@torch.no_grad()
def completion_entropies(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_length: int,
    batch_size: int = 64,
    temperature: float = 1.0,
    chunk_size: int | None = 64,
) -> torch.Tensor:
    """Per-token entropy ``(B, T)`` of the model's next-token distribution at the last ``T`` positions.

    The same chunked pass as :func:`completion_token_stats` (position ids from the mask as in generation, no
    ``(B, T, V)`` logits, no reference), in eval mode (dropout off), ``batch_size`` rows at a time.

    Args:
        model: a causal LM (PEFT allowed: the adapter stays active).
        input_ids, attention_mask: ``(B, P + T)`` left-padded prompt then completion (``Rollout.input_ids``).
        completion_length: ``T``; entry ``[b, t]`` is the entropy of the distribution that produced completion
            token ``t``.
        temperature: logits are divided by it (1.0 = the model's own distribution).
    """
    T = int(completion_length)
    module = _unwrap(model)
    was_training = module.training
    module.eval()
    out = []
    try:
        for start in range(0, input_ids.size(0), batch_size):
            ids = input_ids[start : start + batch_size].to(_device_of(module))
            mask = attention_mask[start : start + batch_size].to(ids.device)
            stats = _token_stats(
                module, None, ids, mask, T, temperature, chunk_size, with_ref_logprobs=False, with_exact_kl=False,
                with_entropy=True, reference_context=None, caller="completion_entropies",
            )
            out.append(stats["entropy"].float().cpu())
    finally:
        if was_training:
            module.train()
    return torch.cat(out) if out else torch.zeros(0, T)


def policy_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    logits_to_keep: int,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    with_entropy: bool = False,
    ref_model=None,
    with_exact_kl: bool = False,
    reference_context=None,
    with_ref_logprobs: bool = False,
    ref_hidden: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    grad_hint=None,
) -> dict[str, torch.Tensor]:
    """Log-probs (optionally the exact KL to the reference, and the entropy) of the completion tokens WITH
    gradients, for the policy update.

    Args:
        model: the policy (possibly PEFT- or DDP/DeepSpeed-wrapped).
        input_ids, attention_mask: ``(B, L)``; logits_to_keep: ``T`` completion tokens at the end.
        temperature: sampling temperature.
        chunk_size: positions per chunk (``None``: all ``T`` at once). A model with a separable head goes through
            trunk + head, chunk by chunk, so only ``(B, chunk, V)`` logits exist at a time: a plain ``nn.Linear``
            head through the fused kernel (``modeling.head_kernel``: no logits recomputed in backward when the head
            is frozen), another head under activation checkpointing. A DDP/DeepSpeed wrapper runs this inside its
            own forward (gradients synchronise). Only a model without a separable head builds ``(B, T, V)`` logits.
        with_entropy: also return the entropy (computed under no_grad: a metric, not a loss term).
        ref_model, reference_context: the reference, as in :func:`completion_token_stats` (needed only with
            ``with_exact_kl``); its trunk runs once under no_grad and its head per chunk (recomputed in backward).
        with_exact_kl: also return ``exact_kl`` = KL(π(·|s_t)‖π_ref(·|s_t)) with its gradient w.r.t. the policy
            (the direct term of the KL gradient, Amini et al. 2025), in the same chunked pass as the log-probs.
        with_ref_logprobs: also return ``ref_logprobs``, the sampled tokens' log-probs under the reference (no
            gradient; for an update that also computes the rollout's statistics, e.g. PPO's single on-policy pass).
        ref_hidden: the reference trunk's ``(B, T, H)`` output cached at rollout (:func:`reference_hidden_states`,
            ``completion_token_stats(return_ref_hidden=True)``): the reference trunk then does not run here, only
            its head per chunk.
        position_ids: ``(B, L)`` position ids (default: from ``attention_mask``, as generation counts them; TRL's
            GRPO forward uses ``0 … L−1``).
        grad_hint: how the loss will depend on each position's log-prob and KL (``core.ppo.surrogate_grad_hint``):
            the fused kernel then projects one combined gradient per chunk instead of two (checked in backward;
            a wrong hint costs a recompute, never correctness). See ``modeling.head_kernel.head_token_stats``.

    Returns:
        dict of ``(B, T)`` float32: ``logprobs`` (requires grad when the model has trainable parameters),
        ``exact_kl``, ``ref_logprobs`` and ``entropy`` when requested.
    """
    with torch.enable_grad():
        return _token_stats(
            model, ref_model, input_ids, attention_mask, logits_to_keep, temperature, chunk_size,
            with_ref_logprobs=with_ref_logprobs, with_exact_kl=with_exact_kl, with_entropy=with_entropy,
            reference_context=reference_context, caller="policy_logprobs", ref_hidden=ref_hidden,
            position_ids=position_ids, grad_hint=grad_hint,
        )


def exact_kl_to_reference(
    model,
    ref_model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    logits_to_keep: int,
    temperature: float = 1.0,
    chunk_size: int | None = 64,
    reference_context=None,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exact per-token KL(π‖π_ref) of the completion positions WITH gradients for the policy (a loss term).

    :func:`policy_logprobs` with ``with_exact_kl=True``: the policy trunk runs once (with grad), the reference trunk
    once (no grad), then per chunk of positions ``Σ_v π(v)(log π(v) − log π_ref(v))`` under activation
    checkpointing, so only ``(B, chunk, V)`` logits of each model exist at a time, in forward and in backward.

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
    return policy_logprobs(
        model, input_ids, attention_mask, logits_to_keep, temperature=temperature, chunk_size=chunk_size,
        ref_model=ref_model, with_exact_kl=True, reference_context=reference_context, position_ids=position_ids,
    )["exact_kl"]
