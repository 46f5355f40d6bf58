"""README's table of the SmolLM2-scale benchmarks, written from their result files (no number typed by hand).

    python benchmarks/smollm2_benchmarks_table.py   # then: python -m trl_extras.utils.readme_tables --write

Reads ``benchmarks/results/{ensemble_speed_smollm2,exact_kl_ppo_smollm2,ppo_vs_grpo_throughput_smollm2_*}.json`` and
``ppo_vs_grpo_throughput_smollm2_{fp32,bf16}.json`` (written by
``ensemble_speed.py --model smollm2``, ``ppo_vs_grpo_throughput.py --model smollm2 --dtype fp32|bf16`` and
``exact_kl_memory.py --suite ppo --model-kind smollm2 --in-process``) and writes ``benchmarks/results/smollm2_benchmarks_table.md``.
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
    """The interleaved full-depth run (``exact_kl_memory.py --suite ppo --model-kind smollm2 --in-process``): time
    ratios only (in one process the allocator reuses freed blocks, so its memory ratio is not a measurement)."""
    s, q = r["setup"], r["ratios"]

    def ratio(key):
        x = q[key]
        return f"{x['median']:.2f}× ({x['min']:.2f}–{x['max']:.2f})"

    load = f"load {s['loadavg_start'][0]:.1f} → {s['loadavg_end'][0]:.1f}"
    return [
        f"exact KL vs k1, real SmolLM2-135M, all {s['layers']} layers, LoRA r=16, bf16 autocast, T={s['T']}, B={s['B']}",
        f"`benchmarks/exact_kl_memory.py --suite ppo --model-kind smollm2 --in-process --batch {s['B']} "
        f"--length {s['T']}`",
        f"PPO update time {ratio('seconds:update_exact_over_k1')}, rollout statistics time "
        f"{ratio('seconds:stats_exact_over_k1')} (median of {s['pairs']} interleaved pairs, min–max; {load} on 2 "
        "CPUs; memory: not measured reliably on this shared machine, `exact_kl_ppo_smollm2_fresh.md`)",
    ]


def table(results: Path = RESULTS) -> str:
    rows = [
        ensemble_row(json.loads((results / "ensemble_speed_smollm2.json").read_text())),
        *(throughput_row(json.loads(path.read_text())) for path in
          (results / f"ppo_vs_grpo_throughput_smollm2_{dtype}.json" for dtype in ("fp32", "bf16")) if path.exists()),
        exact_kl_full_depth_row(json.loads((results / "exact_kl_ppo_smollm2.json").read_text())),
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
