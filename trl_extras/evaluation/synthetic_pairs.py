"""DPO preference pairs synthesized with a reward model, and the article's two-stage DPO.

The article: "DPO is often run on top of a synthetic sample of comparisons: we generate [several] answers for each
query and select the best one using the reward model ... if you have real-world data, the best thing to do is add
them and train the model in two stages." :func:`synthesize_preference_pairs` samples ``n`` answers per prompt from
the policy (the shared :func:`trl_extras.modeling.generation.generate_rollouts` path), scores them through
:class:`~trl_extras.rewards.functions.RewardFunctions` and keeps chosen = best, rejected = worst — a dataset in
TRL's explicit-prompt preference format that ``DPOTrainer`` accepts as is. :func:`run_two_stage_dpo` then runs
``DPOTrainer`` on the synthetic pairs and continues on the real pairs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass

import torch

from ._common import load_policy, prompts_from

logger = logging.getLogger(__name__)


@dataclass
class SynthesisStats:
    """What :func:`synthesize_preference_pairs` kept and why it dropped the rest."""

    num_prompts: int
    num_pairs: int
    skipped_no_preference: int  # best and worst scored the same, or the samples were identical texts
    skipped_low_margin: int  # best - worst < min_margin
    empty_answers: int  # sampled answers with no text (kept as candidates; they usually score lowest)
    mean_margin: float

    def to_dict(self) -> dict:
        return asdict(self)


def select_best_worst(scores: torch.Tensor, min_margin: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best and worst sample per prompt from ``scores`` ``(P, n)``; returns ``(best (P,), worst (P,), margin (P,))``.

    Ties go to the lowest index (``argmax``/``argmin``). Whether a pair is kept (``margin > 0`` and
    ``margin >= min_margin``) is the caller's decision, so the counts of each reason stay visible.
    """
    if scores.dim() != 2 or scores.size(1) < 2:
        raise ValueError(f"scores must have shape (P, n) with n >= 2, got {tuple(scores.shape)}")
    best = scores.argmax(dim=1)
    worst = scores.argmin(dim=1)
    margin = scores.gather(1, best[:, None]).squeeze(1) - scores.gather(1, worst[:, None]).squeeze(1)
    return best, worst, margin


def _is_empty(completion) -> bool:
    text = completion[-1].get("content", "") if isinstance(completion, list) else completion
    return not str(text).strip()


def synthesize_preference_pairs(
    policy,
    reward,
    prompts,
    n: int = 4,
    processing_class=None,
    min_margin: float = 0.0,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    batch_size: int = 64,
    seed: int = 0,
    reward_processing_classes=None,
    reward_weights=None,
    return_stats: bool = False,
    progress: bool = False,
    sampler=None,
):
    """Sample ``n`` answers per prompt, score them, and keep (best, worst) as a DPO preference pair.

    Args:
        policy: causal-LM path or instance (with ``processing_class`` unless its tokenizer loads from
            ``config._name_or_path``).
        reward: reward-model path/instance, reward callable ``f(prompts, completions, **kw)``, ``RewardEnsemble``
            (its penalized reward), or a list of them (weighted by ``reward_weights``).
        prompts: list of prompts (text or conversational) or a dataset with a ``prompt`` column.
        n: samples per prompt (>= 2: best and worst must be different samples).
        min_margin: drop prompts whose ``best - worst`` score is below this. Pairs with zero margin or identical
            texts are always dropped — they state no preference.
        max_new_tokens, temperature, top_k, top_p, batch_size: sampling settings (``batch_size`` sequences per
            generate call and per reward-model forward).
        seed: seeds the sampling.
        return_stats: also return a :class:`SynthesisStats`.
        sampler: the generation backend (:func:`~trl_extras.modeling.generation.make_sampler`; ``None``: HF
            ``generate``); an engine with its own weights (vLLM) gets the policy's pushed first.

    Returns:
        ``datasets.Dataset`` with ``id`` (``"synth-<prompt index>"``), ``prompt``, ``chosen``, ``rejected``,
        ``score_chosen``, ``score_rejected`` (``(dataset, stats)`` with ``return_stats=True``). Conversational
        prompts give conversational chosen/rejected (``[{"role": "assistant", ...}]``).
    """
    from datasets import Dataset

    from ..modeling.generation import generate_rollouts, sampler_for
    from ..rewards.functions import RewardFunctions

    if n < 2:
        raise ValueError(f"n must be >= 2 to pick a best and a worst answer per prompt, got n={n}")
    if min_margin < 0:
        raise ValueError(f"min_margin must be >= 0, got {min_margin}")
    prompts = prompts_from(prompts)
    scorer = RewardFunctions(reward, reward_processing_classes, reward_weights, batch_size=batch_size)
    model, tokenizer = load_policy(policy, processing_class, "policy")
    padding_side = tokenizer.padding_side
    torch.manual_seed(seed)
    try:
        rollout = generate_rollouts(
            model,
            tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            num_generations=n,
            batch_size=batch_size,
            progress=progress,
            desc="Sampling candidates",
            sampler=sampler_for(model, sampler),
        )
    finally:
        tokenizer.padding_side = padding_side
    scores = scorer(rollout.prompts, rollout.completions).total.view(len(prompts), n)
    best, worst, margin = select_best_worst(scores, min_margin)

    rows = {k: [] for k in ("id", "prompt", "chosen", "rejected", "score_chosen", "score_rejected")}
    no_pref = low_margin = 0
    for i, prompt in enumerate(prompts):
        chosen = rollout.completions[i * n + best[i].item()]
        rejected = rollout.completions[i * n + worst[i].item()]
        if margin[i].item() <= 0 or chosen == rejected:
            no_pref += 1
            continue
        if margin[i].item() < min_margin:
            low_margin += 1
            continue
        rows["id"].append(f"synth-{i}")
        rows["prompt"].append(prompt)
        rows["chosen"].append(chosen)
        rows["rejected"].append(rejected)
        rows["score_chosen"].append(scores[i, best[i]].item())
        rows["score_rejected"].append(scores[i, worst[i]].item())
    kept = len(rows["id"])
    stats = SynthesisStats(
        num_prompts=len(prompts),
        num_pairs=kept,
        skipped_no_preference=no_pref,
        skipped_low_margin=low_margin,
        empty_answers=sum(_is_empty(c) for c in rollout.completions),
        mean_margin=float(sum(c - r for c, r in zip(rows["score_chosen"], rows["score_rejected"])) / kept) if kept else 0.0,
    )
    logger.info("Synthesized %d pairs from %d prompts (%s)", kept, len(prompts), stats)
    if kept == 0:
        logger.warning(
            "No preference pair survived (%d prompts without preference, %d below min_margin=%s).",
            no_pref, low_margin, min_margin,
        )
    dataset = Dataset.from_dict(rows)
    return (dataset, stats) if return_stats else dataset


