"""Measure a policy on fixed prompts: sample answers, score them with named reward functions, and (optionally) the
exact KL of each answer to a reference model.

The one measuring path of the package: :class:`~trl_extras.callbacks.reward_measure.RewardMeasureCallback` (rewards
during training, the Goodhart curves), :class:`~trl_extras.callbacks.reward_early_stopping.RewardEarlyStoppingCallback`
and the pipeline's :func:`~trl_extras.pipeline.evaluate.evaluate_policy` call :func:`measure_policy`. Sampling goes
through the shared :func:`~trl_extras.modeling.generation.generate_rollouts`, scoring through
:class:`~trl_extras.rewards.functions.RewardFunctions`. Under several processes each samples and scores its share of
the prompts (``accelerate.PartialState.split_between_processes``) and the per-answer values are gathered, so every
process returns the same :class:`PolicyMeasurement`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..modeling.generation import Rollout, generate_rollouts, sampler_for
from ..modeling.lm import completion_token_stats


@dataclass
class PolicyMeasurement:
    """Per-answer measurements of one policy, over all processes, in prompt order (``num_generations`` consecutive
    answers per prompt).

    Attributes:
        prompts, completions: ``N`` prompts (repeated per generation) and the sampled answers.
        rewards: ``{name: N values}``, the total of each named reward function.
        kl: ``N`` values of Σ_t exact KL(π‖π_ref) over each answer's tokens (nats), or ``None`` without a reference.
        lengths: ``N`` answer lengths in tokens (up to and including EOS).
    """

    prompts: list
    completions: list
    rewards: dict[str, list[float]]
    kl: list[float] | None
    lengths: list[int]

    def mean(self, name: str) -> float:
        """Mean of reward ``name`` over all answers."""
        values = self.rewards[name]
        return float(sum(values) / len(values))

    @property
    def empty_share(self) -> float:
        """Fraction of answers that are empty after stripping whitespace."""
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in self.completions]
        return sum(not t.strip() for t in texts) / len(texts)

    def summary(self) -> dict[str, float]:
        """``{name: mean reward, ..., "kl": mean KL (if measured), "length": mean length}``."""
        out = {name: self.mean(name) for name in self.rewards}
        if self.kl is not None:
            out["kl"] = float(sum(self.kl) / len(self.kl))
        out["length"] = float(sum(self.lengths) / len(self.lengths))
        return out


@torch.no_grad()
def sequence_kl(model, ref_model, rollout: Rollout, temperature: float = 1.0, batch_size: int = 64) -> torch.Tensor:
    """``(B,)`` Σ_t exact KL(π‖π_ref) over each sampled completion's valid tokens (logits ÷ temperature)."""
    out = []
    for start in range(0, len(rollout), batch_size):
        sl = slice(start, start + batch_size)
        ids, mask = rollout.input_ids[sl], rollout.attention_mask[sl]
        T = rollout.completion_ids.size(1)
        stats = completion_token_stats(
            model, ref_model, ids, mask, logits_to_keep=T, temperature=temperature, with_entropy=False
        )
        out.append((stats["exact_kl"] * rollout.completion_mask[sl]).sum(1))
    return torch.cat(out)


def as_reward_functions(reward_funcs: Mapping, batch_size: int = 64) -> dict:
    """``{name: RewardFunctions}`` from ``{name: reward}`` (anything ``RewardFunctions`` takes; kept if already one)."""
    from ..rewards.functions import RewardFunctions

    if not isinstance(reward_funcs, Mapping) or not reward_funcs:
        raise ValueError(
            f"reward_funcs must be a non-empty dict {{name: reward function}}, got {type(reward_funcs).__name__}"
        )
    return {
        str(name): fn if isinstance(fn, RewardFunctions) else RewardFunctions(fn, batch_size=batch_size)
        for name, fn in reward_funcs.items()
    }


def measure_policy(
    model,
    tokenizer,
    prompts: list,
    reward_funcs: Mapping,
    ref_model=None,
    *,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    num_generations: int = 1,
    batch_size: int = 64,
    seed: int = 0,
    accelerator=None,
    progress: bool = False,
    desc: str = "Measuring",
    sampler=None,
) -> PolicyMeasurement:
    """Sample ``num_generations`` answers per prompt and measure them (see :class:`PolicyMeasurement`).

    Args:
        model, tokenizer: the policy (a ``PreTrainedModel``, ``PeftModel`` or a DDP/DeepSpeed wrapper with
            ``accelerator``) and its tokenizer.
        prompts: the prompts (text or conversational).
        reward_funcs: ``{name: reward}``; each value anything :class:`~trl_extras.rewards.functions.RewardFunctions`
            takes (a reward-model path or instance, a GRPO-style callable, a ``RewardEnsemble``) or one already.
        ref_model: a reference model for the per-answer exact KL(π‖π_ref) (``None``: no KL). Greedy answers
            (``temperature=0``) get the KL of the temperature-1 distributions.
        max_new_tokens, temperature, top_k, top_p, batch_size: sampling settings of the shared rollout path.
        seed: sampling is seeded with ``seed + process_index``; the global RNG state is restored afterwards, so
            measuring inside a training loop does not change the training's random stream.
        accelerator: unwraps the model for generation (DDP, DeepSpeed ZeRO-3, FSDP).
        sampler: the generation backend (:func:`~trl_extras.modeling.generation.make_sampler`; ``None``: HF
            ``generate``); an engine with its own weights (vLLM) gets ``model``'s pushed first.
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object

    funcs = as_reward_functions(reward_funcs, batch_size=batch_size)
    state = PartialState()
    padding_side = tokenizer.padding_side
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else []):
        torch.manual_seed(seed + state.process_index)
        try:
            with state.split_between_processes(list(prompts)) as local_prompts:
                local_prompts = list(local_prompts)
                rollout = None
                if local_prompts:  # else: more processes than prompts
                    rollout = generate_rollouts(
                        model, tokenizer, local_prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                        top_k=top_k, top_p=top_p, num_generations=num_generations, batch_size=batch_size,
                        accelerator=accelerator, progress=progress, desc=desc, sampler=sampler_for(model, sampler),
                    )
        finally:
            tokenizer.padding_side = padding_side
    local = {"prompts": [], "completions": [], "lengths": [], "kl": [], "rewards": {name: [] for name in funcs}}
    if rollout is not None:
        device = next(model.parameters()).device
        local["prompts"], local["completions"] = list(rollout.prompts), list(rollout.completions)
        local["lengths"] = rollout.completion_lengths.tolist()
        for name, fns in funcs.items():
            fns.place(device)  # every reward source's modules (ensemble members included)
            local["rewards"][name] = fns(rollout.prompts, rollout.completions).total.tolist()
        if ref_model is not None:
            if next(ref_model.parameters()).device != device:
                ref_model.to(device)
            local["kl"] = sequence_kl(model, ref_model, rollout, temperature=temperature or 1.0).tolist()
    parts = gather_object([local]) if state.num_processes > 1 else [local]
    return PolicyMeasurement(
        prompts=[p for part in parts for p in part["prompts"]],
        completions=[c for part in parts for c in part["completions"]],
        rewards={name: [v for part in parts for v in part["rewards"][name]] for name in funcs},
        kl=[v for part in parts for v in part["kl"]] if ref_model is not None else None,
        lengths=[v for part in parts for v in part["lengths"]],
    )
