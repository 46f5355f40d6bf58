"""The article's "second way" on the testbed: PPO against a fixed proxy vs the same run with reward-model refreshes,
and the equal-labelling-budget question (M labels spent up front vs the same M labels spent across refreshes).

Per seed:

1. The proxy: the testbed SFT policy + a new score head trained (TRL ``RewardTrainer``) on ``--dirty-pairs`` DIRTY
   pairs (the biased heuristic labeller that likes padded ascending answers).
2. Three PPO runs from the SFT policy, β = 0 (no KL penalty, so over-optimization shows within the run), same
   settings and seed:
   - ``fixed``: against the dirty proxy as is;
   - ``upfront``: against the dirty proxy refreshed ONCE before RL on ``M`` clean pairs (the testbed's "AI
     trainers": gold labels, ``--flip-rate`` of them flipped) on SFT-distribution answers — a bigger clean set,
     then a fixed reward model;
   - ``refresh``: against the dirty proxy, refreshed ``R`` times during RL (:class:`RewardRefreshCallback`) on
     ``M / R`` comparisons each of the current policy's answer vs the SFT model's, labelled by the same noisy gold
     judge (:class:`RewardJudge`, same flip rate). Both use :func:`refresh_reward_model` with the same settings and
     replay of the dirty pairs, so the ONLY difference is which answers the M labels were spent on.
3. Gold of the policy on ``--num-prompts`` holdout prompts every ``--every`` steps (one T=1 sample each, seeded by
   the step, so runs share the sampling noise stream) and at the end both at T=1 and greedy.

    nice -n 10 .venv/bin/python benchmarks/reward_refresh.py --seeds 0 1 2 --steps 32 --every 8
        # 1619 s measured with 1 torch thread on a 2-core machine shared by 5 busy processes
    .venv/bin/python benchmarks/reward_refresh.py --steps 32 --every 8 --refreshes 7 --runs refresh \
        --reuse benchmarks/results/reward_refresh.json --out benchmarks/results/reward_refresh_every4   # cadence
    .venv/bin/python benchmarks/reward_refresh.py --quick                       # smoke run

Writes ``benchmarks/results/reward_refresh.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

RESULTS = Path(__file__).parent / "results"
RUNS = ("fixed", "upfront", "refresh")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--dirty-pairs", type=int, default=1000)
    p.add_argument("--labels", type=int, default=192, help="M: the labelling budget of both labelled runs.")
    p.add_argument("--refreshes", type=int, default=3, help="R: refreshes during RL (M / R comparisons each).")
    p.add_argument("--flip-rate", type=float, default=0.1, help="Label noise of the gold 'AI trainers'.")
    p.add_argument("--steps", type=int, default=40, help="PPO optimizer steps.")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--kl-coef", type=float, default=0.0, help="β of PPO's exact KL penalty (0: none).")
    p.add_argument("--num-ppo-epochs", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--rm-lr", type=float, default=3e-4, help="Learning rate of the proxy and of every refresh.")
    p.add_argument("--refresh-epochs", type=float, default=2.0)
    p.add_argument("--num-prompts", type=int, default=128, help="Holdout prompts per gold measurement.")
    p.add_argument("--every", type=int, default=10, help="Measure gold every N steps.")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared: 1).")
    p.add_argument("--quick", action="store_true", help="Tiny smoke run.")
    p.add_argument("--out", default=str(RESULTS / "reward_refresh"))
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=RUNS, help="Runs to train (others: --reuse).")
    p.add_argument("--reuse", default=None,
                   help="A previous result JSON with the same settings: take the runs not trained here from it "
                        "(e.g. a second refresh cadence against the same fixed and upfront runs).")
    a = p.parse_args(argv)
    if a.quick:
        a.seeds, a.dirty_pairs, a.labels, a.refreshes, a.steps = [0, 1], 128, 24, 2, 6
        a.num_prompts, a.every, a.batch_size = 16, 3, 16
        a.out = str(Path(tempfile.gettempdir()) / "reward_refresh_quick")
    if a.steps % (a.refreshes + 1):
        raise SystemExit(f"--steps ({a.steps}) must be divisible by --refreshes + 1 ({a.refreshes + 1}).")
    return a


def cpu(**kw):
    return dict(use_cpu=True, bf16=False, report_to="none", save_strategy="no", gradient_checkpointing=False,
                disable_tqdm=True, logging_steps=1000, **kw)


def train_proxy(sft, tok, seed, a, workdir):
    import torch
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from trl_extras.testbed import dirty_pairs

    pairs = dirty_pairs(a.dirty_pairs, seed=1000 + seed).select_columns(["prompt", "chosen", "rejected"])
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(sft, num_labels=1)
    args = RewardConfig(output_dir=str(workdir / "proxy"), num_train_epochs=1, learning_rate=a.rm_lr,
                        per_device_train_batch_size=32, max_length=128, seed=seed, **cpu())
    RewardTrainer(model=model, args=args, train_dataset=pairs, processing_class=tok).train()
    model.eval()
    return model, pairs


def refresh_args(a, seed, out):
    from trl_extras.refresh.refresh import RewardRefreshConfig

    return RewardRefreshConfig(output_dir=str(out), num_train_epochs=a.refresh_epochs, learning_rate=a.rm_lr,
                               per_device_train_batch_size=32, max_length=128, seed=seed, replay_ratio=1.0,
                               **cpu())


def gold_of(policy, tok, prompts, a, temperature, seed):
    from trl_extras.evaluation.measure import measure_policy
    from trl_extras.testbed import gold_reward_fn

    m = measure_policy(policy, tok, prompts, {"gold": gold_reward_fn}, max_new_tokens=a.max_new_tokens,
                       temperature=temperature, batch_size=128, seed=seed)
    return m.rewards["gold"], m.summary()["length"], m.completions[:2]


def trajectory(tok, prompts, a):
    """Gold on the holdout prompts every ``a.every`` steps (T=1, seeded by 5000 + step): the shared callback."""
    from trl_extras.callbacks.reward_measure import RewardMeasureCallback
    from trl_extras.testbed import gold_reward_fn

    return RewardMeasureCallback({"gold": gold_reward_fn}, prompts, every_n_steps=a.every, processing_class=tok,
                                 max_new_tokens=a.max_new_tokens, temperature=1.0, seed=5000, num_samples=2)


def run_ppo(name, sft, tok, reward_model, seed, a, workdir, train_prompts, holdout, extra_callbacks=()):
    from trl_extras.rewards.scoring import RewardModelScorer
    from trl_extras.trainers.ppo import PPOConfig, PPOTrainer

    args = PPOConfig(
        output_dir=str(workdir / name), per_device_train_batch_size=a.batch_size, num_mini_batches=1,
        num_ppo_epochs=a.num_ppo_epochs, max_steps=a.steps, max_completion_length=a.max_new_tokens,
        learning_rate=a.lr, lr_scheduler_type="constant", kl_coef=a.kl_coef, kl_estimator="exact",
        advantage_normalization="batch", value_model_init="policy", seed=seed, **cpu(),
    )
    scorer = RewardModelScorer(reward_model, tok)
    measure = trajectory(tok, holdout, a)
    callbacks = [measure, *extra_callbacks]
    trainer = PPOTrainer(sft, reward_funcs=scorer, args=args, train_dataset=train_prompts, callbacks=callbacks)
    for cb in callbacks:
        cb.set_trainer(trainer)
    t0 = time.perf_counter()
    trainer.train()
    policy = trainer.policy
    final = {}
    for label, temp in (("t1", 1.0), ("greedy", 0.0)):
        gold, length, sample = gold_of(policy, tok, holdout, a, temp, 9000 + seed)
        final[label] = {"gold": sum(gold) / len(gold), "gold_values": gold, "length": length, "sample": sample}
    return {"name": name, "seed": seed, "points": measure.points, "final": final,
            "train_seconds": round(time.perf_counter() - t0, 1)}


def run_seed(seed, a, sft, tok, workdir):
    from trl_extras.callbacks.reward_refresh import RewardRefreshCallback
    from trl_extras.refresh.labeling import RewardJudge
    from trl_extras.refresh.refresh import refresh_reward_model
    from trl_extras.testbed import TestbedConfig, clean_pairs, gold_reward_fn, prompt_dataset

    holdout = list(prompt_dataset("holdout")["prompt"])[: a.num_prompts]
    train = prompt_dataset("train", TestbedConfig(seed=0))
    # fresh prompts for the refresh comparisons: the tail of the train split, never the holdout
    refresh_prompts = list(train["prompt"])[-a.labels:]
    t0 = time.perf_counter()
    proxy, dirty = train_proxy(sft, tok, seed, a, workdir)
    out = {"seed": seed, "proxy_seconds": round(time.perf_counter() - t0, 1), "runs": {}}
    print(f"  seed {seed}: proxy trained in {out['proxy_seconds']} s", flush=True)

    if "fixed" in a.runs:
        print("  run fixed", flush=True)
        out["runs"]["fixed"] = run_ppo("fixed", sft, tok, copy.deepcopy(proxy), seed, a, workdir, train, holdout)

    clean = clean_pairs(a.labels, flip_rate=a.flip_rate, seed=2000 + seed)
    if "upfront" in a.runs:
        print("  run upfront", flush=True)
        upfront_rm = copy.deepcopy(proxy)
        rep = refresh_reward_model(upfront_rm, clean, replay_pairs=dirty, args=refresh_args(a, seed, workdir / "up"),
                                   processing_class=tok)
        out["upfront_refresh"] = rep.to_dict()
        out["runs"]["upfront"] = run_ppo("upfront", sft, tok, upfront_rm, seed, a, workdir, train, holdout)
    if "refresh" not in a.runs:
        return out

    print("  run refresh", flush=True)
    judge = RewardJudge(gold_reward_fn, flip_rate=a.flip_rate, seed=3000 + seed)
    per = a.labels // a.refreshes
    cb = RewardRefreshCallback(
        judge, every_n_steps=a.steps // (a.refreshes + 1), num_pairs=per, prompts=refresh_prompts, baseline=sft,
        refresh_args=refresh_args(a, seed, workdir / "rf"), replay_pairs=dirty, max_new_tokens=a.max_new_tokens,
        temperature=1.0, seed=seed,
    )
    out["runs"]["refresh"] = run_ppo("refresh", sft, tok, copy.deepcopy(proxy), seed, a, workdir, train, holdout,
                                     extra_callbacks=[cb])
    out["refreshes"] = [
        {"step": h["step"], "accuracy_before": h["report"]["accuracy_before"],
         "accuracy_after": h["report"]["accuracy_after"], "policy_win_rate": h["policy_win_rate"],
         "labels": h["labels"], "pairs": h["report"]["num_new_pairs"]}
        for h in cb.history
    ]
    out["labels_spent"] = {"upfront": len(clean), "refresh": sum(h["labels"]["labelled"] for h in cb.history)}
    return out


def summarize(seeds_out):
    from trl_extras.core.stats import mean_ci

    summary = {}
    for name in RUNS:
        row = {}
        for label in ("t1", "greedy"):
            vals = [s["runs"][name]["final"][label]["gold"] for s in seeds_out]
            m, lo, hi = mean_ci(vals) if len(vals) > 1 else (vals[0], float("nan"), float("nan"))
            row[label] = {"mean": m, "ci": [lo, hi], "per_seed": vals}
        peaks = [max(p["gold"] for p in s["runs"][name]["points"]) for s in seeds_out]
        sft0 = [s["runs"][name]["points"][0]["gold"] for s in seeds_out]
        row["peak_t1"] = sum(peaks) / len(peaks)
        row["start_t1"] = sum(sft0) / len(sft0)
        row["length"] = sum(s["runs"][name]["final"]["t1"]["length"] for s in seeds_out) / len(seeds_out)
        summary[name] = row
    # paired differences (same seed, same proxy): refresh − upfront, refresh − fixed
    for a_, b_ in (("refresh", "upfront"), ("refresh", "fixed"), ("upfront", "fixed")):
        for label in ("t1", "greedy"):
            d = [s["runs"][a_]["final"][label]["gold"] - s["runs"][b_]["final"][label]["gold"] for s in seeds_out]
            m, lo, hi = mean_ci(d) if len(d) > 1 else (d[0], float("nan"), float("nan"))
            summary[f"{a_}-{b_}"] = summary.get(f"{a_}-{b_}", {})
            summary[f"{a_}-{b_}"][label] = {"mean": m, "ci": [lo, hi], "per_seed": d}
    return summary


def render(result):
    a, s = result["config"], result["summary"]
    lines = [
        f"# Refreshing the reward model on the policy's answers (testbed, PPO β={a.get('kl_coef', 0.0)})",
        "",
        f"Proxy: SFT + new head on {a['dirty_pairs']} dirty pairs. PPO {a['steps']} steps, batch {a['batch_size']}, "
        f"lr {a['lr']}, {a['num_ppo_epochs']} epochs per rollout, β={a.get('kl_coef', 0.0)} (exact KL), T=1. Labelling budget M={a['labels']} "
        f"(gold labels, {a['flip_rate']:.0%} flipped): *upfront* = M clean SFT-distribution pairs before RL, then a "
        f"fixed RM; *refresh* = {a['refreshes']} refreshes of {a['labels'] // a['refreshes']} policy-vs-SFT "
        f"comparisons during RL. Both continue the same proxy with `refresh_reward_model` (lr {a['rm_lr']}, "
        f"{a['refresh_epochs']} epochs, dirty pairs replayed 1:1). Seeds: {a['seeds']}. Gold on {a['num_prompts']} "
        "holdout prompts; mean over seeds with a 95% t-interval over seeds.",
        "",
        "| run | labels | gold at step 0 (T=1) | peak gold (T=1) | final gold T=1 [95% CI] | final gold greedy "
        "[95% CI] | final length |",
        "|---|---|---|---|---|---|---|",
    ]
    labels = {"fixed": 0, "upfront": a["labels"], "refresh": a["labels"]}
    for name in RUNS:
        r = s[name]
        lines.append(
            f"| {name} | {labels[name]} | {r['start_t1']:.3f} | {r['peak_t1']:.3f} | {r['t1']['mean']:.3f} "
            f"[{r['t1']['ci'][0]:.3f}, {r['t1']['ci'][1]:.3f}] | {r['greedy']['mean']:.3f} "
            f"[{r['greedy']['ci'][0]:.3f}, {r['greedy']['ci'][1]:.3f}] | {r['length']:.1f} |"
        )
    lines += ["", "Paired differences of final gold (same seed and proxy), mean [95% CI over seeds]:", "",
              "| difference | T=1 | greedy |", "|---|---|---|"]
    for key in ("refresh-upfront", "refresh-fixed", "upfront-fixed"):
        d = s[key]
        lines.append(
            f"| {key} | {d['t1']['mean']:+.3f} [{d['t1']['ci'][0]:+.3f}, {d['t1']['ci'][1]:+.3f}] | "
            f"{d['greedy']['mean']:+.3f} [{d['greedy']['ci'][0]:+.3f}, {d['greedy']['ci'][1]:+.3f}] |"
        )
    lines += ["", "Gold (T=1) along training, mean over seeds:", "",
              "| step | " + " | ".join(RUNS) + " |", "|---|" + "---|" * len(RUNS)]
    steps = [p["step"] for p in result["seeds"][0]["runs"]["fixed"]["points"]]
    for i, step in enumerate(steps):
        cells = []
        for name in RUNS:
            vals = [sd["runs"][name]["points"][i]["gold"] for sd in result["seeds"]]
            cells.append(f"{sum(vals) / len(vals):.3f}")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    lines += ["", "Refreshes (accuracy of the RM on the new comparisons before → after; the policy's win rate "
              "against the SFT model by the labels):", ""]
    for sd in result["seeds"]:
        parts = [f"step {r['step']}: {r['accuracy_before']:.2f} → {r['accuracy_after']:.2f}, win "
                 f"{r['policy_win_rate']:.2f}" for r in sd["refreshes"]]
        lines.append(f"- seed {sd['seed']}: " + "; ".join(parts) + f" (labels spent {sd['labels_spent']})")
    reused = sorted({r.get("reused_from") for sd in result["seeds"] for r in sd["runs"].values()} - {None})
    if reused:
        lines += ["", f"Runs not trained in this invocation ({', '.join(n for n in RUNS if n not in a['runs'])}) are "
                  f"taken from {', '.join(reused)} (same seeds and settings)."]
    lines += ["", f"Total wall time: {result['total_seconds']:.0f} s with {a['threads']} torch thread(s).", ""]
    return "\n".join(lines)


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in RUNS:
        steps = [p["step"] for p in result["seeds"][0]["runs"][name]["points"]]
        means = [sum(sd["runs"][name]["points"][i]["gold"] for sd in result["seeds"]) / len(result["seeds"])
                 for i in range(len(steps))]
        ax.plot(steps, means, marker="o", label=name)
    ax.set_xlabel("PPO step")
    ax.set_ylabel("gold reward (T=1, holdout)")
    ax.set_title("Fixed proxy vs refreshed reward model (mean over seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    import torch

    a = parse(argv)
    torch.set_num_threads(a.threads)
    from transformers import AutoTokenizer

    from trl_extras.testbed import build_sft_policy

    sft = build_sft_policy(progress=False)
    tok = AutoTokenizer.from_pretrained(sft)
    t0 = time.perf_counter()
    seeds_out = []
    reused = None
    if a.reuse:
        reused = json.loads(Path(a.reuse).read_text())
        same = ("seeds", "dirty_pairs", "labels", "flip_rate", "steps", "batch_size", "lr", "kl_coef", "num_ppo_epochs",
                "max_new_tokens", "rm_lr", "refresh_epochs", "num_prompts", "every", "threads")
        differ = [k for k in same if reused["config"].get(k, 0.0) != getattr(a, k)]
        if differ:
            raise SystemExit(f"--reuse {a.reuse}: settings differ in {differ}.")
    with tempfile.TemporaryDirectory() as tmp:
        for i, seed in enumerate(a.seeds):
            print(f"seed {seed}", flush=True)
            seeds_out.append(run_seed(seed, a, sft, tok, Path(tmp) / f"seed{seed}"))
            if reused is not None:  # the runs not trained here come from the earlier result (same seed, settings)
                old = reused["seeds"][i]
                for name in RUNS:
                    if name not in a.runs:
                        seeds_out[-1]["runs"][name] = old["runs"][name]
                        seeds_out[-1]["runs"][name]["reused_from"] = a.reuse
                for key in ("upfront_refresh", "refreshes", "labels_spent"):
                    if key in old and key not in seeds_out[-1]:
                        seeds_out[-1][key] = old[key]
    result = {"config": vars(a), "seeds": seeds_out, "summary": summarize(seeds_out),
              "total_seconds": time.perf_counter() - t0}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.parent.joinpath(out.name + ".json").write_text(json.dumps(result, indent=1))  # not with_suffix: "kl0.1"
    out.parent.joinpath(out.name + ".md").write_text(render(result))
    plot(result, out.parent / (out.name + ".png"))
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
