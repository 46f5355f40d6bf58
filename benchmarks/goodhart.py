"""Goodhart on the testbed: PPO with β=0 against a proxy reward model trained on dirty (heuristic) labels only,
single proxy vs a variance-penalized ensemble of proxies (Gao et al. 2022; Coste et al. 2023).

1. K=3 reward models — each the testbed SFT policy with a new score head, seeds differ — are trained with TRL's
   ``RewardTrainer`` (via :func:`trl_extras.rewards.ensemble.train_reward_ensemble`) on DIRTY pairs only (the
   biased heuristic labeller), then calibrated (each member standardized on the chosen and rejected completions
   of 512 training pairs). Member 0 alone is the *single proxy*; the 3 members with ``mean − λ·var`` (UWO) on
   the standardized scale are the *penalized proxy*.
2. PPO from the SFT policy, ``kl_coef=0`` (β=0), ``advantage_normalization="batch"``, a high learning rate so the
   policy over-optimizes within the run: (a) against the single proxy, (b) against the penalized ensemble.
3. Every ``--every`` optimizer steps, on ``--num-prompts`` holdout prompts (one T=1 sample each, seeded by the
   step so both runs see the same sampling noise stream at the same step), measure the mean gold reward, the
   mean *single-proxy* score (standardized member 0, unpenalized — the same yardstick for both runs) and
   KL(π‖π_SFT) summed over each answer (exact, from the logits), via the shared
   :class:`trl_extras.callbacks.reward_measure.RewardMeasureCallback` (the pipeline's PPO stages use it too).

    .venv/bin/python benchmarks/goodhart.py             # ~8 min on 2 idle CPU cores (RMs cached after the first run)
    .venv/bin/python benchmarks/goodhart.py --quick     # smoke run

Writes ``benchmarks/results/goodhart.json``, ``goodhart.md`` and ``goodhart.png`` (gold and proxy vs sqrt(KL)).
The trained reward models are cached (``--rm-dir``, default under the testbed cache) so a re-run skips step 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

RESULTS = Path(__file__).parent / "results"


class SingleProxy:
    """Member 0 of the ensemble alone, standardized with its own calibration (a TRL reward function).

    Standardizing is affine, so PPO with batch-normalized advantages sees the same signal as the raw score; it puts
    the proxy on the same scale as the ensemble members so the two runs' curves share one y-axis.
    """

    def __init__(self, ensemble):
        self.model = ensemble.models[0]
        self.tokenizer = ensemble.processing_class
        self.mean = ensemble.calibration["mean"][0]
        self.std = ensemble.calibration["std"][0]
        self.config = self.model.config  # TRL utilities read `.config`
        self.__name__ = "single_proxy"

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        from trl_extras.rewards.scoring import score_with_reward_model

        raw = score_with_reward_model(self.model, self.tokenizer, list(prompts), list(completions), 64)
        return ((raw - self.mean) / self.std).tolist()


def ensemble_std_fn(ensemble):
    def ensemble_std(prompts, completions, **kwargs):
        return ensemble.score(list(prompts), list(completions)).std.tolist()

    return ensemble_std


def penalized_fn(ensemble, coef):
    def penalized(prompts, completions, **kwargs):
        return ensemble.score(list(prompts), list(completions)).penalized("variance", coef).tolist()

    return penalized


def train_or_load_ensemble(sft_path: str, rm_dir: Path, a) -> tuple:
    from trl import RewardConfig

    from trl_extras.rewards.ensemble import RewardEnsemble, train_reward_ensemble
    from trl_extras.testbed import dirty_pairs

    if (rm_dir / "ensemble_manifest.json").is_file():
        return RewardEnsemble.from_pretrained(rm_dir, penalty="variance", coef=a.coef), 0.0, True
    start = time.perf_counter()
    pairs = dirty_pairs(a.dirty_pairs, seed=1000).select_columns(["id", "prompt", "chosen", "rejected"])
    args = RewardConfig(
        output_dir=str(rm_dir),
        num_train_epochs=1.0,
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
    ensemble = train_reward_ensemble(
        sft_path,
        pairs,
        args,
        k=a.k,
        output_dir=rm_dir,
        calibration_size=512,
        penalty="variance",
        coef=a.coef,
        progress=False,
    )
    return ensemble, time.perf_counter() - start, False


def rm_accuracy(ensemble, n: int = 500) -> dict:
    """Pairwise accuracy of member 0 and of the penalized ensemble against GOLD on fresh testbed pairs."""
    from trl_extras.testbed import clean_pairs

    pairs = clean_pairs(n, flip_rate=0.0, seed=4242)
    keep = [i for i, (g1, g2) in enumerate(zip(pairs["gold_chosen"], pairs["gold_rejected"])) if g1 != g2]
    pairs = pairs.select(keep)
    prompts = list(pairs["prompt"])
    sc = ensemble.score(prompts, list(pairs["chosen"]))
    sr = ensemble.score(prompts, list(pairs["rejected"]))
    gold_pref = [g1 > g2 for g1, g2 in zip(pairs["gold_chosen"], pairs["gold_rejected"])]

    def acc(a, b):
        return float(sum((x > y) == g for x, y, g in zip(a.tolist(), b.tolist(), gold_pref)) / len(gold_pref))

    return {
        "num_pairs": len(gold_pref),
        "member0": acc(sc.members[0], sr.members[0]),
        "members": [acc(sc.members[k], sr.members[k]) for k in range(sc.members.size(0))],
        "penalized": acc(sc.penalized("variance", ensemble.coef), sr.penalized("variance", ensemble.coef)),
    }


def exact_sort_rate(prompts, completions, **kwargs):
    """1 where the answer is exactly the sorted digits (gold reward 1), else 0: its mean is the exact-sort rate."""
    from trl_extras.testbed import gold_reward_fn

    return [float(g >= 1.0) for g in gold_reward_fn(prompts, completions)]


def trajectory_callback(sft_model, prompts, proxy, gold, extra, every: int, max_new_tokens: int):
    """The shared :class:`~trl_extras.callbacks.reward_measure.RewardMeasureCallback`: gold, proxy, the extras and
    KL to SFT every ``every`` steps on fixed holdout prompts (one T=1 sample each, seeded by 1000 + step)."""
    from trl_extras.callbacks.reward_measure import RewardMeasureCallback

    rewards = {"gold": gold, "proxy": proxy, "exact_sort_rate": exact_sort_rate, **extra}
    return RewardMeasureCallback(
        rewards, prompts, every_n_steps=every, ref_model=sft_model, max_new_tokens=max_new_tokens, temperature=1.0,
        seed=1000, prefix="goodhart",
    )


def run_ppo(name, reward, sft_path, train_prompts, callback, out_dir: Path, a) -> dict:
    from trl_extras.trainers.ppo import PPOConfig, PPOTrainer

    args = PPOConfig(
        output_dir=str(out_dir / name),
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        per_device_train_batch_size=a.batch_size,
        gradient_accumulation_steps=1,
        num_mini_batches=a.num_mini_batches,
        num_ppo_epochs=a.num_ppo_epochs,
        max_steps=a.steps,
        max_completion_length=24,
        learning_rate=a.lr,
        lr_scheduler_type="constant",
        kl_coef=getattr(a, "kl_coef", 0.0),  # overoptimization.py's β comparison sets it; goodhart itself runs β=0
        kl_estimator="exact",
        advantage_normalization="batch",
        value_model_init="policy",
        logging_steps=a.every,
        seed=getattr(a, "seed", 0),
        disable_tqdm=True,
    )
    trainer = PPOTrainer(sft_path, reward_funcs=reward, args=args, train_dataset=train_prompts, callbacks=[callback])
    callback.set_trainer(trainer)
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    logs = [
        {k: v for k, v in h.items() if isinstance(v, (int, float))}
        for h in trainer.state.log_history
        if any(k.startswith(("reward", "kl", "ensemble")) for k in h)
    ]
    points = callback.points
    peak = max(points, key=lambda p: p["gold"])
    return {
        "name": name,
        "train_seconds": round(wall, 1),
        "points": points,
        "peak_gold": {"step": peak["step"], "gold": peak["gold"], "kl": peak["kl"], "proxy": peak["proxy"]},
        "final": {k: points[-1][k] for k in ("step", "gold", "kl", "proxy")},
        "train_logs": logs,
    }


def render(result: dict) -> str:
    a = result["config"]
    runs = result["runs"]
    lines = [
        "# Goodhart on the testbed: PPO (β=0) against a dirty-label proxy — single RM vs penalized ensemble",
        "",
        f"Proxy RMs: K={a['k']} × (SFT policy + new head) trained on {a['dirty_pairs']} DIRTY pairs only (1 epoch), "
        f"standardized on 512 training pairs. Single proxy = member 0; penalized = mean − λ·var of the 3 standardized "
        f"members, λ={a['coef']}. Accuracy vs gold on {result['rm_accuracy']['num_pairs']} fresh pairs: member 0 "
        f"{result['rm_accuracy']['member0']:.3f}, members {', '.join(f'{x:.3f}' for x in result['rm_accuracy']['members'])}, "
        f"penalized {result['rm_accuracy']['penalized']:.3f}.",
        "",
        f"PPO from the SFT policy: kl_coef=0, batch-normalized advantages, lr={a['lr']} (value lr 10×), batch "
        f"{a['batch_size']}, {a['num_ppo_epochs']} epochs × {a['num_mini_batches']} minibatches per rollout "
        f"(a rollout every {a['num_ppo_epochs'] * a['num_mini_batches']} optimizer steps), {a['steps']} optimizer "
        f"steps, max 24 new tokens, T=1. Measured every {a['every']} steps on {a['num_prompts']} holdout prompts "
        "(one T=1 sample each): gold, proxy (= standardized single-RM score, unpenalized, for BOTH runs), "
        "KL(π‖SFT) summed per answer (exact, nats), ensemble member std (standardized).",
        "",
        "| step | single: gold | single: proxy | single: KL | single: ens. std | penalized: gold | penalized: proxy "
        "| penalized: KL | penalized: ens. std |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    by_step = {}
    for r in runs:
        for p in r["points"]:
            by_step.setdefault(p["step"], {})[r["name"]] = p

    def cells(p):
        if p is None:
            return "| | | | "
        return f"{p['gold']:.3f} | {p['proxy']:+.3f} | {p['kl']:.2f} | {p.get('ensemble_std', float('nan')):.3f}"

    for step in sorted(by_step):
        row = by_step[step]
        lines.append(f"| {step} | {cells(row.get('single'))} | {cells(row.get('penalized'))} |")
    lines += [
        "",
        "| run | SFT gold (step 0) | peak gold (step, KL) | final gold | final proxy | final KL | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        pk, fn, p0 = r["peak_gold"], r["final"], r["points"][0]
        lines.append(
            f"| {r['name']} | {p0['gold']:.3f} | {pk['gold']:.3f} (step {pk['step']}, KL {pk['kl']:.2f}) | "
            f"{fn['gold']:.3f} | {fn['proxy']:+.3f} | {fn['kl']:.2f} | {r['train_seconds']:.0f} |"
        )
    se = result.get("gold_se_typical")
    if se:
        lines += ["", f"Typical standard error of one gold point: ±{se:.3f} (t-interval half-width / 1.96)."]
    lines += [
        "",
        f"Total wall time: {result['total_seconds']:.0f} s (RM training {result['rm_train_seconds']:.0f} s"
        f"{', cached' if result['rm_cached'] else ''}).",
        "",
    ]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {
        "single": ("tab:red", "single proxy"),
        "penalized": ("tab:blue", f"ensemble, mean − {result['config']['coef']}·var"),
    }
    for r in result["runs"]:
        color, label = styles[r["name"]]
        x = [math.sqrt(max(p["kl"], 0.0)) for p in r["points"]]
        axes[0].plot(x, [p["gold"] for p in r["points"]], "o-", color=color, label=label)
        lo = [p["gold_ci"][0] for p in r["points"]]
        hi = [p["gold_ci"][1] for p in r["points"]]
        axes[0].fill_between(x, lo, hi, color=color, alpha=0.12)
        axes[1].plot(x, [p["proxy"] for p in r["points"]], "o-", color=color, label=label)
    axes[0].set_title("gold reward (holdout, T=1)")
    axes[1].set_title("proxy: single dirty RM (standardized)")
    for ax in axes:
        ax.set_xlabel("sqrt(KL(π‖SFT)) per answer, nats^½")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("PPO β=0 against a dirty-label proxy (testbed)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=3, help="ensemble members")
    parser.add_argument("--dirty-pairs", type=int, default=2000)
    parser.add_argument("--coef", type=float, default=1.0, help="λ of the variance penalty (standardized scale)")
    parser.add_argument("--steps", type=int, default=64, help="PPO optimizer steps per run")
    parser.add_argument("--every", type=int, default=8, help="measure every N optimizer steps")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-ppo-epochs", type=int, default=2)
    parser.add_argument("--num-mini-batches", type=int, default=2)
    parser.add_argument("--num-prompts", type=int, default=128, help="holdout prompts per measurement")
    parser.add_argument("--rm-dir", default=None, help="where the proxy ensemble is cached")
    parser.add_argument("--only", default=None, help="run only 'single' or 'penalized'")
    parser.add_argument("--quick", action="store_true", help="smoke run (tiny budgets; writes *_quick results)")
    a = parser.parse_args(argv)
    if a.quick:
        a.dirty_pairs, a.steps, a.every, a.num_prompts = 200, 8, 4, 32

    import torch
    from transformers import AutoModelForCausalLM

    from trl_extras.rewards.functions import RewardFunctions
    from trl_extras.testbed import build_sft_policy, gold_reward_fn, prompt_dataset
    from trl_extras.testbed.policy import default_cache_dir

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    start = time.perf_counter()
    sft_path = build_sft_policy(progress=False)
    rm_dir = Path(a.rm_dir or Path(default_cache_dir()) / f"goodhart-rm-k{a.k}-dirty{a.dirty_pairs}")
    ensemble, rm_seconds, cached = train_or_load_ensemble(sft_path, rm_dir, a)
    ensemble.coef = a.coef
    print(f"{ensemble!r}  trained in {rm_seconds:.0f}s (cached={cached})", flush=True)
    accuracy = rm_accuracy(ensemble)
    print("RM accuracy vs gold:", accuracy, flush=True)

    single = SingleProxy(ensemble)
    proxy_eval = RewardFunctions(single)
    gold_eval = RewardFunctions(gold_reward_fn)
    extra = {
        "ensemble_std": RewardFunctions(ensemble_std_fn(ensemble)),
        "penalized_reward": RewardFunctions(penalized_fn(ensemble, a.coef)),
    }
    sft_model = AutoModelForCausalLM.from_pretrained(sft_path).eval()
    holdout = list(prompt_dataset("holdout")["prompt"])[: a.num_prompts]
    train_prompts = prompt_dataset("train")

    runs = {"single": single, "penalized": ensemble}
    if a.only:
        runs = {k: v for k, v in runs.items() if k in a.only.split(",")}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, reward in runs.items():
            print(f"== PPO against {name}", flush=True)
            cb = trajectory_callback(sft_model, holdout, proxy_eval, gold_eval, extra, a.every, 24)
            results.append(run_ppo(name, reward, sft_path, train_prompts, cb, Path(tmp), a))

    ses = [(p["gold_ci"][1] - p["gold_ci"][0]) / 2 / 1.96 for r in results for p in r["points"]]
    result = {
        "config": vars(a),
        "sft_path": sft_path,
        "ensemble": repr(ensemble),
        "calibration": ensemble.calibration,
        "rm_accuracy": accuracy,
        "rm_train_seconds": round(rm_seconds, 1),
        "rm_cached": cached,
        "runs": results,
        "gold_se_typical": sum(ses) / len(ses) if ses else None,
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "goodhart_quick" if a.quick else "goodhart"
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str))
    md = render(result)
    (RESULTS / f"{stem}.md").write_text(md)
    plot(result, RESULTS / f"{stem}.png")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
