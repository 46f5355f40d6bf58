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
``torch.cuda.synchronize``) so asynchronous kernels are charged to the phase that launched them.
"""

from __future__ import annotations

import importlib
import sys
import time
from collections import defaultdict
from collections.abc import Callable

ROLLOUT = "rollout (other)"  # the frame that marks "inside the rollout" for by_context


def by_context(rollout: str, update: str, marker: str = ROLLOUT) -> Callable[[list[str]], str]:
    """A phase that is ``rollout`` when called (directly or not) inside a ``marker`` phase, else ``update``."""

    def phase(stack: list[str]) -> str:
        return rollout if marker in stack else update

    return phase


class PhaseTimer:
    """Exclusive wall time and call count per phase (see the module docstring)."""

    def __init__(self, sync: Callable[[], None] | None = None):
        self.totals: dict[str, float] = defaultdict(float)
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
                self.totals[name] += elapsed - frame[2]
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

    def split(self, total: float) -> dict[str, float]:
        """Seconds per phase plus ``other`` = ``total`` minus all phases."""
        out = dict(self.totals)
        out["other"] = total - sum(self.totals.values())
        return out


_ABSENT = object()
