"""Interleaved benchmark runs: the one way this project measures a speed or memory ratio.

A ratio of two runs made one after the other is only as good as the assumption that the machine's load stayed the
same between them; on a shared machine it does not (README once showed PPO at 1.03x GRPO's samples/s from runs made
at different loads; interleaved on a quiet machine it was 0.42x). So every ratio comes from variants run in turn,
A B A B ... for ``rounds`` rounds (>= 3), each round giving one paired ratio; we report the median of those paired
ratios with their min-max spread, the median and spread of every metric per variant, and ``os.getloadavg()`` at the
start and end of the whole measurement (and around each run), so a reader can see the load it was taken under.

    sys.path.insert(0, str(Path(__file__).parent))      # in a script under benchmarks/
    from interleave import run_interleaved, timed, write_result
    result = run_interleaved({"grpo": run_grpo, "ppo": run_ppo}, rounds=3, baseline="grpo")
    write_result(result, "benchmarks/results/x.json")

A variant is a zero-argument callable returning either one number (the metric ``"value"``) or a dict of named
numbers (``{"seconds": ..., "samples_per_s": ...}``; extra non-numeric entries are kept in the run record but not
summarised). ``timed`` wraps a callable to return its wall time (and torch's CUDA peak memory when on a GPU);
``subprocess_variant`` runs a command in a fresh process (for peak RSS, which a process only ever raises) and reads
the metrics from the last JSON line it prints.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def load_average() -> list[float] | None:
    """``os.getloadavg()`` (1, 5, 15 min) as a list, or None where the platform has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def schedule(names: list[str], rounds: int) -> list[tuple[int, str]]:
    """``[(round, name)]`` in run order: every variant once per round, in the given order (A B A B ...)."""
    return [(r, name) for r in range(rounds) for name in names]


