"""Side-by-side ("sbs") comparison of two models with a binomial sign test.

The article picks models by side-by-side superiority on a holdout set of requests and checks significance with the
binomial test. ``side_by_side`` generates an answer from each model for every prompt (the shared
:func:`trl_extras.modeling.generation.generate_rollouts` path), judges each pair, and reports wins/losses/ties of model A
over model B, the win rate with a Wilson or Clopper–Pearson interval and the two-sided binomial p-value.

Two kinds of judge:

* **Reward judge** — a reward-model path or instance, a reward callable ``f(prompts, completions, **kw)``, a
  ``RewardEnsemble``, or a list of them (summed through :class:`~trl_extras.rewards.functions.RewardFunctions`).
  Both answers are scored; A wins when ``score_a - score_b > tie_tolerance``, loses when it is
  ``< -tie_tolerance``, else tie. Scores do not depend on presentation order.
* **Pairwise judge** — ``judge(prompt, first, second) -> 0 | 1 | None`` (0: ``first`` is better, 1: ``second``,
  None: tie). Pairwise judges (humans, LLMs) have a position bias (MT-Bench, Zheng et al. 2023: GPT-4 changes its
  verdict on ~35% of swapped pairs). ``order="random"`` shows A first on a seeded coin flip per prompt;
  ``order="both"`` asks in both orders and counts a win only when both orders agree — a disagreement is a tie
  (MT-Bench's conservative rule). ``result.inconsistent`` counts those disagreements.

Ties are excluded from the binomial test and from the win rate (``wins / (wins + losses)``): a tie is no evidence
for either model. With no decisive pair the p-value is 1.0, the win rate 0.5 and its interval (0, 1).
"""

from __future__ import annotations

import inspect
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.stats import binomial_test, win_rate_interval
from ._common import load_policy, prompts_from

_ORDERS = ("random", "both")


@dataclass
class SideBySideRecord:
    """One prompt's comparison. ``verdict`` is "a", "b" or "tie"; scores are None for pairwise judges."""

    prompt: object
    answer_a: object
    answer_b: object
    score_a: float | None
    score_b: float | None
    verdict: str
    judgments: list = field(default_factory=list)  # raw pairwise answers as (a_shown_first, judge_output)


@dataclass
class SideBySideResult:
    """Outcome of :func:`side_by_side`, counted for model A against model B.

    ``win_rate = wins / (wins + losses)`` (ties excluded, 0.5 when there is no decisive pair), ``win_rate_ci`` its
    interval by ``ci_method`` at ``confidence``, ``p_value`` the two-sided binomial test of wins vs losses.
    """

    wins: int
    losses: int
    ties: int
    n: int
    win_rate: float
    win_rate_ci: tuple[float, float]
    p_value: float
    ci_method: str = "wilson"
    confidence: float = 0.95
    judge_kind: str = "reward"
    order: str = "random"
    inconsistent: int = 0
    records: list[SideBySideRecord] = field(default_factory=list)
    name_a: str = "A"  # how the summary names the models (see `side_by_side`'s name_a / name_b)
    name_b: str = "B"

    @property
    def tie_rate(self) -> float:
        return self.ties / self.n if self.n else 0.0

    def to_dict(self, with_records: bool = True) -> dict:
        out = asdict(self)
        out["win_rate_ci"] = list(self.win_rate_ci)
        out["tie_rate"] = self.tie_rate
        if not with_records:
            out.pop("records")
        return out

    def to_json(self, path, with_records: bool = True) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(with_records), f, indent=2, default=str)

    def summary(self) -> str:
        low, high = self.win_rate_ci
        significant = "significant" if self.p_value < 1 - self.confidence else "not significant"
        a, b = self.name_a, self.name_b
        text = (
            f"{a} vs {b} on {self.n} prompts: {a} has {self.wins} wins, {self.losses} losses, {self.ties} ties; "
            f"{a}'s win rate {self.win_rate:.3f} ({self.confidence:.0%} {self.ci_method} CI {low:.3f}-{high:.3f}); "
            f"binomial p = {self.p_value:.3g} ({significant} at {1 - self.confidence:.2g})"
        )
        if self.judge_kind == "pairwise" and self.order == "both":
            text += f"; {self.inconsistent} pairs judged inconsistently across orders (counted as ties)"
        return text


def summarize_verdicts(
    verdicts: list[str], ci_method: str = "wilson", confidence: float = 0.95
) -> tuple[int, int, int, float, tuple[float, float], float]:
    """``(wins, losses, ties, win_rate, win_rate_ci, p_value)`` from "a"/"b"/"tie" verdicts (ties excluded)."""
    bad = sorted({v for v in verdicts} - {"a", "b", "tie"})
    if bad:
        raise ValueError(f"Unknown verdicts {bad}; expected 'a', 'b' or 'tie'.")
    wins, losses = verdicts.count("a"), verdicts.count("b")
    decisive = wins + losses
    win_rate = wins / decisive if decisive else 0.5
    ci = win_rate_interval(wins, decisive, method=ci_method, confidence=confidence)
    return wins, losses, len(verdicts) - decisive, win_rate, ci, binomial_test(wins, losses)


