"""K LoRA adapters on one frozen base: run the shared trunk once and only the K adapted tails K times.

Also the pooling index transformers' ``*ForSequenceClassification`` uses (the rightmost non-pad token)."""

from __future__ import annotations

import torch

# --------------------------------------------------------------------------------------------------------------
# Tokenization and pooling shared by both layouts
# --------------------------------------------------------------------------------------------------------------


def last_non_pad_index(input_ids: torch.Tensor, pad_token_id: int | None) -> torch.Tensor:
    """``(B,)`` index of the rightmost non-pad token of ``input_ids`` ``(B, T)`` — the position
    transformers' ``*ForSequenceClassification`` pools at (``-1`` → ``T − 1`` when there is no pad id)."""
    if pad_token_id is None:
        return torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, dtype=torch.long, device=input_ids.device)
    non_pad = (input_ids != pad_token_id).to(torch.long)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    return (positions * non_pad).argmax(-1)



# --------------------------------------------------------------------------------------------------------------
# K LoRA adapters on one base: fast "trunk once, K tails" scoring
# --------------------------------------------------------------------------------------------------------------


def _decoder_and_head(peft_model):
    """The inner decoder (module with ``.layers``) and score head of a PEFT sequence-classification model."""
    base = peft_model.get_base_model()
    inner = getattr(base, getattr(base, "base_model_prefix", "model"), None)
    layers = getattr(inner, "layers", None)
    head = getattr(base, "score", None)
    if not isinstance(layers, torch.nn.ModuleList) or head is None:
        return None, None, None
    return inner, layers, head


def lora_tail_start(peft_model, adapter_names: list[str]) -> int | None:
    """First decoder layer any adapter touches, when every LoRA module sits in ``layers[start:]`` (plus the score
    head); ``None`` when the layout does not allow running the trunk once (adapters on embeddings or early
    layers, non-LoRA tuners, mixed attention layer types, unknown architecture)."""
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    if any(str(getattr(peft_model.peft_config[n], "peft_type", "")).split(".")[-1] != "LORA" for n in adapter_names):
        return None
    inner, layers, head = _decoder_and_head(peft_model)
    if inner is None:
        return None
    # Models mixing sliding-window and full attention index per-layer mask types by position: not safe to split.
    layer_types = getattr(peft_model.get_base_model().config.get_text_config(), "layer_types", None)
    if layer_types and len(set(layer_types)) > 1:
        return None
    layer_of = {id(m): i for i, layer in enumerate(layers) for m in layer.modules()}
    head_modules = {id(m) for m in head.modules()}
    start = len(layers)
    for module in peft_model.modules():
        if isinstance(module, LoraLayer):
            if id(module) not in layer_of:
                return None
            start = min(start, layer_of[id(module)])
        elif isinstance(module, ModulesToSaveWrapper) and id(module) not in head_modules:
            return None
    return start if 0 < start < len(layers) else None


@torch.no_grad()
def lora_tail_scores(
    peft_model, adapter_names, input_ids, attention_mask, tail_start: int, pad_token_id
) -> torch.Tensor:
    """``(K, B)`` scores of K adapters: the frozen layers ``[0, tail_start)`` run once, each adapter's layers
    ``[tail_start, L)`` + final norm + its score head run once per adapter.

    Relies on the decoder accepting ``inputs_embeds`` and iterating ``self.layers`` (true of Llama-family models);
    positions default to ``arange(T)`` in both halves, as in the single full pass on right-padded input.
    """
    inner, layers, head = _decoder_and_head(peft_model)
    all_layers = list(layers)
    captured = {}

    def keep_output(module, args, output):
        captured["hidden"] = output[0] if isinstance(output, tuple) else output

    hook = all_layers[tail_start - 1].register_forward_hook(keep_output)
    previous = peft_model.active_adapter
    try:
        inner.layers = torch.nn.ModuleList(all_layers[:tail_start])
        inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        hook.remove()
        hidden = captured["hidden"]
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        pooled_at = last_non_pad_index(input_ids, pad_token_id)
        inner.layers = torch.nn.ModuleList(all_layers[tail_start:])
        scores = []
        for name in adapter_names:
            peft_model.set_adapter(name)
            out = inner(inputs_embeds=hidden, attention_mask=attention_mask, use_cache=False).last_hidden_state
            scores.append(head(out[rows, pooled_at])[:, 0].float())
    finally:
        hook.remove()
        inner.layers = layers
        peft_model.set_adapter(previous)
    return torch.stack(scores)


@torch.no_grad()
def lora_full_pass_scores(peft_model, adapter_names, input_ids, attention_mask) -> torch.Tensor:
    """``(K, B)`` scores of K adapters by K complete forward passes (the reference the fast path must match)."""
    previous = peft_model.active_adapter
    try:
        scores = []
        for name in adapter_names:
            peft_model.set_adapter(name)
            scores.append(peft_model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float())
    finally:
        peft_model.set_adapter(previous)
    return torch.stack(scores)

