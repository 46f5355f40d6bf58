"""benchmarks/time_to_quality.py's goal arithmetic (issue 23, item 7): PPO's time to reach GRPO's final gold, paired
per seed, over GRPO's training time. Cheap: hand-made curves, no model."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def ttq():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("time_to_quality", ROOT / "benchmarks" / "time_to_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(variant, seed, curve):
    final = curve[-1]
    return {"round": seed, "variant": variant, "metrics": {
        "seed": seed, "train_seconds": final["seconds"], "gold_T1_final": final["gold_T1"],
        "gold_greedy_final": final["gold_greedy"], "curve": curve}}


def _curve(points):
    return [{"seconds": s, "gold_T1": t1, "gold_greedy": g} for s, t1, g in points]


def test_time_to_reach_is_the_first_point_at_or_above_the_target(ttq):
    curve = _curve([(0, 0.5, 0.6), (10, 0.7, 0.6), (20, 0.65, 0.8)])
    assert ttq.time_to_reach(curve, "gold_T1", 0.7) == 10
    assert ttq.time_to_reach(curve, "gold_greedy", 0.7) == 20
    assert ttq.time_to_reach(curve, "gold_T1", 0.9) is None


def test_goal_ratios_pair_each_ppo_seed_with_the_same_grpo_seed(ttq):
    runs = [
        _run("grpo", 0, _curve([(0, 0.5, 0.5), (40, 0.8, 0.9)])),
        _run("ppo", 0, _curve([(0, 0.5, 0.5), (20, 0.85, 0.7), (60, 0.9, 0.95)])),
        _run("grpo", 1, _curve([(0, 0.5, 0.5), (50, 0.6, 0.6)])),
        _run("ppo", 1, _curve([(0, 0.5, 0.5), (100, 0.55, 0.7)])),
    ]
    goal = ttq.goal_ratios({"runs": runs})
    t1 = goal["gold_T1"]
    assert [r["ratio"] for r in t1["per_seed"]] == [pytest.approx(0.5), None]  # seed 1: PPO never reaches 0.6
    assert t1["reached"] == "1/2" and t1["ratio"]["median"] == pytest.approx(0.5)
    greedy = goal["gold_greedy"]
    assert [r["ratio"] for r in greedy["per_seed"]] == [pytest.approx(60 / 40), pytest.approx(100 / 50)]
    assert greedy["ratio"]["median"] == pytest.approx(1.75)


def test_no_goal_where_grpo_gained_nothing(ttq):
    runs = [_run("grpo", 0, _curve([(0, 0.0, 0.3), (40, 0.0, 0.4)])),
            _run("ppo", 0, _curve([(0, 0.0, 0.3), (20, 0.0, 0.5)]))]
    goal = ttq.goal_ratios({"runs": runs})
    assert goal["gold_T1"]["per_seed"][0]["ratio"] is None and goal["gold_T1"]["reached"] == "0/1"
    assert goal["gold_greedy"]["per_seed"][0]["ratio"] == pytest.approx(0.5)


def test_ppo_settings_are_typed(ttq):
    assert ttq.parse_settings(["num_ppo_epochs=1", "learning_rate=2e-4", "kl_estimator=k3", "whiten_rewards=true"]) == {
        "num_ppo_epochs": 1, "learning_rate": 2e-4, "kl_estimator": "k3", "whiten_rewards": True}
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        ttq.parse_settings(["num_ppo_epochs"])


def test_summary_puts_each_setting_beside_the_recipe(ttq, tmp_path, monkeypatch):
    """One row per result file: the settings that differ from the task's recipe, and the paired ratios."""
    import json

    def result(ppo, ppo_curve):
        runs = [_run("grpo", 0, _curve([(0, 0.5, 0.5), (40, 0.8, 0.9)])), _run("ppo", 0, _curve(ppo_curve))]
        final = {t: {k: {"median": r["metrics"][k], "min": 0, "max": 1} for k in ("gold_T1_final", "gold_greedy_final")}
                 for t, r in zip(("grpo", "ppo"), runs)}
        return {"meta": {"task": "sort_hard", "seeds": [0], "ppo": ppo, "mini_batches": 2}, "metrics": final,
                "ratios": {"ppo": {"train_seconds": {"median": 2.0, "min": 2.0, "max": 2.0}}},
                "goal": ttq.goal_ratios({"runs": runs})}

    recipe = dict(ttq.TASKS["sort_hard"]["ppo"])
    (tmp_path / "a.json").write_text(json.dumps(result(recipe, [(0, 0.5, 0.5), (80, 0.85, 0.95)])))
    (tmp_path / "b.json").write_text(json.dumps(result({**recipe, "learning_rate": 2e-4, "num_mini_batches": 1},
                                                       [(0, 0.5, 0.5), (80, 0.7, 0.7)])))
    monkeypatch.setattr(ttq, "RESULTS", tmp_path)
    rows = ttq.summary(["a", "b"]).splitlines()[2:]
    assert rows[0].startswith("| recipe | 0 | 2.00x") and "2.00x (2.00-2.00) (1/1)" in rows[0]
    assert rows[1].startswith("| learning_rate=0.0002, num_mini_batches=1 |") and "– (0/1)" in rows[1]
