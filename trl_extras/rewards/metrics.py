"""Reward-model evaluation: pairwise accuracy, accuracy on the hardest quartile, calibration error of σ(margin).

Pure functions over margin tensors ``(N,)`` (``r(chosen) − r(rejected)``, e.g. from
:func:`trl_extras.rewards.pairs.pair_margins`), plus :func:`evaluate_reward_model`, which scores a dataset and
returns all of them in one dict.

Conventions:
- accuracy counts a tie (margin exactly 0) as half right, so a constant model scores 0.5, not 0;
- with ``gold_margins`` a pair is right when its margin has the gold margin's sign (labels from gold, not from the
  dataset's possibly noisy ``chosen``); pairs whose gold margin is 0 have no right answer and are left out;
- "hard" pairs (Secrets of RLHF II's low preference strength) are the quarter with the smallest ``|gold margin|``.
"""

from __future__ import annotations

import math

import torch


def _as_1d(name: str, x) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float64).detach().cpu()
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D (N,), got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN/inf")
    return t


def _signed_correct(margins: torch.Tensor, target_sign: torch.Tensor) -> torch.Tensor:
    """1 where sign(margin) == target_sign (±1), 0.5 on a tie, else 0. Shapes ``(N,)``."""
    s = torch.sign(margins)
    return torch.where(s == 0, torch.full_like(s, 0.5), (s == target_sign).to(s.dtype))


def pairwise_accuracy(margins, gold_margins=None) -> float:
    """Fraction of pairs ranked right. ``margins (N,)``; ``gold_margins (N,)`` optional (see module docstring).

    Without gold margins the dataset's ``chosen`` is the label: right means ``margin > 0``.
    """
    m = _as_1d("margins", margins)
    if gold_margins is None:
        return float(_signed_correct(m, torch.ones_like(m)).mean())
    g = _as_1d("gold_margins", gold_margins)
    if g.shape != m.shape:
        raise ValueError(f"margins {tuple(m.shape)} and gold_margins {tuple(g.shape)} differ in shape")
    keep = g != 0
    if not keep.any():
        raise ValueError("Every gold margin is 0: no pair has a right answer")
    return float(_signed_correct(m[keep], torch.sign(g[keep])).mean())


