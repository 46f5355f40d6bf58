"""Speed and memory of a K-LoRA reward ensemble (trunk once + K adapted tails) vs one member, side by side.

Model: a randomly initialised ``LlamaForSequenceClassification`` (default 16 layers, hidden 256) with LoRA adapters
(``task_type="SEQ_CLS"``, r=16 on q/k/v/o/gate/up/down, each with its own score head) on the last ``--tail`` layers.

* one member: the base with ONE adapter, one ordinary forward pass per batch (what scoring with a single LoRA
  reward model costs);
* ensemble: the base with K adapters scored by ``RewardEnsemble`` (trunk once, K tails);
* for reference, the same K adapters by K full passes (the naive ``set_adapter`` loop).

Time: the three variants on one K-adapter model in one process, timed round-robin over ``--repeats`` rounds after a
warm-up (load on a shared machine then hits them alike); ratio = median over rounds of time / one-member time.
Memory: each variant runs in its own fresh subprocess; "held" = bytes of all parameters and buffers (base, adapters,
score heads; exact) + the peak memory added while scoring: on CPU the rise of the peak resident set size
(``VmHWM``, reset through ``/proc/self/clear_refs``) over the RSS just before the first scoring call — torch's
C++ allocations are invisible to ``tracemalloc``, so RSS is the honest CPU measure; with ``--device cuda``,
``torch.cuda.max_memory_allocated`` minus the allocation before scoring.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ensemble_speed.py               # ~1-2 minutes on CPU
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/ensemble_speed.py --model smollm2 --batch-size 16 --length 48

``--model smollm2`` scores with the real 30-layer SmolLM2-135M-Instruct (``trl_extras.testbed.smollm2_path``, its
own tokenizer, ``AutoModelForSequenceClassification(num_labels=1)``) instead of the random tiny model; results go to
``ensemble_speed_smollm2.*``.
    .venv/bin/python benchmarks/ensemble_speed.py --layers 12 --tail 1 --quick

Writes ``benchmarks/results/ensemble_speed.json`` and ``ensemble_speed.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from interleave import run_interleaved  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

RESULTS = Path(__file__).parent / "results"
VARIANTS = ("one_member", "ensemble_trunk_once", "ensemble_full_passes")


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _texts(n: int, length: int, seed: int) -> tuple[list[str], list[str]]:
    import random

    rng = random.Random(seed)
    prompts = [" ".join(rng.choice("0123456789") for _ in range(length // 4)) + " >" for _ in range(n)]
    completions = [
        " " + " ".join(rng.choice("0123456789") for _ in range(rng.randint(length // 8, length // 4)))
        for _ in range(n)
    ]
    return prompts, completions


def time_interleaved(a) -> dict:
    """All three variants on ONE model with K adapters, timed round-robin so that load on a shared machine hits
    them alike; the single member is the same model with one adapter active (same compute as a 1-adapter model)."""
    import torch
    from peft import get_peft_model

    from trl_extras.rewards.ensemble import RewardEnsemble
    from trl_extras.rewards.scoring import score_with_reward_model

    tok, model = _base(a)
    prompts, completions = _texts(a.batch_size, a.length, seed=0)
    for i in range(a.k):
        cfg = _lora(a)
        model = get_peft_model(model, cfg, adapter_name="member_0") if i == 0 else model
        if i:
            model.add_adapter(f"member_{i}", cfg)
    model.to(a.device).eval()
    fast = RewardEnsemble(model, tok, batch_size=a.batch_size)
    slow = RewardEnsemble(model, tok, batch_size=a.batch_size)
    slow.tail_start = None

    def one():
        model.set_adapter("member_0")
        return score_with_reward_model(model, tok, prompts, completions, batch_size=a.batch_size)

    fns = {"one_member": one, "ensemble_trunk_once": lambda: fast.raw_scores(prompts, completions),
           "ensemble_full_passes": lambda: slow.raw_scores(prompts, completions)}  # fmt: skip
    def timed(fn):
        def run():
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            return {"seconds": time.perf_counter() - start}
        return run

    # benchmarks/interleave.py: rounds of every variant in turn, ratio = median of the per-round ratios
    res = run_interleaved({name: timed(fn) for name, fn in fns.items()}, rounds=a.repeats, baseline="one_member",
                          warmup=True, log=None)
    times = {name: [r["metrics"]["seconds"] for r in res["runs"] if r["variant"] == name] for name in fns}
    ratios = {name: 1.0 if name == "one_member" else res["ratios"][name]["seconds"]["median"] for name in fns}
    spreads = {name: [res["ratios"][name]["seconds"]["min"], res["ratios"][name]["seconds"]["max"]]
               for name in fns if name != "one_member"}
    return {"times_s": times, "median_ratio_per_round": ratios, "ratio_min_max_per_round": spreads,
            "load_start": res["load_start"], "load_end": res["load_end"]}


def _base(a):
    """Tokenizer and base sequence classifier: the random tiny model, or SmolLM2 with ``--model smollm2``."""
    if a.model == "smollm2":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from trl_extras.modeling.generation import ensure_pad_token
        from trl_extras.testbed.smollm2 import smollm2_path

        path = smollm2_path()
        tok = ensure_pad_token(AutoTokenizer.from_pretrained(path))
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
        model.config.pad_token_id = tok.pad_token_id
        return tok, model
    from trl_extras.testbed import build_sequence_classifier, build_tokenizer

    tok = build_tokenizer()
    return tok, build_sequence_classifier(tok, _spec(a), seed=0)


def _spec(a):
    from trl_extras.testbed import TinyModelSpec

    heads = max(4, a.hidden // 64)
    return TinyModelSpec(
        hidden_size=a.hidden,
        intermediate_size=4 * a.hidden,
        num_hidden_layers=a.layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max(256, 2 * a.length + 16),
    )


def _lora(a):
    from peft import LoraConfig

    return LoraConfig(
        task_type="SEQ_CLS",
        r=16,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        layers_to_transform=list(range(a.layers - a.tail, a.layers)),
        init_lora_weights=False,
    )


def run_variant(variant: str, a) -> dict:
    """Build the model for ``variant`` in this process, score one batch ``a.repeats`` times, measure."""
    import torch
    from peft import get_peft_model

    from trl_extras.rewards.ensemble import RewardEnsemble

    device = torch.device(a.device)
    tok, model = _base(a)
    prompts, completions = _texts(a.batch_size, a.length, seed=0)
    k = 1 if variant == "one_member" else a.k
    torch.manual_seed(1)
    for i in range(k):
        if i == 0:
            model = get_peft_model(model, _lora(a), adapter_name="member_0")
        else:
            model.add_adapter(f"member_{i}", _lora(a))
    model.to(device).eval()
    if variant == "one_member":
        from trl_extras.rewards.scoring import score_with_reward_model

        def score():
            return score_with_reward_model(model, tok, prompts, completions, batch_size=a.batch_size)

    elif variant == "ensemble_trunk_once":
        ensemble = RewardEnsemble(model, tok, batch_size=a.batch_size)
        assert ensemble.uses_fast_path

        def score():
            return ensemble.raw_scores(prompts, completions)

    else:
        ensemble = RewardEnsemble(model, tok, batch_size=a.batch_size)
        ensemble.tail_start = None  # force the naive K full passes

        def score():
            return ensemble.raw_scores(prompts, completions)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    # Weights + adapters (+ buffers) counted exactly; activation memory as the peak-RSS rise over the RSS before
    # the FIRST scoring call (after it the allocator keeps freed blocks, so later calls barely move the peak).
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        before = _rss_kib("VmRSS") * 1024
    for _ in range(2):  # warm-up (and the ensemble's one-time fast-path self-check)
        score()
    sync()
    times = []
    for _ in range(a.repeats):
        start = time.perf_counter()
        score()
        sync()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        activations = torch.cuda.max_memory_allocated() - before
    else:
        activations = _rss_kib("VmHWM") * 1024 - before
    held = weights + activations
    times.sort()
    return {
        "variant": variant,
        "members": k,
        "median_s": times[len(times) // 2],
        "min_s": times[0],
        "held_mib": held / 2**20,
        "weights_mib": weights / 2**20,
        "scoring_peak_mib": activations / 2**20,
        "tokens_per_batch": int(sum(len(tok(p + c)["input_ids"]) + 1 for p, c in zip(prompts, completions))),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--tail", type=int, default=2, help="adapted last layers")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=160, help="approximate characters (= tokens) per prompt")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="smoke run: small batch, 3 repeats")
    parser.add_argument("--variant", choices=(*VARIANTS, "interleaved"), help=argparse.SUPPRESS)  # child process mode
    parser.add_argument("--tag", default="", help="suffix of the result files")
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny",
                        help="tiny: random model of --layers/--hidden; smollm2: the real 30-layer SmolLM2-135M")
    a = parser.parse_args()
    if a.model == "smollm2":
        a.layers, a.hidden = 30, 576
        a.tag = a.tag or "smollm2"
    if a.quick:
        a.batch_size, a.repeats, a.length = 16, 3, 64
    if a.variant == "interleaved":
        print(json.dumps(time_interleaved(a)))
        return 0
    if a.variant:
        print(json.dumps(run_variant(a.variant, a)))
        return 0
    if a.layers < 12:
        print("note: the target is stated for models with >= 12 layers", file=sys.stderr)

    def child(variant):
        cmd = [sys.executable, __file__, "--variant", variant] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items() if k not in ("variant", "quick", "tag")
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ.copy())
        return json.loads(out.stdout.strip().splitlines()[-1])

    rows = {}
    for variant in VARIANTS:  # a fresh process each, so peak RSS belongs to one variant only
        rows[variant] = child(variant)
        print(f"{variant:>22}: {rows[variant]['held_mib']:8.1f} MiB held, {rows[variant]['median_s'] * 1000:8.1f} ms")
    timing = child("interleaved")
    one = rows["one_member"]
    ratios = timing["median_ratio_per_round"]
    for variant in VARIANTS:
        rows[variant]["interleaved_median_s"] = sorted(timing["times_s"][variant])[a.repeats // 2]
    result = {
        "config": {k: v for k, v in vars(a).items() if k not in ("variant",)},
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "rows": rows,
        "interleaved_times_s": timing["times_s"],
        "interleaved_ratio_min_max": timing.get("ratio_min_max_per_round"),
        "load_start": timing.get("load_start"),
        "load_end": timing.get("load_end"),
        "time_ratio_trunk_once": ratios["ensemble_trunk_once"],
        "memory_ratio_trunk_once": rows["ensemble_trunk_once"]["held_mib"] / one["held_mib"],
        "time_ratio_full_passes": ratios["ensemble_full_passes"],
        "memory_ratio_full_passes": rows["ensemble_full_passes"]["held_mib"] / one["held_mib"],
        "targets": {"time_ratio": 1.6, "memory_ratio": 1.3},
        "method": (
            "time: one process, one model with K adapters, the three variants timed round-robin; ratio = median over "
            "rounds of (variant time / one-member time in the same round). memory: each variant alone in a fresh "
            "process; held = exact parameter+buffer bytes + (peak RSS while scoring - RSS before the first scoring call; "
            "VmHWM reset via /proc/self/clear_refs) (CUDA: max_memory_allocated delta)."
        ),
    }
    result["meets_targets"] = result["time_ratio_trunk_once"] <= 1.6 and result["memory_ratio_trunk_once"] <= 1.3
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "ensemble_speed" + (f"_{a.tag}" if a.tag else "")
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"# K={a.k} LoRA reward ensemble vs one member ({a.device})",
        "",
        ("SmolLM2-135M-Instruct (real weights and tokenizer)" if a.model == "smollm2" else "Random Llama")
        + f", {a.layers} layers, hidden {a.hidden}; LoRA r=16 on the last {a.tail} layers; batch "
        f"{a.batch_size} (~{one['tokens_per_batch']} tokens); OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}.",
        "Time: variants timed round-robin in one process, ratio = median over rounds of time / one-member time in the "
        "same round. Memory: each variant alone in a fresh process, exact weight bytes + peak RSS rise while scoring.",
        "",
        "| variant | members | median ms | time ratio | weights MiB | scoring peak MiB | held MiB | memory ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant, row in rows.items():
        lines.append(
            f"| {variant} | {row['members']} | {row['interleaved_median_s'] * 1000:.1f} | {ratios[variant]:.2f} "
            f"| {row['weights_mib']:.1f} | {row['scoring_peak_mib']:.1f} | {row['held_mib']:.1f} "
            f"| {row['held_mib'] / one['held_mib']:.2f} |"
        )
    lines += ["", f"Targets: time <= 1.6x, memory <= 1.3x → {'met' if result['meets_targets'] else 'NOT met'}.", ""]
    (RESULTS / f"{name}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
