"""Warnings for prompts a chat model will not answer: plain-text prompts with a chat template, empty completions.

TRL's convention stays: plain-text prompts are tokenized as they are (no chat template), conversational prompts
(``[{"role": "user", "content": ...}]``) go through the template. A chat-tuned model given a bare string often
answers with its end-of-turn token at once, so every completion is empty, a reward model may still score the empty
answer well, and the trainer optimises silence without an error (seen with SmolLM2-135M-Instruct: mean completion
length 1 token, reward 0.70). Two checks catch it:

- at construction, :func:`plain_prompts_to_chat_model_message`: the tokenizer has a chat template, the prompts are
  plain text, and (where the model can be run cheaply) the model's most likely first token on a few of those prompts
  is EOS. The probe keeps the warning off models trained on plain text whose tokenizer also carries a template
  (the testbed's tokenizer has one for its conversational variant);
- during training, :class:`ShortCompletionWarning`: once, when a rollout's mean completion length is <= 1 token
  (EOS at once, whatever the cause).
"""

from __future__ import annotations

import logging

import torch

from .generation import is_conversational_prompt

logger = logging.getLogger(__name__)

#: prompts probed at construction (one batched forward)
NUM_PROBE_PROMPTS = 4


def has_chat_template(tokenizer) -> bool:
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    return bool(getattr(tokenizer, "chat_template", None))


def _eos_ids(tokenizer, model) -> set[int]:
    ids = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        eos = getattr(source, "eos_token_id", None)
        ids.update(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    return ids


def _can_probe(model) -> bool:
    """A forward now is cheap and safe: a loaded, unpartitioned model (not ZeRO-3 shards or meta tensors)."""
    params = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
    return bool(params) and not any(hasattr(p, "ds_id") or p.device.type == "meta" for p in params)


@torch.no_grad()
def eos_first_fraction(model, tokenizer, prompts: list[str]) -> float:
    """Fraction of ``prompts`` (plain strings, tokenized as TRL does: no template) whose most likely next token
    under ``model`` is an EOS token. One left-padded batched forward."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    eos = _eos_ids(tokenizer, model)
    if not prompts or not eos:
        return 0.0
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    width = max(len(i) for i in ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
    input_ids = torch.tensor([[pad] * (width - len(i)) + i for i in ids])
    attention_mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits[:, -1]
    finally:
        model.train(was_training)
    first = logits.argmax(-1).tolist()
    return sum(t in eos for t in first) / len(first)


def plain_prompts_to_chat_model_message(model, tokenizer, prompts, trainer: str) -> str | None:
    """The construction-time warning for ``trainer`` (its name, for the message), or ``None``.

    Args:
        model: the policy (probed when :func:`_can_probe`; otherwise the warning relies on the template alone).
        tokenizer: its tokenizer or processor.
        prompts: a sample of the dataset's ``prompt`` column (the first :data:`NUM_PROBE_PROMPTS` are probed).
    """
    prompts = [p for p in list(prompts)[:NUM_PROBE_PROMPTS] if p is not None]
    if not prompts or not has_chat_template(tokenizer) or any(is_conversational_prompt(p) for p in prompts):
        return None
    probed = _can_probe(model)
    if probed:
        try:
            fraction = eos_first_fraction(model, tokenizer, [str(p) for p in prompts])
        except Exception as err:  # a probe must never break construction: fall back to the template test
            logger.debug("plain-prompt probe failed: %s", err)
            probed = False
    if probed and fraction < 0.5:
        return None  # the model continues plain text: it was trained on it, whatever its tokenizer carries
    evidence = (
        f"the model's most likely first token is EOS on {fraction:.0%} of the first {len(prompts)} prompts"
        if probed else "a chat model usually answers a bare string with its end-of-turn token"
    )
    return (
        f"{trainer}: the prompts are plain text but the tokenizer has a chat template; plain text is tokenized as it "
        f"is, without the template (TRL's convention), and {evidence}: completions may be empty and the reward "
        "would then train the model to stay silent. For a chat model pass conversational prompts "
        "([{'role': 'user', 'content': prompt}]), which get the template."
    )


class ShortCompletionWarning:
    """Warns once (per trainer) when a rollout's mean completion length is <= 1 token: EOS at once, so the
    completions are empty and the rewards score silence. Call :meth:`check` with each rollout's global mean."""

    def __init__(self, trainer: str):
        self.trainer = trainer
        self.warned = False

    def check(self, mean_length: float, chat_template: bool = False) -> bool:
        """Warn (once) when ``mean_length`` <= 1; returns whether this call warned."""
        if self.warned or mean_length > 1.0:
            return False
        self.warned = True
        hint = (
            " The tokenizer has a chat template: if the prompts are plain text, pass them as conversational "
            "messages so the template is applied."
            if chat_template else ""
        )
        logger.warning(
            "%s: the mean completion length of this rollout is %.2f token(s): the model ends its answer at once "
            "(EOS), so completions are empty and the reward scores silence (warned once).%s",
            self.trainer, mean_length, hint,
        )
        return True
