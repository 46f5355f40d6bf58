"""The reference policy of KL-regularised RL: the policy as it was when training started.

One resolver, shared by ``PPOTrainer`` and ``ExactKLGRPOTrainer`` (:func:`resolve_reference`):

- a plain (non-PEFT) policy: a frozen copy (built by the caller: loaded from the policy's path or deep-copied);
- a PEFT policy whose active adapter is the identity (a fresh LoRA: every ``lora_B`` is zero, as after
  ``get_peft_model(model, peft_config)``): the same model with its adapter disabled. No copy is needed, because
  base == initial policy;
- a PEFT policy whose adapter already changes the model (an SFT'd LoRA passed as a ``PeftModel``, a PiSSA/OLoRA or
  non-zero initialisation, DoRA, trained ``modules_to_save``...): a frozen copy of the starting adapter, loaded as a
  second adapter named ``"ref"`` on the same ``PeftModel`` (TRL's GRPOTrainer does the same for ``beta != 0``). The
  base with the adapter disabled would be a different model: KL would not start at 0.

:func:`reference_context` is the single switch that turns a PEFT policy into its reference for a forward pass: the
``"ref"`` adapter when there is one, else the adapter disabled. ``modeling.lm``'s chunked statistics enter it whenever
the reference lives inside the policy (``ref_model=None``).
"""

from __future__ import annotations

from contextlib import contextmanager

from .peft import is_peft_model

REFERENCE_ADAPTER = "ref"

# Parameters of a LoRA adapter whose zero value makes the adapter the identity (B = 0 => ΔW = BA = 0)
_LORA_ZERO_MEANS_OFF = ("lora_B", "lora_embedding_B")
# Parameters that do not change the output while every B is zero
_LORA_FREE_WHEN_B_ZERO = ("lora_A", "lora_embedding_A")


def adapter_is_identity(model, adapter_name: str | None = None) -> bool:
    """Whether the PEFT ``model``'s adapter (default: the active one) leaves the base model's output unchanged.

    True only when that is certain: a LoRA adapter whose every ``lora_B`` / ``lora_embedding_B`` is exactly zero and
    which has nothing else (no DoRA magnitude, no ``modules_to_save`` copy, no trainable tokens). Everything else
    (other PEFT types, DeepSpeed-partitioned weights) answers False, which costs one adapter copy, never
    correctness.
    """
    if not is_peft_model(model):
        raise ValueError(f"adapter_is_identity needs a peft.PeftModel, got {type(model).__name__}.")
    name = adapter_name or model.active_adapter
    config = model.peft_config[name]
    if str(getattr(config, "peft_type", "")).split(".")[-1] != "LORA":
        return False
    found_b = False
    for param_name, param in model.named_parameters():
        parts = param_name.split(".")
        if name not in parts:
            continue
        kind = parts[parts.index(name) - 1] if parts.index(name) > 0 else ""
        if hasattr(param, "ds_id"):  # partitioned by DeepSpeed ZeRO-3: values not visible here
            return False
        if kind in _LORA_ZERO_MEANS_OFF:
            found_b = True
            if bool(param.detach().ne(0).any()):
                return False
        elif kind not in _LORA_FREE_WHEN_B_ZERO:
            return False
    return found_b


@contextmanager
def reference_adapter_hidden(model):
    """Inside the block a PEFT ``model``'s frozen ``"ref"`` adapter is not in ``model.peft_config``, so
    ``save_pretrained`` (which saves every configured adapter by default) writes the user's adapter only. The trainers
    save their checkpoints and ``save_model`` through it; the model's own ``save_pretrained`` is left as PEFT made it
    (it saves every adapter, ``"ref"`` included, unless given ``selected_adapters``). Anything else: a no-op."""
    config = getattr(model, "peft_config", None)
    if not is_peft_model(model) or not isinstance(config, dict) or REFERENCE_ADAPTER not in config:
        yield model
        return
    ref = config.pop(REFERENCE_ADAPTER)
    try:
        yield model
    finally:
        config[REFERENCE_ADAPTER] = ref


