"""The one generation path shared by PPO, CEM, the reward early-stopping callback, side-by-side evaluation,
synthetic preference pairs and the pipeline's evaluation.

``generate_rollouts`` takes prompts as TRL datasets hold them (standard strings or conversational message lists),
tokenizes them the way TRL's GRPO does (chat template with ``add_generation_prompt`` for conversational,
the tokenizer's own special tokens for text), left-pads, samples in batches and returns token tensors for
training plus decoded completions for reward functions.

Samples come from ``softmax(logits / temperature)`` and nothing else: :func:`sampling_generation_config` builds a
complete ``GenerationConfig`` (every logits processor off unless asked for), and the checkpoint's own
``generation_config`` (e.g. Qwen2.5-Instruct's ``top_k=20, top_p=0.8, repetition_penalty=1.05``) is hidden from
``generate`` for the duration of the call (transformers fills every ``None`` field from it, and several processors
have no "off" value other than ``None``). PPO's old log-probs, ratio, exact KL and entropy all assume this
distribution.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

from .quantization import keep_4bit_layers_differentiable

logger = logging.getLogger(__name__)
_warned_truncation = False


def is_conversational_prompt(prompt) -> bool:
    return isinstance(prompt, list) and len(prompt) > 0 and isinstance(prompt[0], dict) and "role" in prompt[0]


def prompt_text(prompt) -> str:
    """Content of a prompt, for checks and messages (the last message for conversational prompts)."""
    return prompt[-1].get("content", "") if is_conversational_prompt(prompt) else prompt


def ensure_pad_token(tokenizer):
    """Use EOS as the pad token when the tokenizer has none (documented behaviour, as in TRL)."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError("The tokenizer has neither a pad token nor an EOS token; set `tokenizer.pad_token`.")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_chat_template(tokenizer, prompts) -> None:
    """Fail early (at construction) when conversational prompts meet a tokenizer without a chat template."""
    if prompts and is_conversational_prompt(prompts[0]) and not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "The dataset is conversational but the tokenizer has no chat template. Set `tokenizer.chat_template` "
            "(or use `trl.clone_chat_template`) or pass prompts as plain text."
        )


def tokenize_prompts(tokenizer, prompts, max_prompt_length: int | None = None) -> list[list[int]]:
    """Token ids of each prompt; prompts longer than ``max_prompt_length`` keep their last tokens (warns once)."""
    global _warned_truncation
    check_chat_template(tokenizer, prompts)
    out = []
    for i, prompt in enumerate(prompts):
        if prompt is None or (not is_conversational_prompt(prompt) and not str(prompt).strip()):
            raise ValueError(f"Prompt at index {i} is empty.")
        if is_conversational_prompt(prompt):
            ids = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=True)
            ids = ids["input_ids"]
        else:
            ids = tokenizer(prompt)["input_ids"]
        if max_prompt_length is not None and len(ids) > max_prompt_length:
            if not _warned_truncation:
                logger.warning(
                    "Prompt of %d tokens truncated from the left to max_prompt_length=%d (warned once).",
                    len(ids), max_prompt_length,
                )
                _warned_truncation = True
            ids = ids[-max_prompt_length:]
        out.append(list(ids))
    return out


def pad_sequences(seqs: list[list[int]] | list[torch.Tensor], pad_value: int, side: str = "right") -> torch.Tensor:
    """Stack variable-length 1-D sequences into ``(N, L_max)``, padding on ``side``."""
    seqs = [torch.as_tensor(s, dtype=torch.long) for s in seqs]
    length = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), length), pad_value, dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            if side == "right":
                out[i, : len(s)] = s
            else:
                out[i, length - len(s) :] = s
    return out


