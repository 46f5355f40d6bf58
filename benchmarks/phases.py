"""Where a trainer's time goes: exclusive wall time per phase, from timing wrappers a benchmark installs around the
trainer's functions and methods (no trainer code is edited; everything is restored afterwards).

    timer = PhaseTimer()
    timer.patch(trainer, "_generate", "generation")                       # a bound method, on this instance only
    timer.patch_everywhere("trl_extras.modeling.lm", "completion_token_stats",
                           by_context(rollout="rollout statistics", update="update"))
    with timer:                                                           # restores every patch on exit
        trainer.train()
    timer.split(total_seconds)   # {"generation": s, ..., "other": total - sum}

Times are *exclusive*: a phase's time excludes the time spent in wrapped calls nested inside it (the update's
``training_step`` contains the rollout when the trainer samples inside ``_prepare_inputs``; the rollout contains
generation and scoring), so the phases add up to at most the total and ``other`` is the rest (optimizer step,
logging, callbacks). A phase may depend on the caller: the same log-prob function is "rollout statistics" inside
the rollout and part of the "update" inside the loss (:func:`by_context`). On a GPU, pass ``sync`` (e.g.
:func:`cuda_synchronize_if_available`) so asynchronous kernels are charged to the phase that launched them.

``PhaseTimer(inclusive=True)`` keeps the nested phases in a phase's time instead (``benchmarks/gpu.py``: its
rollout includes generation and scoring; it derives ``rollout_other`` = rollout − those itself).
:meth:`PhaseTimer.step_callback` records one row of per-phase seconds per optimizer step (``steps``) of a
``transformers`` Trainer.
"""

from __future__ import annotations

import importlib
import sys
import time
from collections import defaultdict
from collections.abc import Callable

ROLLOUT = "rollout (other)"  # the frame that marks "inside the rollout" for by_context


def cuda_synchronize_if_available() -> None:
    """Wait for the queued CUDA kernels (nothing without CUDA), so the clock read next charges them to the phase
    that launched them rather than to whichever phase next waits on the GPU."""
    import torch  # here, not at the top: the CPU benchmarks and tests import this module without touching CUDA

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def by_context(rollout: str, update: str, marker: str = ROLLOUT) -> Callable[[list[str]], str]:
    """A phase that is ``rollout`` when called (directly or not) inside a ``marker`` phase, else ``update``."""

    def phase(stack: list[str]) -> str:
        return rollout if marker in stack else update

    return phase


class PhaseTimer:
    """Wall time (exclusive, or ``inclusive`` of nested phases) and call count per phase, in total and per optimizer
    step (see the module docstring). ``sync`` runs before each clock read (a GPU: wait for queued kernels)."""

    def __init__(self, sync: Callable[[], None] | None = None, inclusive: bool = False):
        self.inclusive = inclusive
        self.totals: dict[str, float] = defaultdict(float)
        self.step_totals: dict[str, float] = defaultdict(float)  # the current optimizer step's (step_callback)
        self.steps: list[dict] = []  # one row per optimizer step (step_callback)
        self.calls: dict[str, int] = defaultdict(int)
        self.patched: list[str] = []  # "owner.attr -> phase" for the record
        self.missing: list[str] = []  # wrappers asked for whose target does not exist (a renamed internal)
        self._stack: list[list] = []  # [phase, start, time in nested phases]
        self._restore: list[tuple] = []
        self._sync = sync

    def wrap(self, fn: Callable, phase: str | Callable[[list[str]], str]) -> Callable:
        """``fn`` timed as ``phase`` (a name, or a function of the names of the enclosing phases)."""

        def timed(*args, **kwargs):
            name = phase([frame[0] for frame in self._stack]) if callable(phase) else phase
            if self._sync:
                self._sync()
            frame = [name, time.perf_counter(), 0.0]
            self._stack.append(frame)
            try:
                return fn(*args, **kwargs)
            finally:
                if self._sync:
                    self._sync()
                elapsed = time.perf_counter() - frame[1]
                self._stack.pop()
                spent = elapsed if self.inclusive else elapsed - frame[2]
                self.totals[name] += spent
                self.step_totals[name] += spent
                self.calls[name] += 1
                if self._stack:
                    self._stack[-1][2] += elapsed

        timed.__wrapped__ = fn
        return timed

    def patch(self, owner, attr: str, phase) -> bool:
        """Replace ``owner.attr`` (an instance's method, a module's or a class's attribute) by a timed version;
        False (and noted in ``missing``) when it does not exist."""
        fn = getattr(owner, attr, None)
        label = f"{getattr(owner, '__name__', type(owner).__name__)}.{attr}"
        if fn is None:
            self.missing.append(label)
            return False
        own = vars(owner).get(attr, _ABSENT) if hasattr(owner, "__dict__") else _ABSENT
        self._restore.append((owner, attr, own))
        setattr(owner, attr, self.wrap(fn, phase))
        self.patched.append(label)
        return True

    def patch_everywhere(self, module: str, attr: str, phase, prefix: str = "trl_extras") -> bool:
        """Time ``module.attr`` in every loaded module under ``prefix`` that holds it (callers import functions by
        name, so each importer's reference is patched); False when ``module.attr`` does not exist."""
        try:
            original = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            self.missing.append(f"{module}.{attr}")
            return False
        timed = self.wrap(original, phase)
        for name, mod in list(sys.modules.items()):
            if name.startswith(prefix) and getattr(mod, attr, None) is original:
                self._restore.append((mod, attr, original))
                setattr(mod, attr, timed)
                self.patched.append(f"{name}.{attr}")
        return True

    def restore(self) -> None:
        """Undo every patch (module and class attributes would otherwise stay timed for the next run)."""
        for owner, attr, original in reversed(self._restore):
            if original is _ABSENT:
                delattr(owner, attr)  # it was a class attribute seen through the instance
            else:
                setattr(owner, attr, original)
        self._restore = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.restore()

    def step_callback(self, finish_row: Callable[[dict], dict] | None = None):
        """A ``transformers.TrainerCallback`` appending to ``steps``, per optimizer step, the seconds of each phase
        within it and ``"step"`` (the whole step's wall time, ``sync``-ed like the phases), rounded to 0.1 ms;
        ``finish_row(row)`` may add derived columns (e.g. update = step − rollout)."""
        from transformers import TrainerCallback

        timer = self

        class StepTimer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                if timer._sync:
                    timer._sync()
                timer.step_totals = defaultdict(float)
                timer._step_start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                if timer._sync:
                    timer._sync()
                row = {k: round(v, 4) for k, v in timer.step_totals.items()}
                row["step"] = round(time.perf_counter() - timer._step_start, 4)
                timer.steps.append(finish_row(row) if finish_row is not None else row)

        return StepTimer()

    def split(self, total: float) -> dict[str, float]:
        """Seconds per phase plus ``other`` = ``total`` minus all phases."""
        out = dict(self.totals)
        out["other"] = total - sum(self.totals.values())
        return out


_ABSENT = object()
