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

The backend is a :class:`Sampler` (``sample`` / ``sync_weights`` / ``close``), chosen by :func:`make_sampler` from TRL
GRPOConfig's field names: :class:`GenerateSampler` (HF ``generate``, the default and the path above),
:class:`ContinuousBatchingSampler` (transformers' ``generate_batch``) and :class:`VLLMSampler` (TRL's
``VLLMGeneration``; an engine with its own weights, pushed by ``sync_weights``). Backends only map prompt token ids
to completion token ids (and, where the engine gives them, their log-probs); tokenization, row order, padding, the
EOS mask and decoding are shared (:meth:`Sampler.sample`, :func:`assemble_rollout`).
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
        sampler_logprobs: ``(B, T)`` float32 log-probs of the sampled tokens as the generation engine computed them
            (after temperature: vLLM's ``processed_logprobs``, continuous batching's ``return_logprobs``), NaN on
            padding and where the engine gave none; ``None`` when the backend returns no log-probs (``generate``).
            Only for diagnostics and the truncated importance-sampling correction: trainers recompute the old
            log-probs themselves.
    """

    prompts: list
    completions: list
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    is_eos: torch.Tensor
    group_index: torch.Tensor
    sampler_logprobs: torch.Tensor | None = None

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


# ----------------------------------------------------------------------------------------------------------------
# The sampler seam: one protocol, three backends. Every sampler of the package (PPO rollouts, CEM rounds,
# measure_policy, side_by_side, synthetic pairs, refresh comparisons) reaches a backend through `generate_rollouts`,
# so tokenization, row order, padding, the EOS mask and decoding are shared and only "token ids in, token ids out"
# differs between backends. Every backend call that generates lives in this module (a guard test checks it).
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingSpec:
    """What to sample: ``softmax(logits / temperature)`` for at most ``max_new_tokens`` tokens, nothing else unless
    asked for (``top_k`` / ``top_p``: ``None`` or ``0`` / ``1.0`` is off; ``generation_kwargs``: any other
    ``transformers.GenerationConfig`` field, e.g. ``min_p`` or ``repetition_penalty``). ``temperature=0`` or
    ``do_sample=False`` is greedy decoding."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    do_sample: bool = True
    top_k: int | None = None
    top_p: float | None = 1.0
    generation_kwargs: dict | None = None

    def generation_config(self, tokenizer):
        """The complete ``GenerationConfig`` (:func:`sampling_generation_config`; the user's keys win)."""
        settings = dict(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            do_sample=self.do_sample,
            top_k=self.top_k,
            top_p=self.top_p,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
        )
        return sampling_generation_config(**{**settings, **(self.generation_kwargs or {})})


@dataclass
class SampledIds:
    """A backend's answer for ``R`` prompt rows: ``completion_ids`` holds ``R`` 1-D tensors of sampled tokens (tokens
    after the first EOS are allowed: they are masked later); ``logprobs`` (optional) holds ``R`` lists of the
    engine's log-probability of each sampled token, ``None`` for a token it did not score."""

    completion_ids: list
    logprobs: list | None = None


