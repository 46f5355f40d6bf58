"""Where the exact KL's extra time goes in a PPO update: torch.profiler self-times grouped by what the op does.

    OMP_NUM_THREADS=2 python benchmarks/exact_kl_profile.py --model-kind smollm2 --batch 8 --length 256
    OMP_NUM_THREADS=2 python benchmarks/exact_kl_profile.py --model-kind qwen --layers 24 --batch 2 --length 256

Runs the same update-exact / update-k1 (and rollout-statistics) computations as ``exact_kl_memory.py --suite ppo``
(its ``_ppo_runs``: LoRA policy, adapter-disabled reference, bf16 autocast where the CPU has it, cached reference
states and the gradient hint for exact), warms each up, then profiles ``--repeats`` runs of each, interleaved. Ops
are grouped by their self CPU time: matmuls through the output head (an input with the vocabulary's size) vs the
trunk's, attention, the softmax family (exp, log, log-softmax, logsumexp, max), other elementwise/copy/reduction
ops, and the rest. The difference column is what exact adds to k1. Writes
``benchmarks/results/exact_kl_profile_<kind>.{json,md}``; the wall time of a profiled run is above an unprofiled one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
sys.path.insert(0, str(Path(__file__).parent))

RESULTS = Path(__file__).parent / "results"
MATMUL = {"aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm"}
ATTENTION = ("attention", "sdpa", "flash")
SOFTMAX = {"aten::exp", "aten::exp_", "aten::log", "aten::log_", "aten::_log_softmax", "aten::log_softmax",
           "aten::logsumexp", "aten::amax", "aten::max", "aten::_softmax", "aten::softmax",
           "aten::_log_softmax_backward_data", "aten::_softmax_backward_data"}
ELEMENTWISE = ("aten::mul", "aten::sub", "aten::add", "aten::div", "aten::neg", "aten::copy_", "aten::_to_copy",
               "aten::to", "aten::sum", "aten::gather", "aten::fill_", "aten::zero_", "aten::clone", "aten::where",
               "aten::index", "aten::silu", "aten::pow", "aten::rsqrt", "aten::mean", "aten::cat", "aten::addcmul",
               "aten::masked_fill", "aten::cos", "aten::sin", "aten::embedding", "aten::scatter", "aten::threshold",
               "aten::empty", "aten::zeros", "aten::contiguous", "aten::sigmoid", "aten::clamp", "aten::minimum",
               "aten::maximum", "aten::exp2", "aten::sqrt")


def category(name: str, shapes, vocab: int) -> str:
    if name in MATMUL:
        return "head matmul" if any(vocab in (s or ()) for s in shapes) else "trunk matmul"
    lowered = name.lower()
    if any(a in lowered for a in ATTENTION):
        return "attention"
    if name in SOFTMAX:
        return "softmax family (exp, log, max)"
    if name.startswith(ELEMENTWISE):
        return "elementwise, copies, reductions"
    return "other"


def profile(run, vocab: int) -> tuple[dict, float]:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t0 = time.perf_counter()
        out = run()
        wall = time.perf_counter() - t0
    del out
    groups: dict[str, float] = defaultdict(float)
    for event in prof.key_averages(group_by_input_shape=True):
        groups[category(event.key, event.input_shapes, vocab)] += event.self_cpu_time_total / 1e6
    return dict(groups), wall


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-kind", choices=["smollm2", "qwen"], default="smollm2")
    parser.add_argument("--layers", type=int, default=2, help="qwen: decoder layers")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="profiled runs per variant (interleaved)")
    parser.add_argument("--variants", nargs="+", default=["update-exact", "update-k1"])
    parser.add_argument("--no-bf16", action="store_true")
    args = parser.parse_args(argv)

    import torch
    from exact_kl_memory import _cpu_has_bf16, _ppo_runs

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    bf16 = _cpu_has_bf16() and not args.no_bf16
    runs = _ppo_runs(args.variants, args.model_kind, args.layers, args.batch, args.length, args.chunk, bf16)
    if args.model_kind == "smollm2":  # the vocabulary that marks a matmul as the head's, from the model's own config
        from transformers import AutoConfig

        from trl_extras.testbed.smollm2 import smollm2_path

        vocab = AutoConfig.from_pretrained(smollm2_path(progress=False)).vocab_size
    else:
        from trl_extras.testbed.shapes import QWEN25_05B

        vocab = QWEN25_05B.vocab_size
    load_start = os.getloadavg()
    for v in args.variants:
        runs[v]()  # warm-up
    samples: dict[str, list] = {v: [] for v in args.variants}
    for rep in range(args.repeats):
        for v in args.variants:
            groups, wall = profile(runs[v], vocab)
            samples[v].append({"groups": groups, "wall_s": wall})
            print(f"repeat {rep} {v}: {wall:.2f} s profiled", flush=True)
    load_end = os.getloadavg()

    def median(xs):
        xs = sorted(xs)
        return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2

    cats = sorted({c for v in samples for s in samples[v] for c in s["groups"]})
    table = {v: {c: median([s["groups"].get(c, 0.0) for s in samples[v]]) for c in cats} for v in args.variants}
    walls = {v: median([s["wall_s"] for s in samples[v]]) for v in args.variants}
    result = {"setup": {**vars(args), "bf16_autocast": bf16, "vocab": vocab, "loadavg_start": load_start,
                        "loadavg_end": load_end, "threads": torch.get_num_threads()},
              "self_seconds": table, "wall_seconds": walls, "samples": samples}
    name = f"exact_kl_profile_{args.model_kind}" + (f"_{args.layers}layers" if args.model_kind == "qwen" else "")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    a, b = args.variants[0], args.variants[1] if len(args.variants) > 1 else args.variants[0]
    lines = [f"# Where the time of one PPO update goes: {a} vs {b} ({args.model_kind}"
             + (f", {args.layers} layers" if args.model_kind == "qwen" else ", 30 layers")
             + f", B={args.batch}, T={args.length}, {'bf16 autocast' if bf16 else 'fp32'})", "",
             f"torch.profiler self CPU seconds per op group, median of {args.repeats} interleaved profiled runs; load "
             f"{load_start[0]:.1f} -> {load_end[0]:.1f}. `python benchmarks/exact_kl_profile.py --model-kind "
             f"{args.model_kind} --batch {args.batch} --length {args.length}"
             + (f" --layers {args.layers}" if args.model_kind == "qwen" else "") + "`", "",
             f"| op group | {a} s | {b} s | {a} - {b} s |", "|---|---|---|---|"]
    for c in sorted(cats, key=lambda c: -table[a][c]):
        lines.append(f"| {c} | {table[a][c]:.2f} | {table[b][c]:.2f} | {table[a][c] - table[b][c]:+.2f} |")
    lines.append(f"| **wall (profiled)** | {walls[a]:.2f} | {walls[b]:.2f} | {walls[a] - walls[b]:+.2f} |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