def hard_quartile_accuracy(margins, gold_margins, fraction: float = 0.25) -> float:
    """Accuracy (against gold) on the ``fraction`` of pairs with the smallest ``|gold margin|`` (ties broken by index).

    ``margins (N,)``, ``gold_margins (N,)``; pairs with a zero gold margin are excluded before ranking.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    m, g = _as_1d("margins", margins), _as_1d("gold_margins", gold_margins)
    if g.shape != m.shape:
        raise ValueError(f"margins {tuple(m.shape)} and gold_margins {tuple(g.shape)} differ in shape")
    keep = (g != 0).nonzero().flatten()
    if keep.numel() == 0:
        raise ValueError("Every gold margin is 0: no pair has a right answer")
    k = max(1, math.ceil(fraction * keep.numel()))
    order = torch.sort(g[keep].abs(), stable=True).indices[:k]
    hard = keep[order]
    return float(_signed_correct(m[hard], torch.sign(g[hard])).mean())


def calibration_error(margins, labels_or_probs, n_bins: int = 10) -> float:
    """Expected calibration error of ``p = σ(margin)``, the model's P(chosen ≻ rejected).

    ``labels_or_probs (N,)``: 1/0 (the dataset's chosen is / is not truly preferred) or target probabilities in
    [0, 1]. Equal-width bins over ``p``; ECE = Σ_b |B_b|/N · |mean(p in b) − mean(y in b)| (Guo et al. 2017, the
    binary reliability-diagram form). 0 is perfectly calibrated.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    m = _as_1d("margins", margins)
    y = _as_1d("labels_or_probs", labels_or_probs)
    if y.shape != m.shape:
        raise ValueError(f"margins {tuple(m.shape)} and labels_or_probs {tuple(y.shape)} differ in shape")
    if (y < 0).any() or (y > 1).any():
        raise ValueError("labels_or_probs must lie in [0, 1]")
    p = torch.sigmoid(m)
    bins = torch.clamp((p * n_bins).long(), max=n_bins - 1)  # p == 1 goes to the last bin
    ece = torch.zeros((), dtype=torch.float64)
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.double().mean() * (p[in_bin].mean() - y[in_bin].mean()).abs()
    return float(ece)


#: What each key of :func:`evaluate_reward_model` measures (shown with the metrics; one definition)
METRIC_HELP = {
    "num_pairs": "Number of scored pairs.",
    "accuracy": "Share of pairs where the reward model ranks the dataset's `chosen` above `rejected`.",
    "mean_margin": "Mean r(chosen) - r(rejected) over the pairs.",
    "ece": "Calibration of sigma(margin) against the DATASET's own labels, which say `chosen` is preferred with "
           "probability 1 (y = 1 for every pair): so it equals 1 - mean sigma(margin) and falls as the model grows "
           "more confident, right or wrong. A calibration error only where the dataset labels are the truth; "
           "prefer `gold_ece` where gold labels exist.",
    "gold_accuracy": "Share of pairs (gold ties excluded) ranked in the order of the gold margin.",
    "hard_quartile_gold_accuracy": "gold_accuracy on the quarter of pairs with the smallest |gold margin|.",
    "gold_ece": "Expected calibration error of sigma(margin) against the GOLD label of each pair (1 when the gold "
                "reward prefers `chosen`, 0 when it prefers `rejected`; gold ties excluded): 0 = calibrated.",
}


def evaluate_reward_model(
    model,
    processing_class,
    dataset,
    batch_size: int = 64,
    gold_chosen_column: str = "gold_chosen",
    gold_rejected_column: str = "gold_rejected",
    n_bins: int = 10,
) -> dict[str, float]:
    """Score ``dataset`` and return a flat dict of metrics.

    Always: ``num_pairs``, ``accuracy`` (dataset labels), ``mean_margin``, ``ece``: σ(margin) calibrated against
    the dataset's own labels, i.e. against y = 1 for every pair (the dataset says `chosen` wins), which makes it
    exactly ``1 − mean σ(margin)``: it measures confidence in the dataset's labels, and is a calibration error only
    where those labels are the truth. When the gold columns exist (the testbed): ``gold_accuracy``,
    ``hard_quartile_gold_accuracy``, ``gold_ece`` (σ(margin) against the 0/1 gold label of each pair, gold ties
    excluded: the calibration error proper), and their counts ``num_gold_pairs`` / ``num_hard_pairs`` (reports
    show every rate with its n). :data:`METRIC_HELP` describes each key.
    """
    from .pairs import gold_margins, pair_margins

    margins = pair_margins(model, processing_class, dataset, batch_size=batch_size)
    out = {
        "num_pairs": float(margins.numel()),
        "accuracy": pairwise_accuracy(margins),
        "mean_margin": float(margins.mean()),
        "ece": calibration_error(margins, torch.ones_like(margins), n_bins=n_bins),
    }
    if gold_chosen_column in dataset.column_names and gold_rejected_column in dataset.column_names:
        g = gold_margins(dataset, gold_chosen_column, gold_rejected_column)
        out["gold_accuracy"] = pairwise_accuracy(margins, g)
        out["hard_quartile_gold_accuracy"] = hard_quartile_accuracy(margins, g)
        decided = g != 0
        out["num_gold_pairs"] = float(decided.sum())  # the n of the gold rates (pairs gold prefers one side of)
        out["num_hard_pairs"] = float(math.ceil(0.25 * int(decided.sum())))  # hard_quartile_accuracy's k
        out["gold_ece"] = calibration_error(margins[decided], (g[decided] > 0).float(), n_bins=n_bins)
    return out