class Sampler:
    """The sampler protocol (and the base of every backend).

    - :meth:`sample` ``(model, tokenizer, prompts, num_generations, spec) -> Rollout``: prompts as TRL datasets hold
      them, ``num_generations`` samples per prompt (consecutive rows), the :class:`SamplingSpec`;
    - :meth:`sync_weights` ``(model)``: after the policy changed, before the next :meth:`sample` (a no-op for
      backends that read the live model: ``generate`` and continuous batching; vLLM holds its own copy);
    - :meth:`close`: release the engine.

    ``needs_weight_sync`` tells trainers whether :meth:`sync_weights` does anything (they skip the bookkeeping
    otherwise). Backends implement :meth:`sample_ids` only.
    """

    name = "base"
    needs_weight_sync = False

    def sample(
        self,
        model,
        tokenizer,
        prompts: list,
        *,
        num_generations: int = 1,
        spec: SamplingSpec | None = None,
        batch_size: int = 64,
        max_prompt_length: int | None = None,
        progress: bool = False,
        desc: str = "Generating",
    ) -> Rollout:
        """``num_generations`` completions per prompt as a :class:`Rollout` (see :func:`generate_rollouts`)."""
        spec = spec or SamplingSpec()
        if num_generations < 1:
            raise ValueError(f"num_generations must be >= 1, got {num_generations}")
        if spec.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {spec.temperature}")
        if len(prompts) == 0:
            raise ValueError("No prompts to generate from.")
        ensure_pad_token(tokenizer)
        conversational = is_conversational_prompt(prompts[0])
        prompt_token_ids = tokenize_prompts(tokenizer, prompts, max_prompt_length)
        rows = [(i, ids) for i, ids in enumerate(prompt_token_ids) for _ in range(num_generations)]
        gen_config = spec.generation_config(tokenizer)  # bad settings fail here, before any engine work
        sampled = self.sample_ids(
            model, [ids for _, ids in rows], gen_config, tokenizer,
            num_generations=num_generations, batch_size=batch_size, progress=progress, desc=desc,
        )  # fmt: skip
        if len(sampled.completion_ids) != len(rows):
            raise RuntimeError(
                f"The {self.name} backend returned {len(sampled.completion_ids)} completions for {len(rows)} prompt "
                "rows (failed requests?): see its log above."
            )
        return assemble_rollout(tokenizer, prompts, rows, sampled, conversational)

    def sample_ids(
        self, model, prompt_ids: list[list[int]], generation_config, tokenizer, *, num_generations: int,
        batch_size: int, progress: bool, desc: str,
    ) -> SampledIds:  # fmt: skip
        """Completions for ``R`` prompt rows (``prompt_ids``: ``R`` token lists, each prompt repeated
        ``num_generations`` times consecutively), sampled as ``generation_config`` says."""
        raise NotImplementedError

    def sync_weights(self, model) -> None:
        """Make the engine generate with ``model``'s current weights (no-op for backends that read the model)."""

    def close(self) -> None:
        """Release the engine (GPU memory, server connection)."""


def assemble_rollout(tokenizer, prompts: list, rows: list, sampled: SampledIds, conversational: bool) -> Rollout:
    """The :class:`Rollout` of ``rows`` (``(prompt index, prompt token ids)``, ``R`` of them) and what a backend sampled
    for them: prompts left-padded, completions right-padded and masked after their first EOS (padding filled with the
    pad token), engine log-probs aligned with the completion tokens (NaN elsewhere)."""
    from trl.trainer.utils import pad

    rows_ids = [torch.tensor(ids, dtype=torch.long) for _, ids in rows]
    prompt_ids = pad(rows_ids, tokenizer.pad_token_id, padding_side="left")
    prompt_mask = pad([torch.ones_like(x) for x in rows_ids], 0, padding_side="left")
    completions = [torch.as_tensor(c, dtype=torch.long).reshape(-1).cpu() for c in sampled.completion_ids]
    completion_ids = pad(completions, tokenizer.pad_token_id, padding_side="right")
    completion_mask, is_eos = completion_mask_after_eos(completion_ids, tokenizer.eos_token_id)
    completion_ids = completion_ids.masked_fill(completion_mask == 0, tokenizer.pad_token_id)
    sampler_logprobs = None
    if sampled.logprobs is not None:
        sampler_logprobs = torch.full(completion_ids.shape, float("nan"), dtype=torch.float32)
        for r, lps in enumerate(sampled.logprobs):
            values = torch.tensor([float("nan") if lp is None else float(lp) for lp in lps], dtype=torch.float32)
            n = min(len(values), completion_ids.size(1))
            sampler_logprobs[r, :n] = values[:n]
        sampler_logprobs = sampler_logprobs.masked_fill(completion_mask == 0, float("nan"))
    return Rollout(
        prompts=[prompts[i] for i, _ in rows],
        completions=decode_completions(tokenizer, completion_ids, completion_mask, conversational),
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        is_eos=is_eos,
        group_index=torch.tensor([i for i, _ in rows], dtype=torch.long),
        sampler_logprobs=sampler_logprobs,
    )


def _unwrapped_for_generation(model, accelerator):
    """TRL's ``unwrap_model_for_generation`` (DDP, DeepSpeed ZeRO-3 gathering, FSDP) when there is an accelerator."""
    if accelerator is not None:
        from trl.models import unwrap_model_for_generation

        return unwrap_model_for_generation(model, accelerator)
    return nullcontext(model)


@contextmanager
def _generation_mode(gen_model):
    """Eval mode for the duration of sampling, the model's own mode restored after (the unwrapped model's flag: a
    DeepSpeed engine's ``training`` stays True after ``engine.eval()``); 4-bit layers of a model in training keep
    their differentiable path."""
    was_training = gen_model.training
    if any(p.requires_grad for p in gen_model.parameters()):  # a model in training (the callback's SFT model)
        keep_4bit_layers_differentiable(gen_model)
    gen_model.eval()
    try:
        yield gen_model
    finally:
        if was_training:
            gen_model.train()


