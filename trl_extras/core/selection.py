"""Elite selection for the cross-entropy method (CEM): which of N sampled answers per prompt to fine-tune on.

All functions take flat per-sample tensors: ``rewards (N,)`` and ``group_index (N,)`` (the prompt each sample came
from, as :class:`trl_extras.modeling.generation.Rollout` holds it) and return a boolean mask ``(N,)``. An optional
``candidates (N,)`` mask removes samples from consideration first (empty answers, duplicates), so that e.g. top-k
picks k *distinct, non-empty* answers.

References: Rubinstein 1999 (the cross-entropy method: keep the samples above the ``rho`` quantile, refit);
the article's "poor man's RL" (best-of-N, i.e. top-1 per prompt); trlx's RFT trainer (a per-prompt percentile
that rises from ``start`` to ``end`` over the improve steps).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .registry import Registry

#: CEM elite rules. Each entry is ``fn(rewards (N,), group_index (N,), value, candidates (N,) bool) -> (N,) bool``;
#: :func:`select_elites` keeps the samples that pass every rule that is set (``elite_<name>`` in ``CEMConfig``,
#: or ``extra_rules={name: value}``).
ELITE_RULES = Registry("CEM elite rule")


def _check(rewards: torch.Tensor, group_index: torch.Tensor, candidates: torch.Tensor | None) -> torch.Tensor:
    if rewards.dim() != 1 or group_index.dim() != 1 or rewards.shape != group_index.shape:
        raise ValueError(
            f"rewards and group_index must be 1-D of the same length, got {tuple(rewards.shape)} and "
            f"{tuple(group_index.shape)}"
        )
    if torch.isnan(rewards).any():
        raise ValueError("rewards contain NaN; elite selection needs finite rewards.")
    if candidates is None:
        return torch.ones_like(rewards, dtype=torch.bool)
    if candidates.shape != rewards.shape:
        raise ValueError(f"candidates has shape {tuple(candidates.shape)}, expected {tuple(rewards.shape)}")
    return candidates.bool()


def select_top_k(
    rewards: torch.Tensor, group_index: torch.Tensor, k: int, candidates: torch.Tensor | None = None
) -> torch.Tensor:
    """The ``k`` highest-reward samples of each group (``k=1``: best-of-N). Ties go to the earlier sample.

    Args:
        rewards: ``(N,)`` scores.
        group_index: ``(N,)`` group (prompt) id of each sample.
        k: samples kept per group (fewer when a group has fewer candidates).
        candidates: optional ``(N,)`` bool mask of samples eligible for selection.

    Returns:
        ``(N,)`` bool mask.
    """
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {k}")
    candidates = _check(rewards, group_index, candidates)
    # Sort by (group, -reward, position) with two stable sorts, then rank within each group.
    order = torch.argsort(rewards, descending=True, stable=True)
    order = order[torch.argsort(group_index[order], stable=True)]
    order = order[candidates[order]]
    groups = group_index[order]
    is_start = torch.ones_like(groups, dtype=torch.bool)
    is_start[1:] = groups[1:] != groups[:-1]
    start_pos = torch.cummax(torch.where(is_start, torch.arange(len(groups)), 0), 0).values
    rank = torch.arange(len(groups)) - start_pos
    mask = torch.zeros_like(rewards, dtype=torch.bool)
    mask[order[rank < k]] = True
    return mask


def select_quantile(
    rewards: torch.Tensor, group_index: torch.Tensor, quantile: float, candidates: torch.Tensor | None = None
) -> torch.Tensor:
    """Samples whose reward is at or above their group's ``quantile`` (the CEM elite set, per prompt).

    ``quantile=0.75`` keeps roughly the top quarter of each prompt's samples; the group maximum is always kept.
    Quantiles use linear interpolation (``torch.quantile``) over the group's candidates.

    Args:
        rewards: ``(N,)``; group_index: ``(N,)``; quantile: in ``[0, 1]``; candidates: optional ``(N,)`` bool.

    Returns:
        ``(N,)`` bool mask.
    """
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    candidates = _check(rewards, group_index, candidates)
    mask = torch.zeros_like(rewards, dtype=torch.bool)
    for g in torch.unique(group_index):
        members = (group_index == g) & candidates
        if not members.any():
            continue
        cut = torch.quantile(rewards[members].double(), quantile)
        mask |= members & (rewards.double() >= cut)
    return mask


def select_threshold(rewards: torch.Tensor, threshold: float, candidates: torch.Tensor | None = None) -> torch.Tensor:
    """Samples with ``reward >= threshold`` (an absolute bar, prompt-independent). Shapes ``(N,) -> (N,)``."""
    candidates = _check(rewards, torch.zeros_like(rewards, dtype=torch.long), candidates)
    return candidates & (rewards >= threshold)


@ELITE_RULES.register("top_k")
def _rule_top_k(rewards, group_index, value, candidates):
    """The best ``value`` samples per prompt."""
    return select_top_k(rewards, group_index, int(value), candidates)


@ELITE_RULES.register("quantile")
def _rule_quantile(rewards, group_index, value, candidates):
    """Samples at or above the prompt's ``value`` quantile."""
    return select_quantile(rewards, group_index, float(value), candidates)