@dataclass
class Rollout:
    """Sampled completions for a batch of prompts. ``B`` = prompts × generations per prompt.

    Attributes:
        prompts: ``B`` prompts as given (each repeated ``num_generations`` times, consecutively).
        completions: ``B`` decoded completions (strings, or ``[{"role": "assistant", "content": ...}]``).
        prompt_ids, prompt_mask: ``(B, P)`` left-padded prompt tokens.
        completion_ids, completion_mask: ``(B, T)`` right-padded sampled tokens; the mask is 1 up to and
            including the first EOS and 0 after it.
        is_eos: ``(B,)`` True where the completion ended with EOS (False when cut at ``max_new_tokens``).
        group_index: ``(B,)`` index of the prompt each row came from.
    """

    prompts: list
    completions: list
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    is_eos: torch.Tensor
    group_index: torch.Tensor

    @property
    def input_ids(self) -> torch.Tensor:
        """``(B, P + T)`` prompt and completion tokens."""
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)

    @property
    def completion_lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(1)

    def __len__(self) -> int:
        return len(self.completions)


def completion_mask_after_eos(completion_ids: torch.Tensor, eos_token_id: int | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mask, is_eos)`` for ``(B, T)`` ids: mask is 1 up to and including the first EOS. Shapes ``(B,T)``, ``(B,)``."""
    eos_ids = eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id]
    is_eos_tok = torch.zeros_like(completion_ids, dtype=torch.bool)
    for e in eos_ids:
        is_eos_tok |= completion_ids == e
    has_eos = is_eos_tok.any(1)
    T = completion_ids.size(1)
    first = torch.where(has_eos, is_eos_tok.int().argmax(1), torch.full_like(has_eos, T, dtype=torch.long))
    positions = torch.arange(T, device=completion_ids.device).unsqueeze(0)
    return (positions <= first.unsqueeze(1)).long(), has_eos


def decode_completions(tokenizer, completion_ids, completion_mask, conversational: bool) -> list:
    texts = tokenizer.batch_decode(
        [ids[m.bool()] for ids, m in zip(completion_ids, completion_mask)], skip_special_tokens=True
    )
    return [[{"role": "assistant", "content": t}] for t in texts] if conversational else texts


# Values that switch each logits processor / warper of ``GenerationMixin._get_logits_processor`` (transformers 5.24)
# off. Fields whose only "off" value is ``None`` (min_p, top_h, suppress_tokens, forced_bos_token_id, ...) are listed
# too, but ``None`` is what transformers fills from the checkpoint: :func:`checkpoint_generation_config_hidden` is
# what keeps them off.
_NEUTRAL_IN_EVERY_MODE = {
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "min_length": 0,
    "min_new_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "remove_invalid_values": False,
    "exponential_decay_length_penalty": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "sequence_bias": None,
    "guidance_scale": None,
    "watermarking_config": None,
    "renormalize_logits": False,
    "stop_strings": None,
    "max_time": None,
    # one sequence per row, no beams, no contrastive search / DoLa / assisted decoding
    "num_beams": 1,
    "num_return_sequences": 1,
    "length_penalty": 1.0,
    "early_stopping": False,
    "penalty_alpha": None,
    "dola_layers": None,
    "diversity_penalty": None,
    "num_beam_groups": None,
    "prompt_lookup_num_tokens": None,
    "token_healing": False,
    "output_scores": False,
    "output_logits": False,
    "return_dict_in_generate": False,
}
# warpers applied only when sampling (`if generation_config.do_sample:` in `_get_logits_processor`)
_NEUTRAL_WHEN_SAMPLING = {
    "top_k": 0,  # `top_k is not None and top_k != 0` enables TopK; None would be filled from the checkpoint (or 50)
    "top_p": 1.0,
    "min_p": None,
    "top_h": None,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
}


def sampling_generation_config(
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    do_sample: bool = True,
    top_k: int | None = None,
    top_p: float | None = None,
    pad_token_id: int | None = None,
    eos_token_id: int | list[int] | None = None,
    bos_token_id: int | None = None,
    **overrides,
):
    """A complete ``transformers.GenerationConfig`` that samples from ``softmax(logits / temperature)`` exactly.

    Every field that ``GenerationMixin._get_logits_processor`` turns into a logits processor or warper is set to its
    "off" value (``top_k=0``, ``top_p=1``, ``min_p=None``, ``typical_p=1``, ``repetition_penalty=1``,
    ``no_repeat_ngram_size=0``, ``min_new_tokens=0``, no suppressed / forced / biased tokens, no watermark, no
    guidance, one beam), so that the distribution sampled from is the one PPO's log-probs assume. transformers 5.24
    still fills fields left at ``None`` from the model's ``generation_config`` and then from its global defaults
    (``top_k=50``): generate with :func:`checkpoint_generation_config_hidden` around the call (as
    :func:`generate_rollouts` does) so that nothing comes from the checkpoint.

    Args:
        max_new_tokens: tokens to sample at most.
        temperature: sampling temperature; ``0`` means greedy decoding (``do_sample=False``).
        do_sample: ``False`` for greedy decoding.
        top_k, top_p: explicit truncation (``None`` or ``0`` / ``1.0``: off).
        pad_token_id, eos_token_id, bos_token_id: special tokens (the tokenizer's).
        **overrides: any other ``GenerationConfig`` field, set explicitly by the user (e.g. ``min_p=0.05``,
            ``repetition_penalty=1.1``); an unknown name raises ``ValueError``.
    """
    from transformers import GenerationConfig

    if max_new_tokens is None or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature is None or temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:  # temperature 0 means greedy decoding, as in most serving stacks
        do_sample = False
    known = set(GenerationConfig().to_dict())
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"Unknown generation settings {unknown}: expected `transformers.GenerationConfig` fields.")
    fields = dict(_NEUTRAL_IN_EVERY_MODE)
    fields.update(max_new_tokens=max_new_tokens, do_sample=do_sample, use_cache=True)
    fields.update(pad_token_id=pad_token_id, eos_token_id=eos_token_id, bos_token_id=bos_token_id)
    if do_sample:
        fields.update(_NEUTRAL_WHEN_SAMPLING)
        fields["temperature"] = float(temperature)
        if top_k is not None:
            fields["top_k"] = int(top_k)
        if top_p is not None:
            fields["top_p"] = float(top_p)
    else:  # sampling warpers are not built in greedy mode; leaving them unset keeps transformers from warning
        fields.update(temperature=None, top_k=None, top_p=None)
    fields.update(overrides)
    return GenerationConfig(**fields)


def off_policy_sampling_settings(generation_config) -> dict:
    """Settings of ``generation_config`` that make samples differ from ``softmax(logits / temperature)``.

    Returns ``{field: value}`` for every truncation / penalty / bias that is on (empty: exact sampling). Greedy
    decoding (``do_sample=False``) is reported as ``{"do_sample": False}``.
    """
    out = {}
    if not generation_config.do_sample:
        return {"do_sample": False}
    for name, neutral in {**_NEUTRAL_IN_EVERY_MODE, **_NEUTRAL_WHEN_SAMPLING}.items():
        value = getattr(generation_config, name, None)
        if name in ("output_scores", "output_logits", "return_dict_in_generate", "max_time", "stop_strings"):
            continue  # no effect on the distribution of the tokens
        if name == "top_k" and value in (None, 0):
            continue
        if name == "min_p" and value in (None, 0, 0.0):
            continue
        if name == "guidance_scale" and value in (None, 1, 1.0):
            continue
        if value is not None and value != neutral and not (neutral is None and value in ([], {}, False)):
            out[name] = value
    return out


@contextmanager
def checkpoint_generation_config_hidden(model):
    """Hide the ``generation_config`` of every generating module inside ``model`` for the duration of the block.

    ``generate(generation_config=...)`` fills each field the passed config leaves at ``None`` from the model's own
    ``generation_config`` (``_prepare_generation_config`` in transformers 5.24) before its global defaults; a
    checkpoint's ``min_p``, ``suppress_tokens``, ``forced_bos_token_id``, ``sequence_bias``... would then act
    although the passed config says nothing. Inside the block each one is a blank ``GenerationConfig()``, so only
    the passed config and the library's neutral global defaults count. Works through PEFT and trainer wrappers (it
    walks ``model.modules()``); the original configs are restored on exit.
    """
    from transformers import GenerationConfig
    from transformers.generation.utils import GenerationMixin

    swapped = []
    for module in model.modules():
        config = getattr(module, "generation_config", None)
        if isinstance(module, GenerationMixin) and isinstance(config, GenerationConfig):
            swapped.append((module, config))
    try:
        for module, _ in swapped:
            module.generation_config = GenerationConfig()
        yield
    finally:
        for module, config in swapped:
            module.generation_config = config


@torch.no_grad()
def generate_rollouts(
    model,
    tokenizer,
    prompts: list,
    *,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    do_sample: bool = True,
    generation_kwargs: dict | None = None,
    num_generations: int = 1,
    batch_size: int = 64,
    max_prompt_length: int | None = None,
    accelerator=None,
    progress: bool = False,
    desc: str = "Generating",
) -> Rollout:
    """Sample ``num_generations`` completions per prompt in left-padded batches of ``batch_size`` sequences.

    ``temperature`` is the sampling temperature (0 means greedy); the same value must divide the logits whenever
    the trainer recomputes log-probabilities of these samples. Nothing else shapes the distribution unless asked
    for: ``top_k`` / ``top_p`` (``None``: off) and ``generation_kwargs`` (any other ``GenerationConfig`` field) are
    the only truncations, and the checkpoint's ``generation_config`` is ignored (see
    :func:`sampling_generation_config`). With ``accelerator`` the model is unwrapped for generation (TRL's
    ``unwrap_model_for_generation``: handles DDP, DeepSpeed ZeRO-3 and FSDP).
    """
    if num_generations < 1:
        raise ValueError(f"num_generations must be >= 1, got {num_generations}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if len(prompts) == 0:
        raise ValueError("No prompts to generate from.")
    ensure_pad_token(tokenizer)
    conversational = is_conversational_prompt(prompts[0])
    prompt_token_ids = tokenize_prompts(tokenizer, prompts, max_prompt_length)
    rows = [(i, ids) for i, ids in enumerate(prompt_token_ids) for _ in range(num_generations)]
    settings = dict(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        do_sample=do_sample,
        top_k=top_k,
        top_p=top_p,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    gen_config = sampling_generation_config(**{**settings, **(generation_kwargs or {})})  # the user's keys win
    if accelerator is not None:
        from trl.models import unwrap_model_for_generation

        unwrap_ctx = unwrap_model_for_generation(model, accelerator)
    else:
        unwrap_ctx = nullcontext(model)
    device = next(model.parameters()).device
    prompt_chunks, completion_chunks = [], []
    iterator = range(0, len(rows), batch_size)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=desc, leave=False)
    with unwrap_ctx as gen_model, checkpoint_generation_config_hidden(gen_model):
        # the unwrapped model's mode: a DeepSpeed engine's own `training` flag stays True after `engine.eval()`
        was_training = gen_model.training
        if any(p.requires_grad for p in gen_model.parameters()):  # a model in training (the callback's SFT model)
            keep_4bit_layers_differentiable(gen_model)
        gen_model.eval()
        for start in iterator:
            batch = rows[start : start + batch_size]
            ids = pad_sequences([r[1] for r in batch], tokenizer.pad_token_id, side="left").to(device)
            mask = pad_sequences([[1] * len(r[1]) for r in batch], 0, side="left").to(device)
            out = gen_model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_config)
            prompt_chunks.append((ids.cpu(), mask.cpu()))
            completion_chunks.append(out[:, ids.size(1) :].cpu())
        if was_training:
            gen_model.train()
    prompt_ids = pad_sequences([r for ids, _ in prompt_chunks for r in ids], tokenizer.pad_token_id, side="left")
    prompt_mask = pad_sequences([r for _, m in prompt_chunks for r in m], 0, side="left")
    completion_ids = pad_sequences([r for c in completion_chunks for r in c], tokenizer.pad_token_id, side="right")
    completion_mask, is_eos = completion_mask_after_eos(completion_ids, tokenizer.eos_token_id)
    completion_ids = completion_ids.masked_fill(completion_mask == 0, tokenizer.pad_token_id)
    return Rollout(
        prompts=[prompts[i] for i, _ in rows],
        completions=decode_completions(tokenizer, completion_ids, completion_mask, conversational),
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        is_eos=is_eos,
        group_index=torch.tensor([i for i, _ in rows], dtype=torch.long),
    )
