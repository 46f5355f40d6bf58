"""Calibration of ``side_by_side`` on the testbed: false-positive rate under the null and power against a worse model.

1. Null: the testbed SFT policy against itself at T=1, judged by the gold reward, over ``--seeds`` seeds (each seed
   = independent samples for A and B on ``--num_prompts`` holdout prompts). The binomial test is exact, so p < 0.05
   should happen in at most ~5% of seeds. To keep it to minutes on a CPU, all samples are drawn once
   (``num_generations = 2 * seeds`` per prompt through the shared rollout path) and seed s compares draws
   2s and 2s+1 as precomputed completions; one seed is also run end to end from the model (generation inside
   ``side_by_side``) as a check that both paths agree in distribution.
2. Power: a clearly better vs a worse model — greedy decoding vs T=1.5 sampling of the same policy, and the
   policy vs a degraded copy (Gaussian noise on every weight) — over a few seeds; p should be < 0.01.

Writes ``benchmarks/results/side_by_side_calibration.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--num_prompts", type=int, default=128)
    parser.add_argument("--power_seeds", type=int, default=5)
    parser.add_argument("--max_new_tokens", type=int, default=24)
    parser.add_argument("--noise", type=float, default=0.05, help="std of the weight noise of the degraded copy")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_extras.evaluation.side_by_side import side_by_side
    from trl_extras.modeling.generation import generate_rollouts
    from trl_extras.testbed import build_sft_policy, gold_reward_fn, prompt_dataset

    start = time.perf_counter()
    path = build_sft_policy(progress=False)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    prompts = prompt_dataset("holdout")["prompt"][: args.num_prompts]
    gen = dict(max_new_tokens=args.max_new_tokens, batch_size=256)

    # ---- null: A and B are the same policy
    torch.manual_seed(1234)
    k = 2 * args.seeds
    rollout = generate_rollouts(model, tok, prompts, num_generations=k, temperature=1.0, progress=True, **gen)
    samples = [rollout.completions[i * k : (i + 1) * k] for i in range(len(prompts))]
    null = []
    for s in range(args.seeds):
        a = [row[2 * s] for row in samples]
        b = [row[2 * s + 1] for row in samples]
        r = side_by_side(a, b, prompts, gold_reward_fn)
        null.append({"seed": s, "wins": r.wins, "losses": r.losses, "ties": r.ties, "p_value": r.p_value})
    e2e = side_by_side(model, model, prompts, gold_reward_fn, processing_class=tok, seed=0, **{
        "max_new_tokens": args.max_new_tokens, "temperature": 1.0})
    p_values = [x["p_value"] for x in null]
    null_summary = {
        "seeds": args.seeds,
        "num_prompts": len(prompts),
        "share_p_ge_0.05": sum(p >= 0.05 for p in p_values) / len(p_values),
        "share_p_lt_0.05": sum(p < 0.05 for p in p_values) / len(p_values),
        "min_p": min(p_values),
        "median_p": sorted(p_values)[len(p_values) // 2],
        "mean_tie_rate": sum(x["ties"] for x in null) / (len(null) * len(prompts)),
        "end_to_end_seed0": {"wins": e2e.wins, "losses": e2e.losses, "ties": e2e.ties, "p_value": e2e.p_value},
    }

    # ---- power: clearly better vs worse
    degraded = AutoModelForCausalLM.from_pretrained(path).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in degraded.parameters():
            p.add_(torch.randn(p.shape, generator=g) * args.noise)
    power = {"greedy_vs_T1.5": [], f"sft_vs_noise{args.noise}": []}
    for s in range(args.power_seeds):
        greedy = side_by_side(model, model, prompts, gold_reward_fn, processing_class=tok, seed=s,
                              max_new_tokens=args.max_new_tokens, temperature=0)
        hot = side_by_side(model, model, prompts, gold_reward_fn, processing_class=tok, seed=s,
                           max_new_tokens=args.max_new_tokens, temperature=1.5)
        # greedy answers are deterministic: compare them with the T=1.5 answers of this seed
        r = side_by_side([x.answer_a for x in greedy.records], [x.answer_a for x in hot.records], prompts,
                         gold_reward_fn)
        power["greedy_vs_T1.5"].append({"seed": s, "wins": r.wins, "losses": r.losses, "ties": r.ties,
                                        "win_rate": r.win_rate, "win_rate_ci": list(r.win_rate_ci), "p_value": r.p_value})
        r = side_by_side(model, degraded, prompts, gold_reward_fn, processing_class=tok, seed=s,
                         max_new_tokens=args.max_new_tokens, temperature=1.0)
        power[f"sft_vs_noise{args.noise}"].append({"seed": s, "wins": r.wins, "losses": r.losses, "ties": r.ties,
                                                   "win_rate": r.win_rate, "win_rate_ci": list(r.win_rate_ci),
                                                   "p_value": r.p_value})
    result = {"null": null_summary, "null_per_seed": null, "power": power,
              "seconds": round(time.perf_counter() - start, 1), "policy": path}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "side_by_side_calibration.json").write_text(json.dumps(result, indent=2))
    lines = [
        "# side_by_side calibration (testbed SFT policy, gold judge)",
        "",
        f"Null (policy vs itself, T=1, {len(prompts)} holdout prompts, {args.seeds} seeds): "
        f"p >= 0.05 in {null_summary['share_p_ge_0.05']:.0%} of seeds (min p {null_summary['min_p']:.3f}, "
        f"median {null_summary['median_p']:.3f}, tie rate {null_summary['mean_tie_rate']:.2f}).",
        "",
        "| comparison | seed | wins | losses | ties | win rate (95% Wilson CI) | p |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rows in power.items():
        for row in rows:
            lo, hi = row["win_rate_ci"]
            lines.append(f"| {name} | {row['seed']} | {row['wins']} | {row['losses']} | {row['ties']} | "
                         f"{row['win_rate']:.3f} ({lo:.3f}-{hi:.3f}) | {row['p_value']:.2e} |")
    (out / "side_by_side_calibration.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"seconds: {result['seconds']}")


if __name__ == "__main__":
    main()
