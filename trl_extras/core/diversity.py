"""Diversity of sampled answers: distinct-n (Li et al. 2016) and mean token entropy of the policy.

The article notes that CEM works only while the model still produces varied answers and that one round of
best-of-N fine-tuning removes much of that variety. These measures track it round by round:

* ``distinct_n``: unique n-grams / total n-grams over a set of texts (Li et al. 2016, "A Diversity-Promoting
  Objective Function for Neural Conversation Models"). ``grouped_distinct_n`` averages it over the N samples of
  each prompt, which is the variety best-of-N selection can exploit.
* ``mean_token_entropy``: the policy's per-token entropy averaged over completion tokens (the ``(B, T)``
  entropies come from ``trl_extras.modeling.lm.completion_entropies``, which runs the model: not core's job).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def _as_text(x) -> str:
    if isinstance(x, str):
        return x
    if isinstance(x, list) and x and isinstance(x[-1], dict):
        return str(x[-1].get("content", ""))
    raise TypeError(f"Expected a string or a list of messages, got {type(x).__name__}")


def distinct_n(texts: Sequence, n: int, tokenize: Callable[[str], list] | None = None) -> float:
    """Distinct-n of a set of texts: ``#unique n-grams / #n-grams`` pooled over all texts, in ``[0, 1]``.

    Args:
        texts: strings (or conversational completions: the last message's content).
        n: n-gram order (>= 1).
        tokenize: splits a text into tokens; whitespace split by default.

    Returns:
        0.0 when the texts hold no n-gram at all.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    tokenize = tokenize or str.split
    total, unique = 0, set()
    for text in texts:
        tokens = tokenize(_as_text(text))
        grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else 0.0


def grouped_distinct_n(
    texts: Sequence, group_index: torch.Tensor | Sequence[int], n: int, tokenize: Callable[[str], list] | None = None
) -> float:
    """Mean over groups (prompts) of ``distinct_n`` of each group's texts. ``group_index``: ``(N,)``."""
    groups: dict[int, list] = {}
    for text, g in zip(texts, torch.as_tensor(group_index).tolist()):
        groups.setdefault(int(g), []).append(text)
    if not groups:
        return 0.0
    return sum(distinct_n(v, n, tokenize) for v in groups.values()) / len(groups)


def unique_fraction(texts: Sequence, group_index: torch.Tensor | Sequence[int]) -> float:
    """Mean over groups of ``#distinct answers / #answers``: 1/N when a prompt always gets the same answer."""
    groups: dict[int, list] = {}
    for text, g in zip(texts, torch.as_tensor(group_index).tolist()):
        groups.setdefault(int(g), []).append(_as_text(text))
    if not groups:
        return 0.0
    return sum(len(set(v)) / len(v) for v in groups.values()) / len(groups)


def mean_token_entropy(entropies: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Mean of per-token entropies ``(B, T)`` over the positions where ``mask (B, T)`` is nonzero (nats)."""
    if mask is None:
        return float(entropies.float().mean()) if entropies.numel() else 0.0
    if mask.shape != entropies.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != entropies shape {tuple(entropies.shape)}")
    m = mask.float()
    count = m.sum()
    if count == 0:
        raise ValueError("mean_token_entropy: the mask selects no token.")
    return float((entropies.float() * m).sum() / count)
