"""PPO on the testbed: does it raise the SFT policy's gold reward, and does advantage normalization make it
indifferent to an affine rescaling of the reward?

Runs (same seed, same prompts, same budget of optimizer steps):
  * ``gold``                 reward = gold, ``advantage_normalization="batch"`` (the default)
  * ``gold_x100+50_batch``   reward = 100 * gold + 50, batch normalization
  * ``gold_x100+50_none``    reward = 100 * gold + 50, no normalization
For each: mean gold reward of one sample (T=1) per holdout prompt (256 prompts) with a 95% t-interval, before
and after, the exact-sort rate, a paired sign test against the SFT policy (per-prompt gold after vs before), KL
to the reference, and wall time.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ppo_testbed.py            # ~10 min on one CPU core
    .venv/bin/python benchmarks/ppo_testbed.py --quick                      # smoke run

Writes ``benchmarks/results/ppo_testbed.json`` and ``ppo_testbed.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

RESULTS = Path(__file__).parent / "results"


def affine_gold(scale: float, shift: float):
    from trl_extras.testbed import gold_reward_fn

    def reward(prompts, completions, **kwargs):
        return [scale * g + shift for g in gold_reward_fn(prompts, completions)]

    reward.__name__ = f"gold_x{scale:g}{shift:+g}"
    return reward


def holdout_gold(model, tok, prompts, seed: int = 1234):
    """Per-prompt gold reward of one T=1 sample (seeded, so before/after use the same sampling noise stream)."""
    import torch

    from trl_extras.modeling.generation import generate_rollouts
    from trl_extras.testbed import gold_reward_fn

    torch.manual_seed(seed)
    ro = generate_rollouts(model, tok, prompts, max_new_tokens=24, temperature=1.0, batch_size=256)
    return gold_reward_fn(ro.prompts, ro.completions)


def summarize(gold: list[float]) -> dict:
    from trl_extras.core.stats import mean_ci

    mean, low, high = mean_ci(gold)
    return {"mean": mean, "ci95": [low, high], "exact_sort_rate": sum(g >= 1.0 for g in gold) / len(gold)}


def run(name, reward, normalization, sft_path, steps, prompts, holdout, before, out_dir, lr=5e-5, seed=0,
        penalty_scale: float = 1.0) -> dict:
    from trl_extras.core.stats import binomial_test
    from trl_extras.testbed import gold_reward_fn
    from trl_extras.trainers.ppo import PPOConfig, PPOTrainer

    args = PPOConfig(
        output_dir=str(out_dir / name), use_cpu=True, bf16=False, report_to="none", save_strategy="no",
        per_device_train_batch_size=32, gradient_accumulation_steps=1, num_mini_batches=2, num_ppo_epochs=2,
        max_steps=steps, max_completion_length=24, learning_rate=lr, value_learning_rate=10 * lr,
        lr_scheduler_type="constant", kl_coef=0.05 * penalty_scale, missing_eos_penalty=1.0 * penalty_scale,
        advantage_normalization=normalization,
        value_model_init="policy", logging_steps=4, seed=seed, disable_tqdm=True,
    )
    trainer = PPOTrainer(sft_path, reward_funcs=reward, args=args, train_dataset=prompts,
                         log_reward_funcs=[gold_reward_fn])
    t0 = time.time()
    trainer.train()
    wall = time.time() - t0
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    after = holdout_gold(model, trainer.processing_class, holdout)
    wins = sum(a > b for a, b in zip(after, before))
    losses = sum(a < b for a, b in zip(after, before))
    history = [h for h in trainer.state.log_history if "rewards/gold_reward/mean" in h]
    return {
        "name": name,
        "advantage_normalization": normalization,
        "penalty_scale": penalty_scale,
        "steps": steps,
        "train_seconds": wall,
        "after": summarize(after),
        "sign_test_vs_sft": {"wins": wins, "losses": losses, "p_value": binomial_test(wins, losses)},
        "final_train_kl_exact": next((h["kl/exact"] for h in reversed(trainer.state.log_history) if "kl/exact" in h), None),
        "train_gold_curve": [(h["step"], h["rewards/gold_reward/mean"]) for h in history],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=96, help="optimizer steps per run (a rollout every 4)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 8 steps, 64 holdout prompts")
    parser.add_argument("--only", default=None, help="comma-separated run names")
    parser.add_argument("--lr", type=float, default=5e-5, help="policy learning rate (value: 10x)")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_extras.testbed import TestbedConfig, build_sft_policy, gold_reward_fn, prompt_dataset

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    steps = 8 if args.quick else args.steps
    sft_path = build_sft_policy(progress=False)
    cfg = TestbedConfig()
    prompts = prompt_dataset("train", cfg)
    holdout = list(prompt_dataset("holdout", cfg)["prompt"])[: 64 if args.quick else 256]
    tok = AutoTokenizer.from_pretrained(sft_path, padding_side="left")
    before = holdout_gold(AutoModelForCausalLM.from_pretrained(sft_path).eval(), tok, holdout)
    runs = {
        "gold": (gold_reward_fn, "batch"),
        "gold_x100+50_batch": (affine_gold(100.0, 50.0), "batch"),
        "gold_x100+50_none": (affine_gold(100.0, 50.0), "none"),
        # the KL coefficient and the EOS penalty rescaled too: the whole per-token reward is 100 r + 50 (at EOS)
        "gold_x100+50_batch_penalties_x100": (affine_gold(100.0, 50.0), "batch", 100.0),
    }
    if args.only:
        runs = {k: v for k, v in runs.items() if k in args.only.split(",")}
    results = {"sft_before": summarize(before), "num_holdout_prompts": len(holdout), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (reward, norm, *scale) in runs.items():
            print(f"== {name}", flush=True)
            r = run(name, reward, norm, sft_path, steps, prompts, holdout, before, Path(tmp), lr=args.lr,
                    penalty_scale=scale[0] if scale else 1.0)
            print(json.dumps(r["after"]), r["sign_test_vs_sft"], f"{r['train_seconds']:.0f}s", flush=True)
            results["runs"].append(r)

    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    previous = RESULTS / f"ppo_testbed{suffix}.json"
    if args.only and previous.is_file():  # --only re-runs some rows of an existing table
        old = json.loads(previous.read_text())
        fresh = {r["name"]: r for r in results["runs"]}
        results["runs"] = [fresh.pop(r["name"], r) for r in old["runs"]] + list(fresh.values())
    (RESULTS / f"ppo_testbed{suffix}.json").write_text(json.dumps(results, indent=2))
    b = results["sft_before"]
    lines = [
        f"# PPO on the testbed ({len(holdout)} holdout prompts, one T=1 sample each, {steps} optimizer steps)",
        "",
        "| policy | gold mean | 95% CI | exact sorts | wins/losses vs SFT | sign-test p | KL(exact) | train s |",
        "|---|---|---|---|---|---|---|---|",
        f"| SFT | {b['mean']:.3f} | [{b['ci95'][0]:.3f}, {b['ci95'][1]:.3f}] | {b['exact_sort_rate']:.0%} | | | | |",
    ]
    for r in results["runs"]:
        a, s = r["after"], r["sign_test_vs_sft"]
        kl = r["final_train_kl_exact"]
        lines.append(
            f"| PPO {r['name']} | {a['mean']:.3f} | [{a['ci95'][0]:.3f}, {a['ci95'][1]:.3f}] | "
            f"{a['exact_sort_rate']:.0%} | {s['wins']}/{s['losses']} | {s['p_value']:.2g} | "
            f"{kl if kl is None else f'{kl:.3f}'} | {r['train_seconds']:.0f} |"
        )
    (RESULTS / f"ppo_testbed{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
