"""Comparisons of the current policy's answers with a baseline's answers: the article's "second way" data.

The article (YandexGPT, "Domain Shift aka Goodhart's Law"): "You train the PPO model, make it generate an answer to each
query from a dataset, and then ask your AI trainers to decide which model gave a better answer: SFT or PPO. After the
labeling is done, you add it to the dataset for fine-tuning the reward model and do the drill."

:func:`collect_comparisons` samples one answer from each model per fresh prompt through the shared generation path
(:func:`trl_extras.modeling.generation.generate_rollouts`) and returns rows

``id, prompt, answer_a, answer_b, origin_a, origin_b``

with the two answers in random order (the article's "baby duck syndrome": people prefer whatever they see first) and
the origin of each answer recorded in ``origin_a``/``origin_b`` but never shown to the labeller (the export drops it).
Ids are stable: ``<id_prefix><index>-<8 hex of sha1(prompt, answers)>``, the same for the same settings and seed.
"""

from __future__ import annotations

import hashlib
import json
import random

ORIGIN_POLICY = "policy"
ORIGIN_BASELINE = "baseline"
COMPARISON_COLUMNS = ("id", "prompt", "answer_a", "answer_b", "origin_a", "origin_b")


def comparison_id(prefix: str, index: int, prompt, answer_a, answer_b) -> str:
    """A stable row id: the position and a short content hash (so an edited prompt/answer does not match)."""
    blob = json.dumps([prompt, sorted([json.dumps(answer_a), json.dumps(answer_b)])], sort_keys=True)
    return f"{prefix}{index:05d}-{hashlib.sha1(blob.encode()).hexdigest()[:8]}"


def _text(x) -> str:
    return x[-1].get("content", "") if isinstance(x, list) and x and isinstance(x[-1], dict) else str(x)


def pair_up(prompts: list, policy_answers: list, baseline_answers: list, seed: int = 0, id_prefix: str = "cmp-",
            drop_identical: bool = True) -> tuple[dict, int]:
    """Rows of comparisons (columns :data:`COMPARISON_COLUMNS`) from aligned answer lists; pure, no models.

    Each row's order is drawn from ``random.Random(seed)``: A is the policy's answer with probability 1/2.
    ``drop_identical`` leaves out prompts where both answers are the same text (there is nothing to compare).
    Returns ``(columns, number of identical pairs dropped)``.
    """
    if not (len(prompts) == len(policy_answers) == len(baseline_answers)):
        raise ValueError(
            f"{len(prompts)} prompts, {len(policy_answers)} policy answers and {len(baseline_answers)} baseline "
            "answers: one of each per prompt is needed."
        )
    rng = random.Random(seed)
    rows = {c: [] for c in COMPARISON_COLUMNS}
    dropped = 0
    for prompt, p, b in zip(prompts, policy_answers, baseline_answers):
        swap = rng.random() < 0.5  # drawn for every prompt, so the order of a row does not depend on drops before it
        if drop_identical and _text(p).strip() == _text(b).strip():
            dropped += 1
            continue
        (a, origin_a), (bb, origin_b) = ((b, ORIGIN_BASELINE), (p, ORIGIN_POLICY)) if swap else (
            (p, ORIGIN_POLICY), (b, ORIGIN_BASELINE))
        rows["id"].append(comparison_id(id_prefix, len(rows["id"]), prompt, a, bb))
        rows["prompt"].append(prompt)
        rows["answer_a"].append(a)
        rows["answer_b"].append(bb)
        rows["origin_a"].append(origin_a)
        rows["origin_b"].append(origin_b)
    return rows, dropped


def collect_comparisons(
    policy,
    baseline,
    prompts,
    num_pairs: int | None = None,
    *,
    processing_class=None,
    baseline_processing_class=None,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    batch_size: int = 64,
    max_prompt_length: int | None = None,
    seed: int = 0,
    id_prefix: str = "cmp-",
    drop_identical: bool = True,
    accelerator=None,
    sampler=None,
):
    """Answer ``num_pairs`` prompts with ``policy`` and with ``baseline``; one comparison row per prompt.

    Args:
        policy, baseline: causal LMs (instances or paths). The baseline is the SFT model or the previous round's
            policy. Both must share a tokenizer's text format (each gets its own tokenizer if given).
        prompts: a list of prompts or a dataset with a ``prompt`` column; the first ``num_pairs`` are used (pass
            prompts the reward model has not been refreshed on).
        num_pairs: prompts to use (None: all). More than available is an error.
        max_new_tokens, temperature, top_k, top_p: sampling (``temperature=0``: greedy), the same for both models.
        seed: seeds sampling (each model's draw) and the A/B order.
        id_prefix: prefix of the row ids (e.g. ``"r2-"`` for round 2) so ids stay unique across rounds.
        drop_identical: leave out prompts whose two answers are identical (logged; nothing to label).
        sampler: the generation backend for both models (:func:`~trl_extras.modeling.generation.make_sampler`;
            ``None``: HF ``generate``); an engine with its own weights (vLLM) gets each model's pushed before it samples.

    Returns:
        ``datasets.Dataset`` with columns ``id, prompt, answer_a, answer_b, origin_a, origin_b`` (origins are
        ``"policy"``/``"baseline"``; :func:`~trl_extras.refresh.labeling.export_for_labeling` leaves them out).
        ``dataset.info.description`` holds a JSON note with the number of identical pairs dropped.
    """
    import torch
    from datasets import Dataset

    from ..evaluation._common import load_policy, prompts_from
    from ..modeling.generation import generate_rollouts, sampler_for

    prompts = prompts_from(prompts, what="comparison prompts")
    if num_pairs is not None:
        if num_pairs < 1:
            raise ValueError(f"num_pairs must be >= 1, got {num_pairs}.")
        if num_pairs > len(prompts):
            raise ValueError(f"num_pairs={num_pairs} but only {len(prompts)} prompts are left: no prompts for a full round.")
        prompts = prompts[:num_pairs]
    policy, processing_class = load_policy(policy, processing_class, role="policy")
    baseline, baseline_processing_class = load_policy(
        baseline, baseline_processing_class or processing_class, role="baseline"
    )
    answers = []
    rng_state = torch.random.get_rng_state()
    try:
        for k, (model, tok) in enumerate(((policy, processing_class), (baseline, baseline_processing_class))):
            torch.manual_seed(seed * 2 + k)
            padding_side = tok.padding_side
            try:
                rollout = generate_rollouts(
                    model, tok, prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                    top_p=top_p, batch_size=batch_size, max_prompt_length=max_prompt_length, accelerator=accelerator,
                    sampler=sampler_for(model, sampler),
                )
            finally:
                tok.padding_side = padding_side
            answers.append(rollout.completions)
    finally:
        torch.random.set_rng_state(rng_state)
    rows, dropped = pair_up(prompts, answers[0], answers[1], seed=seed, id_prefix=id_prefix,
                            drop_identical=drop_identical)
    if not rows["id"]:
        raise ValueError(
            f"All {len(prompts)} comparisons had identical answers from the policy and the baseline: nothing to label. "
            "Sample at a higher temperature or compare with a different baseline."
        )
    ds = Dataset.from_dict(rows)
    ds.info.description = json.dumps({"num_prompts": len(prompts), "identical_dropped": dropped})
    return ds
