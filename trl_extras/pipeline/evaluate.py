"""Evaluation of a policy on holdout prompts: gold and proxy reward, KL to the SFT model, side-by-side vs SFT.

One sampling pass per model (the shared rollout path); the same completions feed every metric and the
side-by-side test, so numbers in the report are consistent with each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..core.stats import mean_ci
from ..evaluation.measure import measure_policy


@dataclass
class PolicyEvaluation:
    """Holdout metrics of one policy. ``kl_to_sft``: mean over samples of Σ_t exact KL(π‖π_sft) (nats)."""

    name: str
    gold_mean: float | None
    gold_ci: tuple[float, float] | None
    proxy_mean: float | None  # None: measured without the proxy (a gold-only pass)
    kl_to_sft: float | None  # None: measured without the SFT model
    mean_length: float
    completions: list
    gold: list[float] | None = None
    proxy: list[float] | None = None
    extra: dict | None = None  # mean of each extra (monitoring-only) reward

    def row(self) -> dict:
        return {
            "method": self.name,
            "gold": self.gold_mean,
            "gold_ci": self.gold_ci,
            "proxy": self.proxy_mean,
            "kl_to_sft": self.kl_to_sft,
            "length": self.mean_length,
            **(self.extra or {}),
        }


def evaluate_policy(
    name: str,
    model,
    tokenizer,
    sft_model,
    prompts: list,
    proxy_reward=None,
    gold_reward=None,
    max_new_tokens: int = 24,
    temperature: float = 1.0,
    batch_size: int = 128,
    seed: int = 0,
    extra_rewards: dict | None = None,
) -> PolicyEvaluation:
    """Sample one completion per prompt at ``temperature`` (0: greedy) and measure it (see :class:`PolicyEvaluation`).

    Through :func:`~trl_extras.evaluation.measure.measure_policy` (the shared measuring path). ``proxy_reward=None``
    or ``sft_model=None`` skip those measurements (their fields are ``None``): a gold-only pass costs generation only,
    which is what the pipeline's second (greedy) decoding needs on a real model."""
    if proxy_reward is None and gold_reward is None:
        raise ValueError("evaluate_policy needs a proxy_reward or a gold_reward to measure.")
    funcs = {**({"proxy": proxy_reward} if proxy_reward is not None else {}),
             **({"gold": gold_reward} if gold_reward is not None else {}), **(extra_rewards or {})}
    m = measure_policy(
        model, tokenizer, prompts, funcs, sft_model, max_new_tokens=max_new_tokens, temperature=temperature,
        batch_size=batch_size, seed=seed,
    )
    proxy, gold = m.rewards.get("proxy"), m.rewards.get("gold")
    extra = {key: m.mean(key) for key in (extra_rewards or {})}
    gold_mean, gold_ci = (None, None)
    if gold is not None:
        gold_mean, low, high = mean_ci(gold)
        gold_ci = (low, high)
    return PolicyEvaluation(
        name=name,
        gold_mean=gold_mean,
        gold_ci=gold_ci,
        proxy_mean=m.mean("proxy") if proxy is not None else None,
        kl_to_sft=float(sum(m.kl) / len(m.kl)) if m.kl is not None else None,
        mean_length=float(sum(m.lengths) / len(m.lengths)),
        completions=m.completions,
        gold=gold,
        proxy=proxy,
        extra=extra,
    )


def fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}" if abs(x) >= 10 ** -digits or x == 0 else f"{x:.1e}"
    return str(x)
