"""README's table of the SmolLM2-scale benchmarks, written from their result files (no number typed by hand).

    python benchmarks/smollm2_benchmarks_table.py   # then: python -m trl_extras.utils.readme_tables --write

Reads ``benchmarks/results/`` ``ensemble_speed_smollm2.json``, ``ppo_vs_grpo_throughput_smollm2_*.json``
(``THROUGHPUT_FILES``), ``exact_kl_ppo_*.json`` (``EXACT_KL_FILES``) and ``time_to_quality_{arithmetic,sort_hard}.json``
(written by ``ensemble_speed.py --model smollm2``, ``ppo_vs_grpo_throughput.py --model smollm2``,
``exact_kl_memory.py --suite ppo --in-process`` and ``time_to_quality.py``; each row names its command) and writes
``benchmarks/results/smollm2_benchmarks_table.md``.
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def ensemble_row(r: dict) -> list[str]:
    c, rows = r["config"], r["rows"]
    return [
        f"K={c['k']} LoRA reward ensemble vs one member, real {c['layers']}-layer SmolLM2, batch {c['batch_size']}",
        f"`benchmarks/ensemble_speed.py --model smollm2 --batch-size {c['batch_size']} --length {c['length']}`",
        f"time {r['time_ratio_trunk_once']:.2f}×, memory {r['memory_ratio_trunk_once']:.2f}× (trunk once; K full "
        f"passes: {r['time_ratio_full_passes']:.2f}×; one member {rows['one_member']['interleaved_median_s']:.2f} s, "
        f"median of {c['repeats']} interleaved runs) — goal ≤ {r['targets']['time_ratio']}× / "
        f"≤ {r['targets']['memory_ratio']}× {'met' if r['meets_targets'] else 'NOT met'}",
    ]


def throughput_row(r: dict) -> list[str]:
    """A row from ``ppo_vs_grpo_throughput.py``'s interleaved result (ratio: median of the per-round ratios)."""
    m, metrics, ratio = r["meta"], r["metrics"], r["ratios"]["ppo"]["samples_per_s"]
    ppo, grpo = metrics["ppo"]["samples_per_s"], metrics["grpo"]["samples_per_s"]
    load = f"load {r['load_start'][0]:.1f} → {r['load_end'][0]:.1f}" if r.get("load_start") and r.get("load_end") else ""
    return [
        f"{m['labels']['ppo']} vs TRL {m['labels']['grpo']}, LoRA, {m['dtype']} weights, batch {m['batch']}, "
        f"{m['max_completion_length']} new tokens, {m['rollouts_per_run']} rollouts per run",
        f"`{m['command']}`",
        f"{ppo['median']:.3f} vs {grpo['median']:.3f} samples/s (training steps): PPO **{ratio['median']:.2f}×** GRPO's "
        f"(min–max {ratio['min']:.2f}–{ratio['max']:.2f} over {ratio['n']} interleaved pairs; {load} on "
        f"{r.get('cpus', '?')} CPUs)",
    ]