class GenerateSampler(Sampler):
    """The default backend: HF ``generate`` on the live model in left-padded batches of ``batch_size`` rows (the path
    every result of this package was measured with). Reads the model it is given: nothing to sync."""

    name = "generate"

    def __init__(self, accelerator=None):
        self.accelerator = accelerator

    def sample_ids(self, model, prompt_ids, generation_config, tokenizer, *, num_generations, batch_size, progress,
                   desc):  # fmt: skip
        from trl.trainer.utils import pad

        from ..utils.progress import progress_bar

        device = next(model.parameters()).device
        completions = []
        iterator = progress_bar(range(0, len(prompt_ids), batch_size), desc=desc, enabled=progress)  # terminal only
        with _unwrapped_for_generation(model, self.accelerator) as gen_model, checkpoint_generation_config_hidden(
            gen_model
        ), _generation_mode(gen_model):
            for start in iterator:
                rows_ids = [torch.tensor(r, dtype=torch.long) for r in prompt_ids[start : start + batch_size]]
                ids = pad(rows_ids, tokenizer.pad_token_id, padding_side="left").to(device)
                mask = pad([torch.ones_like(x) for x in rows_ids], 0, padding_side="left").to(device)
                out = gen_model.generate(input_ids=ids, attention_mask=mask, generation_config=generation_config)
                completions.extend(out[:, ids.size(1) :].cpu())
        return SampledIds(completions)


