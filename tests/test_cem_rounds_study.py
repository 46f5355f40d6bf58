"""benchmarks/cem_rounds.py (issue 13 item 5): the "keeps rising" verdict, the per-seed resume, the summary files."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _restore_library_logging():
    """The script's main() quiets transformers (verbosity error) and datasets' bars for its own run; that is process
    state, and TrainingArguments derives its ``disable_tqdm`` default from the verbosity, so later tests in the same
    process saw it (test_progress failed after this module). Restore both after each test."""
    import datasets
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = datasets.is_progress_bar_enabled()
    yield
    hf_logging.set_verbosity(verbosity)
    (datasets.enable_progress_bars if bars else datasets.disable_progress_bars)()


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("cem_rounds_study", ROOT / "benchmarks" / "cem_rounds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rising_verdict_separates_rising_from_stalled(study):
    rising = [[0.60, 0.70, 0.75, 0.80, 0.82], [0.62, 0.71, 0.77, 0.81, 0.85], [0.58, 0.69, 0.74, 0.79, 0.80]]
    v = study.rising_verdict(rising, through=3)
    assert v["rises"] == [True, True, True, True]
    assert v["keeps_rising"] is True and v["stalls"] is False
    assert v["late_gain"][0] == pytest.approx((0.10 + 0.10 + 0.10) / 3)
    assert v["gain"][1] > 0

    # the article's picture: one jump, then noise around the same level
    stalled = [[0.60, 0.75, 0.76, 0.74, 0.75], [0.62, 0.78, 0.77, 0.79, 0.78], [0.58, 0.74, 0.73, 0.75, 0.74]]
    v = study.rising_verdict(stalled, through=3)
    assert v["stalls"] is True and v["keeps_rising"] is False
    assert v["gain"][1] > 0  # a real gain over the SFT policy, all of it from round 1

    # rising on average every round but not beyond seed noise: not "keeps rising", and it counts as a stall
    noisy = [[0.6, 0.7, 0.8, 0.9], [0.6, 0.7, 0.6, 0.5], [0.6, 0.7, 0.75, 0.8]]
    v = study.rising_verdict(noisy, through=3)
    assert all(v["rises"][:3]) and v["keeps_rising"] is False and v["stalls"] is True

    one_seed = study.rising_verdict([[0.6, 0.7, 0.8, 0.9]], through=3)
    assert one_seed["keeps_rising"] is None and one_seed["stalls"] is None
    with pytest.raises(ValueError, match="through=3"):
        study.rising_verdict([[0.6, 0.7, 0.8]] * 2, through=3)


def _fake_run(study, name, seed, a, calls):
    """A run with every field the summary reads; gold rises every round for a control, once for plain."""
    calls.append((name, seed))
    step = 0.0 if name == "plain" else 0.03
    rounds = []
    for r in range(a.rounds + 1):
        g = 0.6 + (0.1 if r >= 1 else 0.0) + step * max(r - 1, 0) + 0.005 * seed
        row = {"round": r, "gold_t1": g, "gold_greedy": g + 0.05, "gold_greedy_ci": [g, g + 0.1],
               "gold_greedy_per_prompt": [g], "entropy": 0.4 - 0.05 * r, "distinct_1": 0.5, "distinct_2": 0.7,
               "unique_fraction": 0.9, "reward_t1": g}
        if r >= 1:
            row["samples"] = {"gold_mean": g, "best_of_n_gold_mean": g + 0.1, "entropy": 0.4, "unique_fraction": 0.8,
                              "temperature": 1.0}
        rounds.append(row)
    return {"config": name, "overrides": study.CONFIGS[name], "seed": seed, "settings": study.run_settings(a),
            "policy": "x", "rounds": rounds, "train_seconds": 1.0, "seconds": 1.0}


def test_study_writes_each_run_once_and_answers_the_goal(study, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(study, "run_one", lambda name, seed, a, wd: _fake_run(study, name, seed, a, calls))
    argv = ["--seeds", "0", "1", "2", "--configs", "plain", "kl", "--out", str(tmp_path), "--workdir",
            str(tmp_path / "work")]
    result = study.main(argv)
    assert sorted(calls) == sorted((c, s) for c in ("plain", "kl") for s in (0, 1, 2))
    assert sorted(p.name for p in (tmp_path / "cem_rounds").iterdir()) == sorted(
        f"{c}_seed{s}.json" for c in ("plain", "kl") for s in (0, 1, 2))
    for name in ("cem_rounds.json", "cem_rounds.md", "cem_rounds.png"):
        assert (tmp_path / name).exists()
    summary = result["summary"]
    assert summary["plain"]["verdict_gold_t1"]["stalls"] is True
    assert summary["kl"]["verdict_gold_t1"]["keeps_rising"] is True
    assert summary["kl"]["vs_plain_gold_t1_through"][0] == pytest.approx(0.06)
    md = (tmp_path / "cem_rounds.md").read_text()
    assert "- T=1, kl: **held**" in md and "- greedy, kl: **held**" in md
    assert "**Overall at T=1: the goal held for kl.**" in md
    assert summary["kl"]["per_round"][-1]["samples_headroom"][0] == pytest.approx(0.1)

    # a rerun reuses every saved run; a changed setting reruns them
    calls.clear()
    study.main(argv)
    assert calls == []
    study.main(argv + ["--lr", "1e-3"])
    assert len(calls) == 6
    saved = json.loads((tmp_path / "cem_rounds" / "kl_seed0.json").read_text())
    assert saved["settings"]["lr"] == 1e-3


@pytest.mark.slow
def test_quick_study_runs_cem_on_the_testbed(study, tmp_path, sft_policy_path):
    """The real path end to end (sort_digits seed 0: the cached conftest policy): CEM rounds, greedy measures."""
    result = study.main(["--task", "sort_digits", "--quick", "--seeds", "0", "--configs", "plain", "--out",
                         str(tmp_path), "--workdir", str(tmp_path / "work")])
    rounds = json.loads((tmp_path / "cem_rounds_sort_digits_quick" / "plain_seed0.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    assert all(0.0 <= r["gold_t1"] <= 1.0 and 0.0 <= r["gold_greedy"] <= 1.0 for r in rounds)
    assert rounds[0]["gold_greedy"] != rounds[-1]["gold_greedy"] or rounds[0]["entropy"] != rounds[-1]["entropy"]
    assert result["summary"]["plain"]["seeds"] == [0]
    assert not (tmp_path / "work" / "plain_seed0").exists()  # round models are dropped once the run's JSON exists