def exact_kl_full_depth_row(r: dict) -> list[str]:
    """An interleaved full-depth run (``exact_kl_memory.py --suite ppo --in-process``): time ratios, and memory as
    the peak of live tensors (``benchmarks/tensor_memory.py``; the process RSS of one process reusing freed blocks is
    not a measurement), where the file has it."""
    s, q = r["setup"], r["ratios"]

    def ratio(key):
        x = q[key]
        return f"{x['median']:.2f}× ({x['min']:.2f}–{x['max']:.2f})"

    def peak(variant):
        values = [run["peak_tensor_mib"] for run in r["runs"].get(variant, []) if "peak_tensor_mib" in run]
        return f"{sorted(values)[len(values) // 2]:.0f} MiB" if values else "?"

    what = ("real SmolLM2-135M, all 30 layers" if s["model_kind"] == "smollm2" else
            f"Qwen2.5-0.5B shape (V=151,936, random weights), {s['layers']} layers")
    parts = [f"PPO update time {ratio('seconds:update_exact_over_k1')}"]
    if "peak_tensor_mib:update_exact_over_k1" in q:
        parts.append(f"peak memory {ratio('peak_tensor_mib:update_exact_over_k1')} ({peak('update-exact')} vs "
                     f"{peak('update-k1')})")
    if "seconds:stats_exact_over_k1" in q:
        parts.append(f"rollout statistics time {ratio('seconds:stats_exact_over_k1')}")
    if "peak_tensor_mib:stats_exact_over_k1" in q:
        parts.append(f"memory {ratio('peak_tensor_mib:stats_exact_over_k1')}")
    if "peak_tensor_mib:update_exact_full_logits_over_chunked" in q:
        parts.append(f"with the (B, T, V) fallback one exact update peaks at {peak('update-exact@full')} "
                     f"({ratio('peak_tensor_mib:update_exact_full_logits_over_chunked')} of chunked)")
    load = f"load {s['loadavg_start'][0]:.1f} → {s['loadavg_end'][0]:.1f}"
    command = (f"`benchmarks/exact_kl_memory.py --suite ppo --model-kind {s['model_kind']} --in-process --batch {s['B']} "
               f"--length {s['T']}" + (f" --layers {s['layers']}`" if s["model_kind"] != "smollm2" else "`"))
    return [
        f"exact KL vs k1, {what}, LoRA r=16, {'bf16 autocast' if s['bf16_autocast'] else 'fp32'}, T={s['T']}, "
        f"B={s['B']}",
        command,
        ", ".join(parts) + f" (median of {s['pairs']} interleaved pairs, min–max; {load} on 2 CPUs)",
    ]


def time_to_quality_row(r: dict) -> list[str]:
    """``time_to_quality.py``: PPO's time to GRPO's final gold over GRPO's training time, paired per seed."""
    m, x, goal = r["meta"], r["metrics"], r["goal"]

    def reached(key):
        g = goal[key]
        ratio = g["ratio"]
        if ratio is None:
            return f"never ({g['reached']} seeds)"
        return f"{ratio['median']:.2f}× ({ratio['min']:.2f}–{ratio['max']:.2f}; reached in {g['reached']} seeds)"

    return [
        f"time to quality, PPO (recipe) vs TRL GRPO (β=0), {m['what']}, {len(m['seeds'])} seeds, rollout batch "
        f"{m['rollout_batch']}, {m['rollouts']} rollouts",
        f"`{m['command']}`",
        f"PPO's time to GRPO's final gold over GRPO's training time: T=1 {reached('gold_T1')}, greedy "
        f"{reached('gold_greedy')}; final gold PPO vs GRPO {x['ppo']['gold_T1_final']['median']:.3f} vs "
        f"{x['grpo']['gold_T1_final']['median']:.3f} (T=1), {x['ppo']['gold_greedy_final']['median']:.3f} vs "
        f"{x['grpo']['gold_greedy_final']['median']:.3f} (greedy); PPO's run "
        f"{r['ratios']['ppo']['train_seconds']['median']:.2f}× GRPO's seconds (load {r['load_start'][0]:.1f} → "
        f"{r['load_end'][0]:.1f})",
    ]


THROUGHPUT_FILES = ("fp32", "bf16", "fp32_b8_l64", "bf16_b8_l64", "fp32_b32_l16", "bf16_b32_l16", "fp32_b32_l64", "bf16_b32_l64",
                    "bf16_4epochs")
EXACT_KL_FILES = ("exact_kl_ppo_smollm2", "exact_kl_ppo_smollm2_t512", "exact_kl_ppo_qwen_24layers")


def table(results: Path = RESULTS) -> str:
    rows = [
        ensemble_row(json.loads((results / "ensemble_speed_smollm2.json").read_text())),
        *(throughput_row(json.loads(path.read_text())) for path in
          (results / f"ppo_vs_grpo_throughput_smollm2_{name}.json" for name in THROUGHPUT_FILES) if path.exists()),
        *(exact_kl_full_depth_row(json.loads(path.read_text())) for path in
          (results / f"{name}.json" for name in EXACT_KL_FILES) if path.exists()),
        *(time_to_quality_row(json.loads(path.read_text())) for path in
          (results / f"time_to_quality_{task}.json" for task in ("arithmetic", "sort_hard")) if path.exists()),
    ]
    lines = ["| benchmark | command | result |", "|---|---|---|", *("| " + " | ".join(row) + " |" for row in rows)]
    return "\n".join(lines) + "\n"


def main() -> int:
    out = RESULTS / "smollm2_benchmarks_table.md"
    out.write_text(table())
    print(out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