@ELITE_RULES.register("threshold")
def _rule_threshold(rewards, group_index, value, candidates):
    """Samples with reward >= ``value`` (an absolute floor)."""
    return select_threshold(rewards, float(value), candidates)


def dedupe(completions: Sequence, group_index: torch.Tensor) -> torch.Tensor:
    """``(N,)`` mask keeping the first occurrence of each completion within its group.

    Completions may be strings or conversational message lists (compared by their ``content``).
    """
    if len(completions) != len(group_index):
        raise ValueError(f"{len(completions)} completions but {len(group_index)} group indices")
    seen = set()
    mask = torch.zeros(len(completions), dtype=torch.bool)
    for i, (text, g) in enumerate(zip(completions, group_index.tolist())):
        key = (g, _text_key(text))
        if key not in seen:
            seen.add(key)
            mask[i] = True
    return mask


def _text_key(completion) -> str:
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "\x00".join(str(m.get("content", "")) if isinstance(m, dict) else str(m) for m in completion)
    return str(completion)


def quantile_schedule(round: int, num_rounds: int, start: float, end: float) -> float:
    """Linear schedule of the elite quantile: ``start`` at round 0, ``end`` at the last round (trlx RFT style).

    Raising the quantile over rounds keeps fewer, better answers as the policy improves.
    """
    if num_rounds < 1:
        raise ValueError(f"num_rounds must be >= 1, got {num_rounds}")
    if not 0 <= round < num_rounds:
        raise ValueError(f"round must be in [0, {num_rounds}), got {round}")
    if num_rounds == 1:
        return float(start)
    return float(start + (end - start) * round / (num_rounds - 1))


def select_elites(
    rewards: torch.Tensor,
    group_index: torch.Tensor,
    *,
    top_k: int | None = None,
    quantile: float | None = None,
    threshold: float | None = None,
    dedupe_texts: Sequence | None = None,
    valid: torch.Tensor | None = None,
    extra_rules: dict | None = None,
) -> torch.Tensor:
    """Combined elite rule: a sample is an elite when it passes every rule that is set.

    Order: candidates = ``valid`` (e.g. non-empty answers) AND first-occurrence (when ``dedupe_texts`` is given);
    then ``top_k`` and ``quantile`` are taken among the candidates of each group, and ``threshold`` applies as an
    absolute floor.

    Args:
        rewards: ``(N,)``; group_index: ``(N,)``.
        top_k: keep the best ``k`` per group.
        quantile: keep samples at or above the group's quantile.
        threshold: keep samples with reward >= threshold.
        dedupe_texts: the ``N`` completions; duplicates within a group are dropped before ranking.
        valid: ``(N,)`` bool mask of usable samples.
        extra_rules: ``{name: value}`` of further :data:`ELITE_RULES` entries (a registered variant).

    Returns:
        ``(N,)`` bool mask of elites.
    """
    rules = {"top_k": top_k, "quantile": quantile, "threshold": threshold, **(extra_rules or {})}
    rules = {name: value for name, value in rules.items() if value is not None}
    if not rules:
        raise ValueError(f"Set at least one elite rule: one of {tuple(ELITE_RULES)}.")
    entries = {name: ELITE_RULES.get(name) for name in rules}  # unknown names fail before any work
    candidates = _check(rewards, group_index, valid)
    if dedupe_texts is not None:
        candidates = candidates & dedupe(dedupe_texts, group_index)
    mask = candidates.clone()
    for name, value in rules.items():
        mask &= entries[name](rewards, group_index, value, candidates)
    return mask