def _continuous_batching_config(cb_kwargs: dict | None, device, prompt_ids, max_new_tokens: int):
    """``transformers.generation.ContinuousBatchingConfig`` from the user's ``transformers_continuous_batching_config``
    plus defaults for training: on CUDA, ``max_memory_percent=0.5`` (TRL GRPO's default: the transformers default
    0.9 leaves nothing for the backward pass); on CPU, a paged cache sized to this batch (the memory-based sizing
    meant for GPUs made a 100-request call take ~60 s instead of ~4 s on the 2-core test machine); log-probs on
    (``rollout/logprob_gap``); a sampling seed drawn from torch's global generator, so that ``set_seed`` makes runs
    reproducible (transformers otherwise seeds the engine at random)."""
    from transformers.generation import ContinuousBatchingConfig

    kwargs = dict(cb_kwargs or {})
    kwargs.setdefault("return_logprobs", True)
    if "seed" not in kwargs:
        kwargs["seed"] = int(torch.randint(0, 2**31 - 1, (1,)).item())
    if torch.device(device).type == "cuda":
        kwargs.setdefault("max_memory_percent", 0.5)
    elif not {"num_blocks", "max_batch_tokens", "max_memory_percent"} & set(kwargs):
        page = kwargs.setdefault("page_size", 16)
        longest = max(len(ids) for ids in prompt_ids) + max_new_tokens
        kwargs["num_blocks"] = max(16, min(8192, len(prompt_ids) * -(-longest // page) + 1))
        kwargs["max_batch_tokens"] = 1024
    return ContinuousBatchingConfig(**kwargs)


class ContinuousBatchingSampler(Sampler):
    """transformers' continuous batching (``model.generate_batch``: paged KV cache, requests scheduled as they
    finish; transformers >= 5.8), as TRL's GRPO uses it with ``use_transformers_continuous_batching``. Reads the live
    model: nothing to sync. A GPU feature: on CPU it is correct but slower than ``generate`` (see the README)."""

    name = "transformers_continuous_batching"

    def __init__(self, accelerator=None, continuous_batching_config: dict | None = None):
        self.accelerator = accelerator
        self.continuous_batching_config = dict(continuous_batching_config or {})

    def sample_ids(self, model, prompt_ids, generation_config, tokenizer, *, num_generations, batch_size, progress,
                   desc):  # fmt: skip
        device = next(model.parameters()).device
        config = _continuous_batching_config(
            self.continuous_batching_config, device, prompt_ids, generation_config.max_new_tokens
        )
        with _unwrapped_for_generation(model, self.accelerator) as gen_model, checkpoint_generation_config_hidden(
            gen_model
        ), _generation_mode(gen_model):
            outputs = gen_model.generate_batch(
                [list(ids) for ids in prompt_ids], generation_config=generation_config,
                continuous_batching_config=config, progress_bar=progress,
            )  # fmt: skip
        results = [out for out in outputs.values() if out.error is None]
        logprobs = [list(out.logprobs) for out in results] if config.return_logprobs else None
        return SampledIds([torch.tensor(out.generated_tokens, dtype=torch.long) for out in results], logprobs)


# GenerationConfig fields a vLLM SamplingParams takes under the same meaning (the rest have no vLLM equivalent).
_VLLM_FIELDS = {"min_p": "min_p", "repetition_penalty": "repetition_penalty", "seed": "seed"}


class VLLMSampler(Sampler):
    """vLLM through TRL's ``trl.generation.vllm_generation.VLLMGeneration`` (colocate or server mode), as TRL's GRPO
    uses it with ``use_vllm``. vLLM holds its own copy of the weights: :meth:`sync_weights` pushes the policy's
    (TRL's ``sync_weights``: PEFT merge -> push -> unmerge under PEFT, parameters gathered one at a time under
    DeepSpeed ZeRO-3 or FSDP, names without PEFT prefixes). Sampling parameters are set per call from the
    :class:`SamplingSpec`, every truncation off unless asked for (``top_k=0``, ``top_p=1``, ``min_p=0``,
    ``repetition_penalty=1``); engine log-probs come from ``logprobs_mode="processed_logprobs"`` (TRL's colocate
    engine; start a server with ``--logprobs-mode processed_logprobs``)."""

    name = "vllm"
    needs_weight_sync = True

    def __init__(self, engine):
        self.engine = engine  # a VLLMGeneration (or anything with its generate / sync_weights / model interface)
        self.num_syncs = 0

    def sample_ids(self, model, prompt_ids, generation_config, tokenizer, *, num_generations, batch_size, progress,
                   desc):  # fmt: skip
        engine = self.engine
        unsupported = {
            k: v for k, v in off_policy_sampling_settings(generation_config).items()
            if k not in ("do_sample", "top_k", "top_p") and k not in _VLLM_FIELDS
        }  # fmt: skip
        if unsupported:
            raise ValueError(
                f"Generation settings {unsupported} have no vLLM equivalent here (vLLM takes temperature, top_k, top_p, "
                "min_p, repetition_penalty): remove them from generation_kwargs or set use_vllm=False."
            )
        engine.temperature = float(generation_config.temperature or 0.0) if generation_config.do_sample else 0.0
        engine.top_k = int(generation_config.top_k or 0) if generation_config.do_sample else 0
        engine.top_p = float(generation_config.top_p if generation_config.top_p is not None else 1.0)
        engine.min_p = float(generation_config.min_p or 0.0)
        engine.repetition_penalty = float(generation_config.repetition_penalty or 1.0)
        engine.max_completion_length = int(generation_config.max_new_tokens)
        engine.logprobs = 0  # the sampled token's log-prob only
        _, completion_ids, logprobs, _ = engine.generate(
            prompts=[list(ids) for ids in prompt_ids], images=None, num_generations=num_generations
        )
        if logprobs is not None:  # per token: [sampled token's log-prob, top-N...] -> the sampled one
            logprobs = [[lp[0] if lp else None for lp in seq] for seq in logprobs]
        return SampledIds([torch.tensor(list(c), dtype=torch.long) for c in completion_ids], logprobs)

    def sync_weights(self, model) -> None:
        self.engine.model = model  # the unwrapped policy (a PeftModel under PEFT): TRL merges, pushes and unmerges
        self.engine.sync_weights()
        self.num_syncs += 1

    def close(self) -> None:
        llm = getattr(self.engine, "llm", None)
        if llm is not None:
            del self.engine.llm
        client = getattr(self.engine, "vllm_client", None)
        if client is not None and hasattr(client, "close_communicator"):
            client.close_communicator()


def _field(config, name, default=None):
    return getattr(config, name, default) if config is not None else default


def make_sampler(args, model=None, tokenizer=None, accelerator=None, *, engine_factory=None) -> Sampler:
    """The sampler a trainer's config asks for, with TRL GRPOConfig's field names: ``use_vllm`` (+ ``vllm_mode``,
    ``vllm_server_*``, ``vllm_gpu_memory_utilization``, ``vllm_tensor_parallel_size``, ``vllm_enable_sleep_mode``,
    ...) -> :class:`VLLMSampler`; ``use_transformers_continuous_batching`` (+
    ``transformers_continuous_batching_config``) -> :class:`ContinuousBatchingSampler`; otherwise
    :class:`GenerateSampler`. ``args`` may be ``None`` (the default backend).

    ``engine_factory(**kwargs)`` builds the vLLM engine (default: TRL's ``VLLMGeneration``; tests pass a recording
    stand-in). vLLM is imported only here, only when ``use_vllm`` is set."""
    if _field(args, "use_vllm", False) and _field(args, "use_transformers_continuous_batching", False):
        raise ValueError(
            "use_vllm=True and use_transformers_continuous_batching=True: pick one generation backend."
        )
    if _field(args, "use_transformers_continuous_batching", False):
        return ContinuousBatchingSampler(accelerator, _field(args, "transformers_continuous_batching_config"))
    if not _field(args, "use_vllm", False):
        return GenerateSampler(accelerator)
    if engine_factory is None:
        check_vllm_installed()
        from trl.generation.vllm_generation import VLLMGeneration

        engine_factory = VLLMGeneration
    if accelerator is None:
        from accelerate import Accelerator

        accelerator = Accelerator()
    engine = engine_factory(
        model=model,
        accelerator=accelerator,
        processing_class=tokenizer,
        mode=args.vllm_mode,
        structured_outputs_regex=None,
        server_base_url=args.vllm_server_base_url,
        server_host=args.vllm_server_host,
        server_port=args.vllm_server_port,
        server_timeout=args.vllm_server_timeout,
        group_port=args.vllm_group_port,
        tensor_parallel_size=args.vllm_tensor_parallel_size,
        gpu_memory_utilization=args.vllm_gpu_memory_utilization,
        max_model_length=args.vllm_max_model_length,
        enable_sleep_mode=args.vllm_enable_sleep_mode,
        model_impl=args.vllm_model_impl,
        trust_remote_code=bool(_field(args, "trust_remote_code", False)),
        # every truncation off; the per-call values come from the SamplingSpec (VLLMSampler.sample_ids)
        repetition_penalty=1.0,
        temperature=float(_field(args, "temperature", 1.0)),
        top_p=1.0,
        top_k=0,
        min_p=0.0,
        max_completion_length=int(_field(args, "max_completion_length", 64)),
        logprobs=0,
        generation_kwargs=None,
    )
    client = getattr(engine, "vllm_client", None)
    if args.vllm_mode == "server" and hasattr(client, "get_server_info"):  # as TRL's GRPO checks it
        mode = client.get_server_info().get("model_config", {}).get("logprobs_mode")
        if mode != "processed_logprobs":
            logger.warning(
                "The vLLM server runs with `--logprobs-mode %s`: its log-probs are not those of softmax(logits / T), "
                "which biases rollout/logprob_gap and the importance-sampling correction. Restart it with "
                "`--logprobs-mode processed_logprobs`.", mode,
            )
    return VLLMSampler(engine)


def sampler_for(model, sampler: Sampler | None) -> Sampler | None:
    """``sampler`` ready to sample ``model``: an engine holding its own weights (vLLM) gets ``model``'s pushed first.
    For the evaluation helpers that take a model and an optional sampler (one push per call; side-by-side and refresh
    comparisons sample two models through one engine). Trainers push only when their policy changed instead."""
    if sampler is not None and sampler.needs_weight_sync:
        sampler.sync_weights(model)
    return sampler


def check_vllm_installed() -> None:
    """``use_vllm=True`` needs the ``vllm`` package: a clear error naming the extra (raised at config time)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise ImportError(
            "use_vllm=True needs vLLM, which is not installed: `pip install trl-extras[vllm]` (installs TRL's "
            "supported vLLM range), or set use_vllm=False (generate) / use_transformers_continuous_batching=True."
        )


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
    sampler: Sampler | None = None,
) -> Rollout:
    """Sample ``num_generations`` completions per prompt in left-padded batches of ``batch_size`` sequences.

    ``temperature`` is the sampling temperature (0 means greedy); the same value must divide the logits whenever
    the trainer recomputes log-probabilities of these samples. Nothing else shapes the distribution unless asked
    for: ``top_k`` / ``top_p`` (``None``: off) and ``generation_kwargs`` (any other ``GenerationConfig`` field) are
    the only truncations, and the checkpoint's ``generation_config`` is ignored (see
    :func:`sampling_generation_config`). With ``accelerator`` the model is unwrapped for generation (TRL's
    ``unwrap_model_for_generation``: handles DDP, DeepSpeed ZeRO-3 and FSDP).

    ``sampler`` picks the backend (:func:`make_sampler`); ``None`` is HF ``generate`` (:class:`GenerateSampler`).
    """
    spec = SamplingSpec(
        max_new_tokens=max_new_tokens, temperature=temperature, do_sample=do_sample, top_k=top_k, top_p=top_p,
        generation_kwargs=generation_kwargs,
    )  # fmt: skip
    sampler = sampler if sampler is not None else GenerateSampler(accelerator)
    return sampler.sample(
        model, tokenizer, prompts, num_generations=num_generations, spec=spec, batch_size=batch_size,
        max_prompt_length=max_prompt_length, progress=progress, desc=desc,
    )  # fmt: skip