def model_name(model, default: str) -> str:
    """A readable name for a compared model: a path's last folder, a model instance's ``name_or_path`` last folder,
    else ``default`` (precomputed answers, an unnamed instance)."""
    path = model if isinstance(model, (str, Path)) else getattr(model, "name_or_path", None)
    if not path and getattr(model, "config", None) is not None:
        path = getattr(model.config, "_name_or_path", None)
    name = str(path).rstrip("/").split("/")[-1] if path else ""
    return name or default


def model_names(model_a, model_b, name_a: str | None = None, name_b: str | None = None) -> tuple[str, str]:
    """``(name_a, name_b)`` for the summary: the given names, else :func:`model_name`; equal names are told apart
    with " (A)" / " (B)"."""
    a = name_a or model_name(model_a, "A")
    b = name_b or model_name(model_b, "B")
    if a == b:
        a, b = f"{a} (A)", f"{b} (B)"
    return a, b


def reward_verdict(score_a: float, score_b: float, tie_tolerance: float = 0.0) -> str:
    """"a" if ``score_a - score_b > tie_tolerance``, "b" if ``< -tie_tolerance``, else "tie"."""
    diff = score_a - score_b
    return "a" if diff > tie_tolerance else "b" if diff < -tie_tolerance else "tie"


def combine_both_orders(a_first: int | None, b_first: int | None) -> str:
    """MT-Bench rule for a pairwise judge asked twice: A first (0 = A better) then B first (1 = A better).

    A wins only when both orders prefer A, B only when both prefer B; anything else is a tie.
    """
    a_pref = {0: "a", 1: "b", None: "tie"}[a_first]
    b_pref = {0: "b", 1: "a", None: "tie"}[b_first]
    return a_pref if a_pref == b_pref else "tie"


def _is_pairwise_judge(judge) -> bool:
    """A plain callable whose signature does not take ``completions`` is a pairwise judge ``(prompt, first, second)``."""
    from transformers import PreTrainedModel

    from ..rewards.ensemble import RewardEnsemble
    from ..rewards.source import RewardSource

    if isinstance(judge, (str, list, tuple, PreTrainedModel)) or not callable(judge):
        return False
    if isinstance(judge, (RewardSource, RewardEnsemble)):  # reward sources score (prompts, completions)
        return False
    try:
        params = inspect.signature(judge).parameters
    except (TypeError, ValueError):
        return False
    return "completions" not in params


def _check_judgment(value, prompt_index: int):
    if value is None or (not isinstance(value, bool) and value in (0, 1)):
        return None if value is None else int(value)
    raise ValueError(f"Pairwise judge returned {value!r} for prompt {prompt_index}; expected 0, 1 or None.")


def _answers(model, processing_class, prompts, role, seed, generation_kwargs) -> list:
    """Completions of ``model`` for ``prompts``, or ``model`` itself when it is a list of precomputed answers."""
    import torch

    if isinstance(model, (list, tuple)):
        if len(model) != len(prompts):
            raise ValueError(f"{role}: {len(model)} precomputed completions for {len(prompts)} prompts.")
        return list(model)
    from ..modeling.generation import generate_rollouts, sampler_for

    model, tokenizer = load_policy(model, processing_class, role)
    padding_side = tokenizer.padding_side
    torch.manual_seed(seed)  # each side its own seed: identical models still draw independent samples
    try:
        sampler = sampler_for(model, generation_kwargs.pop("sampler", None))  # each side's weights in the engine
        rollout = generate_rollouts(
            model, tokenizer, prompts, desc=f"Generating ({role})", sampler=sampler, **generation_kwargs
        )
    finally:
        tokenizer.padding_side = padding_side
    return rollout.completions