def add_reference_adapter(model) -> None:
    """Keep a frozen copy of the PEFT ``model``'s active adapter as a second adapter named ``"ref"``.

    The copy has the active adapter's config and weights (every parameter named ``.<active>.`` copied to
    ``.ref.``), ``requires_grad=False`` (not trained, not counted by ``print_trainable_parameters``, not in any
    optimizer built afterwards). The trainers' checkpoints and ``save_model`` leave it out
    (:func:`reference_adapter_hidden`); ``model.save_pretrained`` is PEFT's own and saves every adapter unless given
    ``selected_adapters``. The active adapter and every ``requires_grad`` flag
    are as before. An existing ``"ref"`` adapter is kept (and frozen): it is taken to be the reference already.
    """
    import torch

    if not is_peft_model(model):
        raise ValueError(f"add_reference_adapter needs a peft.PeftModel, got {type(model).__name__}.")
    active = model.active_adapter
    if active == REFERENCE_ADAPTER:
        raise ValueError(f"The policy's active adapter is named {REFERENCE_ADAPTER!r}, the name kept for the reference.")
    if REFERENCE_ADAPTER not in model.peft_config:
        config = model.peft_config[active]
        if config.is_prompt_learning:
            raise NotImplementedError(
                f"A reference copy of a {config.peft_type} adapter is not supported: pass `ref_model` explicitly."
            )
        flags = {name: p.requires_grad for name, p in model.named_parameters()}
        model.add_adapter(REFERENCE_ADAPTER, config)
        params = dict(model.named_parameters())
        copied = 0
        with torch.no_grad():
            for name, param in params.items():
                if f".{active}." in f".{name}.":
                    target = f".{name}.".replace(f".{active}.", f".{REFERENCE_ADAPTER}.", 1)[1:-1]
                    if target not in params:
                        raise RuntimeError(f"Reference adapter: no copy of {name} (expected {target}).")
                    params[target].copy_(param)
                    copied += 1
        if copied == 0:
            raise RuntimeError(f"Reference adapter: adapter {active!r} has no parameters to copy.")
        model.set_adapter(active)
        for name, param in model.named_parameters():
            if name in flags:
                param.requires_grad_(flags[name])
    for name, param in model.named_parameters():
        if f".{REFERENCE_ADAPTER}." in f".{name}.":
            param.requires_grad_(False)


def has_reference_adapter(model) -> bool:
    return is_peft_model(model) and REFERENCE_ADAPTER in model.peft_config


@contextmanager
def reference_context(model):
    """Inside the block the PEFT ``model`` computes the reference policy (no grad is implied: wrap in ``no_grad``).

    With a ``"ref"`` adapter (see :func:`add_reference_adapter`) that adapter is active; otherwise the adapter is
    disabled. On exit the previously active adapter is back, and every parameter's ``requires_grad`` is exactly as
    it was (PEFT's ``set_adapter`` / ``disable_adapter`` re-enable gradients on the active adapter, which would
    undo a freeze such as PPO's value warm-up).
    """
    if not is_peft_model(model):
        raise ValueError(
            f"reference_context needs a peft.PeftModel (the reference lives inside it), got {type(model).__name__}: "
            "pass the reference model explicitly."
        )
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        if REFERENCE_ADAPTER in model.peft_config:
            previous = model.active_adapter
            model.set_adapter(REFERENCE_ADAPTER, inference_mode=True)
            try:
                yield model
            finally:
                model.set_adapter(previous)
        else:
            with model.disable_adapter():
                yield model
    finally:
        for p, flag in flags:
            if p.requires_grad != flag:
                p.requires_grad_(flag)


def resolve_reference(model, ref_model=None, *, make_copy=None):
    """The reference of ``model`` (see the module docstring); returns the separate reference model or ``None``.

    Args:
        model: the policy as given to the trainer (a ``PreTrainedModel`` or a ``PeftModel``, not yet wrapped).
        ref_model: an explicit reference (frozen and returned as is).
        make_copy: zero-argument callable building a copy of a plain policy (e.g. loading it from its path).

    Returns:
        A frozen model in eval mode, or ``None`` when the reference lives inside the PEFT ``model`` (then
        :func:`reference_context` selects it: the ``"ref"`` adapter added here when the starting adapter is not
        the identity, else the adapter disabled).
    """
    if ref_model is None and is_peft_model(model):
        if has_reference_adapter(model) or not adapter_is_identity(model):
            add_reference_adapter(model)  # (an existing "ref" adapter is only frozen and hidden from saving)
        return None
    if ref_model is None:
        if make_copy is None:
            raise ValueError("resolve_reference: a plain policy needs `make_copy` (or pass `ref_model`).")
        ref_model = make_copy()
    ref_model.requires_grad_(False)
    ref_model.eval()
    return ref_model
