"""Does ensemble disagreement flag off-distribution (reward-hacking) completions? Testbed experiment.

K reward models — each the testbed SFT policy with a new score head (the article's recipe), differing only by seed —
are trained with :func:`trl_extras.rewards.ensemble.train_reward_ensemble` on dirty (heuristic) + clean (gold,
10% flips) pairs and calibrated on the training completions. On the holdout prompts we compare the ensemble's
member std (standardized scale) on

* SFT completions (sampled at T=1 from the SFT policy: the distribution the RMs were trained near), and
* hacked completions (``trl_extras.testbed.hacked_completions``: long ascending runs that exploit the heuristic
  labeller, off the training distribution).

Also reported: mean ensemble reward, the penalized reward (UWO, λ=0.5 and 0.1), gold, and the AUROC of the member
std as a detector of hacked vs SFT completions (0.5 = no signal).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/ensemble_ood.py          # a few minutes on CPU
    .venv/bin/python benchmarks/ensemble_ood.py --quick                    # smoke run

Writes ``benchmarks/results/ensemble_ood.json`` and ``ensemble_ood.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

RESULTS = Path(__file__).parent / "results"


def auroc(positive, negative) -> float:
    """P(score of a random positive > score of a random negative), ties counting half (Mann–Whitney U)."""
    import torch

    pos, neg = torch.as_tensor(positive)[:, None], torch.as_tensor(negative)[None, :]
    return float(((pos > neg).float() + 0.5 * (pos == neg).float()).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--dirty-pairs", type=int, default=2000)
    parser.add_argument("--clean-pairs", type=int, default=300)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--num-prompts", type=int, default=256)
    parser.add_argument("--output-dir", default=None, help="where the ensemble is saved (default: a temp dir)")
    parser.add_argument("--quick", action="store_true")
    a = parser.parse_args()
    if a.quick:
        a.dirty_pairs, a.clean_pairs, a.num_prompts, a.k = 200, 50, 32, 2

    import torch
    from datasets import concatenate_datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import RewardConfig

    from trl_extras.modeling.generation import generate_rollouts
    from trl_extras.rewards.ensemble import train_reward_ensemble
    from trl_extras.testbed import (
        build_sft_policy,
        clean_pairs,
        dirty_pairs,
        gold_reward_fn,
        hacked_completions,
        prompt_dataset,
    )

    start = time.perf_counter()
    sft = build_sft_policy(progress=False)
    columns = ["id", "prompt", "chosen", "rejected"]
    train = concatenate_datasets(
        [
            dirty_pairs(a.dirty_pairs, seed=1000).select_columns(columns),
            clean_pairs(a.clean_pairs, seed=2000).select_columns(columns),
        ]
    ).shuffle(seed=0)
    out_dir = a.output_dir or tempfile.mkdtemp(prefix="ensemble_ood_")
    args = RewardConfig(
        output_dir=out_dir,
        num_train_epochs=a.epochs,
        learning_rate=1e-4,
        per_device_train_batch_size=16,
        max_length=256,
        logging_steps=50,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        disable_tqdm=True,
        seed=0,
    )
    ensemble = train_reward_ensemble(sft, train, args, k=a.k, output_dir=out_dir, calibration_size=512)
    train_s = time.perf_counter() - start

    prompts = list(prompt_dataset("holdout")["prompt"])[: a.num_prompts]
    policy = AutoModelForCausalLM.from_pretrained(sft)
    tok = AutoTokenizer.from_pretrained(sft)
    torch.manual_seed(0)
    rollout = generate_rollouts(policy, tok, prompts, max_new_tokens=24, temperature=1.0, batch_size=128)
    sets = {"sft": (rollout.prompts, rollout.completions), "hacked": (prompts, hacked_completions(prompts))}
    rows, stds = {}, {}
    for name, (p, c) in sets.items():
        s = ensemble.score(p, c)
        stds[name] = s.std
        rows[name] = {
            "n": len(p),
            "member_std_mean": float(s.std.mean()),
            "member_std_median": float(s.std.median()),
            "ensemble_mean": float(s.mean.mean()),
            "uwo_0.1": float(s.penalized("variance", 0.1).mean()),
            "uwo_0.5": float(s.penalized("variance", 0.5).mean()),
            "wco_min": float(s.penalized("min").mean()),
            "gold": float(torch.tensor(gold_reward_fn(p, c)).mean()),
        }
    result = {
        "config": vars(a),
        "train_seconds": round(train_s, 1),
        "ensemble": repr(ensemble),
        "rows": rows,
        "std_ratio_hacked_over_sft": rows["hacked"]["member_std_mean"] / rows["sft"]["member_std_mean"],
        "auroc_std_hacked_vs_sft": auroc(stds["hacked"], stds["sft"]),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ensemble_ood.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"# Ensemble disagreement: SFT vs hacked completions (K={a.k}, testbed)",
        "",
        f"K={a.k} RMs (SFT policy + new head, seeds differ) on {a.dirty_pairs} dirty + {a.clean_pairs} clean pairs, "
        f"{a.epochs} epoch(s); calibrated (standardized) on 512 training pairs; {a.num_prompts} holdout prompts.",
        "",
        "| completions | member std (mean) | member std (median) | ensemble mean | UWO λ=0.1 | UWO λ=0.5 | min | gold |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['member_std_mean']:.3f} | {r['member_std_median']:.3f} | {r['ensemble_mean']:.3f} | "
            f"{r['uwo_0.1']:.3f} | {r['uwo_0.5']:.3f} | {r['wco_min']:.3f} | {r['gold']:.3f} |"
        )
    lines += [
        "",
        f"std ratio hacked/SFT: {result['std_ratio_hacked_over_sft']:.2f}; AUROC of member std for hacked vs SFT: "
        f"{result['auroc_std_hacked_vs_sft']:.3f}.",
        "",
    ]
    (RESULTS / "ensemble_ood.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
