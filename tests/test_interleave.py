"""benchmarks/interleave.py: ratios come from interleaved runs (A B A B ...), paired per round, with the load recorded
(issue 23, item 0). Cheap: the variants are plain callables, no model."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def interleave():
    spec = importlib.util.spec_from_file_location("interleave", ROOT / "benchmarks" / "interleave.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_runs_are_interleaved_and_ratios_paired_per_round(interleave, monkeypatch):
    calls = []
    # the "machine" slows down 10x in round 2 (both variants): the paired ratio is unaffected

    def variant(name, seconds):
        def run():
            calls.append(name)
            r = sum(1 for c in calls if c == name) - 1
            return {"seconds": seconds * (10.0 if r == 1 else 1.0), "label": "x"}
        return run

    loads = iter([(1.0, 1.0, 1.0)] + [(2.0, 2.0, 2.0)] * 100)
    monkeypatch.setattr(interleave.os, "getloadavg", lambda: next(loads))
    result = interleave.run_interleaved({"a": variant("a", 2.0), "b": variant("b", 3.0), "c": variant("c", 1.0)},
                                        rounds=3, baseline="a", log=None)
    assert calls == ["a", "b", "c"] * 3
    assert result["order"] == ["0:a", "0:b", "0:c", "1:a", "1:b", "1:c", "2:a", "2:b", "2:c"]
    b = result["ratios"]["b"]["seconds"]
    assert b["median"] == pytest.approx(1.5) and b["min"] == pytest.approx(1.5) and b["max"] == pytest.approx(1.5)
    assert b["n"] == 3
    assert result["ratios"]["c"]["seconds"]["median"] == pytest.approx(0.5)
    assert "a" not in result["ratios"] and "label" not in result["metrics"]["a"]
    assert result["metrics"]["a"]["seconds"] == {"median": 2.0, "min": 2.0, "max": 20.0, "n": 3}
    assert result["load_start"] == [1.0, 1.0, 1.0] and result["load_end"] == [2.0, 2.0, 2.0]
    assert all(run["load_before"] is not None and run["load_after"] is not None for run in result["runs"])
    assert interleave.ratio_text(result, "b", "seconds") == "1.50x (1.50-1.50, 3 pairs)"
    json.dumps(result)  # writable as is


def test_spread_of_paired_ratios_and_number_variants(interleave):
    values = {"a": iter([1.0, 2.0, 4.0]), "b": iter([2.0, 3.0, 4.0])}
    result = interleave.run_interleaved({"a": lambda: next(values["a"]), "b": lambda: next(values["b"])}, rounds=3,
                                        log=None)
    r = result["ratios"]["b"]["value"]
    assert (r["median"], r["min"], r["max"]) == (pytest.approx(1.5), pytest.approx(1.0), pytest.approx(2.0))
    assert r["ratio_of_medians"] == pytest.approx(3.0 / 2.0)
    assert result["baseline"] == "a"


def test_bad_input_is_refused_with_the_argument_named(interleave):
    with pytest.raises(ValueError, match="rounds=2"):
        interleave.run_interleaved({"a": lambda: 1.0, "b": lambda: 1.0}, rounds=2, log=None)
    with pytest.raises(ValueError, match="baseline='z'"):
        interleave.run_interleaved({"a": lambda: 1.0}, rounds=3, baseline="z", log=None)
    with pytest.raises(TypeError, match="number or a dict"):
        interleave.run_interleaved({"a": lambda: "fast"}, rounds=3, log=None)


def test_warmup_runs_each_variant_once_untimed(interleave):
    calls = []
    interleave.run_interleaved({"a": lambda: calls.append("a") or 1.0, "b": lambda: calls.append("b") or 1.0},
                               rounds=3, warmup=True, log=None)
    assert calls == ["a", "b"] + ["a", "b"] * 3


def test_subprocess_variant_reads_the_last_json_line(interleave, tmp_path):
    script = tmp_path / "child.py"
    script.write_text("import json\nprint('progress...')\nprint(json.dumps({'seconds': 0.5}))\n")
    metrics = interleave.subprocess_variant([sys.executable, str(script)])()
    assert metrics["seconds"] == 0.5 and metrics["wall_s"] > 0
    bad = tmp_path / "bad.py"
    bad.write_text("raise SystemExit(3)\n")
    with pytest.raises(RuntimeError, match="exit 3"):
        interleave.subprocess_variant([sys.executable, str(bad)])()


def test_timed_adds_seconds_and_samples_per_s(interleave):
    metrics = interleave.timed(lambda: {"generation_s": 0.0}, samples=10)()
    assert metrics["seconds"] > 0 and metrics["samples_per_s"] == pytest.approx(10 / metrics["seconds"])
    assert metrics["generation_s"] == 0.0


def test_phase_timer_exclusive_times_context_and_restore(monkeypatch):
    spec = importlib.util.spec_from_file_location("phases", ROOT / "benchmarks" / "phases.py")
    phases = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(phases)
    clock = {"t": 0.0}
    monkeypatch.setattr(phases.time, "perf_counter", lambda: clock["t"])

    class Trainer:
        def stats(self):
            clock["t"] += 1.0

        def rollout(self):
            clock["t"] += 2.0
            self.stats()

        def step(self):
            self.rollout()
            self.stats()
            clock["t"] += 4.0

    trainer = Trainer()
    timer = phases.PhaseTimer()
    with timer:
        timer.patch(trainer, "step", "update")
        timer.patch(trainer, "rollout", phases.ROLLOUT)
        timer.patch(trainer, "stats", phases.by_context("rollout statistics", "update"))
        assert not timer.patch(trainer, "renamed", "x") and timer.missing == ["Trainer.renamed"]
        trainer.step()
    # rollout 2 s exclusive, its stats 1 s; the update's own 4 s plus the stats it called (1 s)
    assert dict(timer.totals) == {"rollout statistics": 1.0, phases.ROLLOUT: 2.0, "update": 5.0}
    assert timer.split(10.0)["other"] == 2.0
    assert "step" not in vars(trainer) and "stats" not in vars(trainer)  # restored to the class's methods
