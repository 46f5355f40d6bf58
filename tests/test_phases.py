"""benchmarks/phases.py's one PhaseTimer, as benchmarks/gpu.py uses it: inclusive times, a sync before every clock
read, and one row per optimizer step with gpu.py's derived update / rollout_other columns."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeClock:
    """``perf_counter`` replaced by a counter the fake trainer advances; records every sync."""

    def __init__(self):
        self.t = 0.0
        self.events: list[str] = []

    def now(self):
        self.events.append("clock")
        return self.t

    def sync(self):
        self.events.append("sync")


class Trainer:
    """A step whose rollout (2 s) contains generation (3 s) and scoring (1 s), then an update of 4 s."""

    def __init__(self, clock):
        self.clock = clock

    def generate(self):
        self.clock.t += 3.0

    def score(self):
        self.clock.t += 1.0

    def rollout(self):
        self.generate()
        self.score()
        self.clock.t += 2.0

    def step(self):
        self.rollout()
        self.clock.t += 4.0


def _timed_steps(timer, clock, finish_row=None, steps=2):
    trainer = Trainer(clock)
    callback = timer.step_callback(finish_row)
    with timer:
        timer.patch(trainer, "generate", "generation")
        timer.patch(trainer, "score", "scoring")
        timer.patch(trainer, "rollout", "rollout")
        for _ in range(steps):
            callback.on_step_begin(None, None, None)
            trainer.step()
            callback.on_step_end(None, None, None)
    assert "rollout" not in vars(trainer)  # restored
    return trainer


@pytest.mark.parametrize("inclusive", [False, True])
def test_inclusive_and_exclusive_times_per_step(monkeypatch, inclusive):
    phases = _load("phases")
    clock = FakeClock()
    monkeypatch.setattr(phases.time, "perf_counter", clock.now)
    timer = phases.PhaseTimer(sync=clock.sync, inclusive=inclusive)
    _timed_steps(timer, clock)
    rollout = 6.0 if inclusive else 2.0  # inclusive: its generation and scoring count in it
    assert timer.steps == [{"generation": 3.0, "scoring": 1.0, "rollout": rollout, "step": 10.0}] * 2
    assert dict(timer.totals) == {"generation": 6.0, "scoring": 2.0, "rollout": 2 * rollout}
    # every clock read waits for the device first (on a GPU: the kernels a phase launched are charged to it)
    assert all(clock.events[i - 1] == "sync" for i, e in enumerate(clock.events) if e == "clock")


def test_gpu_script_uses_the_shared_inclusive_timer(monkeypatch):
    gpu = _load("gpu")
    timer = gpu.timed_phases()
    assert timer.inclusive and timer._sync is gpu.cuda_synchronize_if_available
    assert not hasattr(gpu, "Phases")  # one implementation: benchmarks/phases.py
    clock = FakeClock()
    monkeypatch.setattr(sys.modules[gpu.PhaseTimer.__module__].time, "perf_counter", clock.now)  # phases.py's clock
    timer._sync = clock.sync
    _timed_steps(timer, clock, finish_row=gpu._rollout_split, steps=1)
    # update = step - rollout; rollout_other = rollout - generation - scoring (its own 2 s)
    assert timer.steps == [{"generation": 3.0, "scoring": 1.0, "rollout": 6.0, "step": 10.0, "update": 4.0,
                            "rollout_other": 2.0}]
    # gpu.py's generate / reward wrappers take the shared timer
    model = type("Model", (), {"generate": lambda self, **kw: kw})()
    gpu.force_full_length(model, timer)
    assert model.generate(max_new_tokens=5) == {"max_new_tokens": 5, "min_new_tokens": 5}
    assert timer.calls["generation"] == 2