def spread(values: list[float]) -> dict:
    """Median, min and max of ``values`` (the numbers a reader needs to judge a ratio's noise)."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def _as_metrics(out) -> dict:
    if isinstance(out, dict):
        return out
    if isinstance(out, (int, float)):
        return {"value": float(out)}
    raise TypeError(f"a variant must return a number or a dict of numbers, got {type(out).__name__}")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def summarise(runs: list[dict], names: list[str], baseline: str) -> dict:
    """Per-variant spread of every numeric metric, and per-variant paired ratios to ``baseline``.

    ``runs``: records ``{"round", "variant", "metrics"}``. A ratio is ``variant / baseline`` of the same metric in the
    same round (paired, so a load change between rounds cancels); ``ratio_of_medians`` is given beside it.
    """
    by = {name: [r for r in runs if r["variant"] == name] for name in names}
    metrics = {}
    for name in names:
        keys = list(dict.fromkeys(k for r in by[name] for k, v in r["metrics"].items() if _is_number(v)))
        metrics[name] = {k: spread([float(r["metrics"][k]) for r in by[name] if _is_number(r["metrics"].get(k))])
                         for k in keys}
    ratios = {}
    base_rounds = {r["round"]: r["metrics"] for r in by[baseline]}
    for name in names:
        if name == baseline:
            continue
        ratios[name] = {}
        for key in metrics[name]:
            if key not in metrics[baseline]:
                continue
            paired = [float(r["metrics"][key]) / float(base_rounds[r["round"]][key]) for r in by[name]
                      if _is_number(r["metrics"].get(key)) and _is_number(base_rounds.get(r["round"], {}).get(key))
                      and float(base_rounds[r["round"]][key]) != 0]
            if not paired:
                continue
            base_median = metrics[baseline][key]["median"]
            ratios[name][key] = {**spread(paired),
                                 "ratio_of_medians": metrics[name][key]["median"] / base_median if base_median else None}
    return {"metrics": metrics, "ratios": ratios}


def run_interleaved(variants: dict[str, Callable[[], object]], rounds: int = 3, *, baseline: str | None = None,
                    warmup: bool = False, min_rounds: int = 3, log: Callable[[str], None] | None = print,
                    meta: dict | None = None) -> dict:
    """Run ``variants`` in turn for ``rounds`` rounds and summarise (see the module docstring).

    ``baseline``: the variant ratios are taken against (default: the first). ``warmup``: one untimed call of each
    variant first (first-call overheads: lazy imports, allocator). ``meta``: stored as is (settings of the run).
    Returns ``{"order", "rounds", "baseline", "load_start", "load_end", "cpus", "runs", "metrics", "ratios", "meta"}``.
    """
    names = list(variants)
    if not names:
        raise ValueError("run_interleaved: no variants given")
    if rounds < min_rounds:
        raise ValueError(f"run_interleaved: rounds={rounds}; a ratio needs at least {min_rounds} interleaved rounds "
                         f"(pass more rounds, or lower min_rounds only for a smoke test)")
    baseline = names[0] if baseline is None else baseline
    if baseline not in variants:
        raise ValueError(f"run_interleaved: baseline={baseline!r} is not one of the variants {names}")
    load_start = load_average()
    if warmup:
        for name in names:
            if log:
                log(f"[interleave] warm-up {name}")
            variants[name]()
    runs = []
    for r, name in schedule(names, rounds):
        before = load_average()
        metrics = _as_metrics(variants[name]())
        runs.append({"round": r, "variant": name, "metrics": metrics, "load_before": before, "load_after": load_average()})
        if log:
            log(f"[interleave] round {r + 1}/{rounds} {name}: "
                + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
                            if isinstance(v, (int, float, str)))
                + f" (load {before[0] if before else '?'})")
    out = {"order": [f"{r}:{n}" for r, n in schedule(names, rounds)], "rounds": rounds, "baseline": baseline,
           "load_start": load_start, "load_end": load_average(), "cpus": os.cpu_count(), "runs": runs, "meta": meta or {}}
    out.update(summarise(runs, names, baseline))
    return out


def timed(fn: Callable[[], object], samples: int | None = None) -> Callable[[], dict]:
    """``fn`` as a variant returning ``{"seconds"}`` (+ ``samples_per_s`` when ``samples`` is given, + torch's CUDA
    peak ``cuda_peak_mib`` on a GPU); a dict ``fn`` returns is merged in (its own phase timings, say)."""

    def run() -> dict:
        cuda = _cuda()
        if cuda is not None:
            cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
        metrics = {"seconds": seconds}
        if samples:
            metrics["samples_per_s"] = samples / seconds
        if cuda is not None:
            metrics["cuda_peak_mib"] = cuda.max_memory_allocated() / 2**20
        if isinstance(out, dict):
            metrics.update(out)
        return metrics

    return run


def _cuda():
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return torch.cuda
    return None


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, MiB (only ever rises: measure each variant in its own process)."""
    import resource

    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if sys.platform != "darwin" else kib / 2**20


def subprocess_variant(cmd: list[str], env: dict | None = None, timeout: float | None = None) -> Callable[[], dict]:
    """A variant that runs ``cmd`` in a fresh process and returns the dict on the last line of its stdout that parses
    as JSON (so the child can print progress above it), plus ``wall_s`` of the whole process."""

    def run() -> dict:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"benchmark child {cmd} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        for line in reversed(proc.stdout.strip().splitlines()):
            try:
                metrics = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(metrics, dict):
                return {**metrics, "wall_s": wall}
        raise RuntimeError(f"benchmark child {cmd} printed no JSON dict on stdout:\n{proc.stdout[-2000:]}")

    return run


def write_result(result: dict, path: str | Path) -> Path:
    """Write ``result`` as indented JSON (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path


def ratio_text(result: dict, variant: str, metric: str, digits: int = 2) -> str:
    """``"0.46x (0.42-0.51, 3 pairs)"``: the paired median ratio of ``variant`` to the baseline and its spread."""
    r = result["ratios"][variant][metric]
    return f"{r['median']:.{digits}f}x ({r['min']:.{digits}f}-{r['max']:.{digits}f}, {r['n']} pairs)"


def load_text(result: dict) -> str:
    """``"load 1.2 -> 3.4"`` (1-minute load average at start and end; "?" where unknown)."""
    start, end = result.get("load_start"), result.get("load_end")
    return f"load {start[0] if start else '?'} -> {end[0] if end else '?'} (1-min avg; {result.get('cpus', '?')} CPUs)"
