"""The CEM run's per-round plot (``cem_history.png``)."""

from __future__ import annotations

import math


def plot_history(history: list[dict], path, initial_eval: dict | None = None) -> None:
    """PNG of the per-round metrics: rewards (samples, elites, gold), entropy, distinct-n."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [h["round"] for h in history]
    panels = [
        ("reward", ["reward_mean", "elite_reward_mean", "gold_mean", "eval_reward_mean", "eval_gold_mean"]),
        ("entropy (nats/token)", ["entropy", "eval_entropy"]),
        ("diversity", ["distinct_1", "distinct_2", "unique_fraction"]),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5))
    for ax, (title, keys) in zip(axes, panels):
        for key in keys:
            values = [h.get(key) for h in history]
            if any(v is not None for v in values):
                ax.plot(rounds, [math.nan if v is None else v for v in values], marker="o", label=key)
        ax.set_title(title)
        ax.set_xlabel("round")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
