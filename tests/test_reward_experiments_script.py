"""benchmarks/reward_experiments.py: its filter-run specs and its statistics on synthetic cells (no training)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("reward_experiments", ROOT / "benchmarks" / "reward_experiments.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parse_filter_runs():
    R = _script()
    runs = R.parse_filter_runs("e0.1, s0.05,e0.2+s0.1,r0.2")
    assert [r["name"] for r in runs] == ["e0.1", "s0.05", "e0.2+s0.1", "r0.2"]
    assert runs[2] == {"name": "e0.2+s0.1", "easy": 0.2, "suspect": 0.1, "random": 0.0}
    for bad, match in (("x0.1", "bad item"), ("e1.5", "bad item"), ("e0", "bad item"), ("r0.2+e0.1", "mixes"),
                       ("e0.6+s0.5", "drops everything")):
        with pytest.raises(ValueError, match=match):
            R.parse_filter_runs(bad)


def test_aggregate_pairs_seeds_and_pools_mcnemar():
    """Method A is right on 3 more eval pairs than B in every seed: the paired difference is exact, McNemar pools
    the discordant pairs over seeds, and the hardest-quartile test uses only that seed's hard indices."""
    from trl_extras.core.stats import binomial_test, paired_difference

    R = _script()
    args = {"budgets": "10", "filter_pairs": 10, "filter_runs": "e0.2"}
    names = [m for m, _ in R.methods(args)]
    assert names == ["dirty_only", "clean_only_10", "dirty_then_clean_10", "filter_e0.2"]
    per_seed = []
    for seed, base_right in enumerate((12, 14, 11)):
        n = 20
        b = "1" * base_right + "0" * (n - base_right)
        a = "1" * (base_right + 3) + "0" * (n - base_right - 3)  # A also right on the 3 pairs after B's
        cells = {}
        for name in names:
            right = a if name == "dirty_then_clean_10" else b
            hard_idx = list(range(10, 20))
            cells[name] = {"overall": right.count("1") / n, "hard": sum(int(right[i]) for i in hard_idx) / 10,
                           "right": right}
        per_seed.append({"seed": seed, "cells": cells, "hard_idx": hard_idx, "hard_idx_n": 10})
    per_seed[2]["cells"].pop("filter_e0.2")  # a seed killed before its filtering cell
    agg = R.aggregate(per_seed, args)
    assert agg["seeds_complete"] == [0, 1]
    assert agg["methods"]["filter_e0.2"]["seeds"] == [0, 1]
    assert agg["methods"]["dirty_then_clean_10"]["overall"]["values"] == pytest.approx([0.75, 0.85, 0.7])
    comp = next(c for c in agg["comparisons"] if c["a"] == "dirty_then_clean_10" and c["b"] == "clean_only_10")
    a_vals, b_vals = [0.75, 0.85, 0.7], [0.6, 0.7, 0.55]
    assert {k: v for k, v in comp["overall"]["paired"].items() if k != "p_holm"} == pytest.approx(
        paired_difference(a_vals, b_vals))
    assert comp["overall"]["paired"]["p_holm"] >= comp["overall"]["paired"]["p_value"]
    assert comp["overall"]["paired"]["mean"] == pytest.approx(0.15)
    assert comp["overall"]["mcnemar"] == {"n": 60, "only_a": 9, "only_b": 0, "p_value": binomial_test(9, 0)}
    # hard quartile = indices 10..19: the 3 extra pairs fall there for seeds 0 (12..14) and 2 (11..13), and for
    # seed 1 (14..16) as well
    assert comp["hard"]["mcnemar"]["only_a"] == 9 and comp["hard"]["mcnemar"]["n"] == 30
    md = R.to_markdown({"config": {**args, "task": "sort_hard", "seeds": "0,1,2", "dirty_pairs": 5, "eval_pairs": 20,
                                   "flip_rate": 0.1, "dirty_epochs": 1, "clean_epochs": 2, "dirty_lr": 1e-4,
                                   "clean_lr": 5e-5, "batch_size": 4},
                        "per_seed": per_seed, "aggregate": agg})
    assert "dirty→clean vs clean-only @ 10 | +0.150" in md
    assert "dirty→clean vs clean-only @ 10: all eval pairs: **dirty→clean beats clean-only @ 10**" in md
    assert "(n=2)" in md  # the filtering cell made it on 2 of the 3 seeds asked