def side_by_side(
    model_a,
    model_b,
    prompts,
    judge,
    processing_class=None,
    processing_class_b=None,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    tie_tolerance: float = 0.0,
    order: str = "random",
    seed: int = 0,
    batch_size: int = 64,
    ci_method: str = "wilson",
    confidence: float = 0.95,
    judge_kind: str = "auto",
    reward_processing_classes=None,
    progress: bool = False,
    name_a: str | None = None,
    name_b: str | None = None,
    sampler=None,
) -> SideBySideResult:
    """Compare model A with model B on ``prompts`` and test whether A is better (or worse) than B.

    Args:
        model_a, model_b: a causal-LM path, a model instance (with ``processing_class`` / ``processing_class_b``,
            or loadable tokenizer at ``config._name_or_path``), or a list of precomputed completions (one per prompt).
        prompts: a list of prompts (text or conversational) or a dataset with a ``prompt`` column.
        judge: reward judge (reward-model path/instance, reward callable ``f(prompts, completions, **kw)``,
            ``RewardEnsemble``, or a list of them) or pairwise judge ``judge(prompt, first, second) -> 0|1|None``.
        processing_class_b: tokenizer of model B (defaults to ``processing_class``).
        max_new_tokens, temperature, top_k, top_p: sampling settings for both models (``temperature=0``: greedy).
        tie_tolerance: reward judge only: score differences with ``|diff| <= tie_tolerance`` are ties.
        order: pairwise judge only: "random" (A shown first on a seeded coin flip) or "both" (win only if both
            orders agree; MT-Bench).
        seed: seeds generation (A with ``seed``, B with ``seed + 1``) and the presentation order.
        ci_method: "wilson" or "clopper-pearson"; ``confidence`` its level (and the significance level reported).
        judge_kind: "auto" (a callable without a ``completions`` parameter is pairwise), "reward" or "pairwise".
        reward_processing_classes: tokenizers of reward-model instances given as ``judge``.
        name_a, name_b: the models' names in the summary; default: the last folder of a path (or of a model
            instance's ``name_or_path``), else "A" / "B"; equal names get " (A)" / " (B)" appended.
        sampler: the generation backend for both models (:func:`~trl_extras.modeling.generation.make_sampler`;
            ``None``: HF ``generate``); an engine with its own weights (vLLM) gets each model's pushed before it samples.

    Returns:
        :class:`SideBySideResult` with counts for A vs B, win rate and CI, p-value and per-prompt records.
    """
    prompts = prompts_from(prompts)
    if order not in _ORDERS:
        raise ValueError(f"order must be one of {_ORDERS}, got {order!r}")
    if tie_tolerance < 0:
        raise ValueError(f"tie_tolerance must be >= 0, got {tie_tolerance}")
    if judge_kind not in ("auto", "reward", "pairwise"):
        raise ValueError(f"judge_kind must be 'auto', 'reward' or 'pairwise', got {judge_kind!r}")
    if judge is None:
        raise ValueError("A judge is needed: a reward model/function or a pairwise judge callable.")
    win_rate_interval(0, 1, method=ci_method, confidence=confidence)  # validate early, before generating
    pairwise = _is_pairwise_judge(judge) if judge_kind == "auto" else judge_kind == "pairwise"
    if pairwise and not callable(judge):
        raise TypeError("A pairwise judge must be a callable judge(prompt, first, second) -> 0 | 1 | None.")

    generation_kwargs = dict(
        max_new_tokens=max_new_tokens,
        temperature=temperature,  # 0 = greedy (handled by the rollout path)
        top_k=top_k,
        top_p=top_p,
        batch_size=batch_size,
        progress=progress,
    )
    answers_a = _answers(model_a, processing_class, prompts, "model_a", seed, dict(generation_kwargs, sampler=sampler))
    answers_b = _answers(
        model_b, processing_class_b or processing_class, prompts, "model_b", seed + 1,
        dict(generation_kwargs, sampler=sampler),
    )

    records = []
    inconsistent = 0
    if not pairwise:
        from ..rewards.functions import RewardFunctions

        scorer = RewardFunctions(judge, reward_processing_classes=reward_processing_classes, batch_size=batch_size)
        # one call for both sides: A's answers then B's, so batch effects (e.g. ensemble calibration) are shared
        scores = scorer(prompts + prompts, answers_a + answers_b).total.tolist()
        scores_a, scores_b = scores[: len(prompts)], scores[len(prompts) :]
        for p, a, b, sa, sb in zip(prompts, answers_a, answers_b, scores_a, scores_b):
            records.append(SideBySideRecord(p, a, b, sa, sb, reward_verdict(sa, sb, tie_tolerance)))
    else:
        rng = random.Random(seed)
        for i, (p, a, b) in enumerate(zip(prompts, answers_a, answers_b)):
            if order == "both":
                j_ab = _check_judgment(judge(p, a, b), i)
                j_ba = _check_judgment(judge(p, b, a), i)
                verdict = combine_both_orders(j_ab, j_ba)
                single_ab = {0: "a", 1: "b", None: "tie"}[j_ab]
                single_ba = {0: "b", 1: "a", None: "tie"}[j_ba]
                inconsistent += single_ab != single_ba
                judgments = [(True, j_ab), (False, j_ba)]
            else:
                a_first = rng.random() < 0.5
                j = _check_judgment(judge(p, a, b) if a_first else judge(p, b, a), i)
                verdict = "tie" if j is None else ("a" if (j == 0) == a_first else "b")
                judgments = [(a_first, j)]
            records.append(SideBySideRecord(p, a, b, None, None, verdict, judgments))

    wins, losses, ties, win_rate, ci, p_value = summarize_verdicts([r.verdict for r in records], ci_method, confidence)
    name_a, name_b = model_names(model_a, model_b, name_a, name_b)
    return SideBySideResult(
        wins=wins,
        losses=losses,
        ties=ties,
        n=len(records),
        win_rate=win_rate,
        win_rate_ci=ci,
        p_value=p_value,
        ci_method=ci_method,
        confidence=confidence,
        judge_kind="pairwise" if pairwise else "reward",
        order=order,
        inconsistent=inconsistent,
        records=records,
        name_a=name_a,
        name_b=name_b,
    )