def run_two_stage_dpo(
    model,
    synthetic_dataset,
    real_dataset,
    args,
    processing_class=None,
    stage2_args=None,
    peft_config=None,
    callbacks=None,
):
    """The article's two-stage DPO: ``DPOTrainer`` on synthetic pairs, then on real pairs from the stage-1 model.

    Stage 1 trains ``model`` on ``synthetic_dataset`` with ``args`` (output in ``<args.output_dir>/stage1_synthetic``)
    and saves the result there. Stage 2 starts from that saved model — so its DPO reference is the stage-1 policy
    (TRL reloads the reference from the model's path) — and trains on ``real_dataset`` with ``stage2_args``
    (default: a copy of ``args``), output in ``<args.output_dir>/stage2_real``. With ``peft_config`` the stage-1
    adapter is merged into a full checkpoint in ``<args.output_dir>/stage1_synthetic_merged``, where stage 2 starts
    with a fresh adapter (its reference: the adapter-disabled model = the stage-1 policy).

    Returns ``(stage1_trainer, stage2_trainer)``; the final model is ``stage2_trainer.model``.
    """
    import copy

    from trl import DPOTrainer

    for name, ds in (("synthetic_dataset", synthetic_dataset), ("real_dataset", real_dataset)):
        if ds is None or len(ds) == 0:
            raise ValueError(f"{name} is empty: two-stage DPO needs pairs for both stages.")
        missing = {"chosen", "rejected"} - set(ds.column_names)
        if missing:
            raise ValueError(f"{name} lacks preference columns {sorted(missing)} (columns: {ds.column_names}).")
    root = args.output_dir
    stage1_dir = os.path.join(root, "stage1_synthetic")
    stage2_dir = os.path.join(root, "stage2_real")
    # copies with another output_dir (re-running __post_init__ through dataclasses.replace is not idempotent)
    args1, args2 = copy.deepcopy(args), copy.deepcopy(stage2_args or args)
    args1.output_dir, args2.output_dir = stage1_dir, stage2_dir

    trainer1 = DPOTrainer(
        model=model,
        args=args1,
        train_dataset=synthetic_dataset,
        processing_class=processing_class,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    trainer1.train()
    trainer1.save_model(stage1_dir)
    tokenizer = trainer1.processing_class
    tokenizer.save_pretrained(stage1_dir)
    model1, stage2_init = trainer1.model, stage1_dir
    if peft_config is not None:
        # merge the stage-1 adapter so stage 2 trains a fresh adapter on top of (and anchored to) the stage-1 policy;
        # the merged model goes to its own directory: next to stage 1's adapter files, from_pretrained would load
        # the adapter again on top of the merged weights (and the result cannot be saved with peft < 0.22)
        stage2_init = os.path.join(root, "stage1_synthetic_merged")
        model1.merge_and_unload().save_pretrained(stage2_init)
        tokenizer.save_pretrained(stage2_init)
    trainer2 = DPOTrainer(
        model=stage2_init,
        args=args2,
        train_dataset=real_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    trainer2.train()
    return trainer1, trainer2
