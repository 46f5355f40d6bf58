"""Multi-round CEM on the testbed, with and without diversity control; best-of-16 vs the SFT policy.

Proxy (optimized): the testbed's biased ``heuristic_reward_fn``; gold (``gold_reward_fn``) is tracked, never
optimized. For every round: proxy and gold reward of the round's samples and of the elites, mean token entropy,
distinct-1/2 and the share of distinct answers per prompt; after every round the same measures on holdout prompts.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/cem_rounds.py            # a few minutes on CPU
    .venv/bin/python benchmarks/cem_rounds.py --quick                      # smoke run

Writes ``benchmarks/results/cem_rounds.json`` and ``cem_rounds.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

RESULTS = Path(__file__).parent / "results"

CONFIGS = {
    # the seed's plain best-of-N loop
    "plain": {},
    # two controls: replay original SFT data and an exact KL to the initial model in the fine-tuning loss
    "sft_mix+kl": {"sft_mix_ratio": 0.5, "kl_coef": 0.2},
    # a rising sampling temperature plus an entropy bonus
    "temp_schedule+entropy": {"temperature_end": 1.3, "entropy_coef": 0.05},
}


def best_of_n(policy_path, n: int, num_prompts: int, seed: int = 0) -> dict:
    """Gold of best-of-n (picked by proxy, and by gold as the oracle ceiling) vs a single SFT sample."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_extras.core.stats import mean_ci
    from trl_extras.modeling.generation import generate_rollouts
    from trl_extras.testbed import TestbedConfig, gold_reward_fn, heuristic_reward_fn, prompt_dataset

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(policy_path)
    model = AutoModelForCausalLM.from_pretrained(policy_path)
    prompts = list(prompt_dataset("holdout", TestbedConfig())["prompt"])[:num_prompts]
    ro = generate_rollouts(model, tok, prompts, max_new_tokens=24, temperature=1.0, num_generations=n,
                           batch_size=256, progress=True, desc=f"best-of-{n}")
    gold = torch.tensor(gold_reward_fn(ro.prompts, ro.completions)).view(-1, n)
    proxy = torch.tensor(heuristic_reward_fn(ro.prompts, ro.completions)).view(-1, n)
    single = gold[:, 0]  # one sample per prompt = what the SFT policy gives
    mean_sample = gold.mean(1)
    by_proxy = gold.gather(1, proxy.argmax(1, keepdim=True)).squeeze(1)
    by_gold = gold.max(1).values
    out = {"n": n, "num_prompts": len(prompts)}
    for name, values in [("sft_single_sample", single), ("sft_mean_of_samples", mean_sample),
                         ("best_of_n_by_proxy", by_proxy), ("best_of_n_by_gold", by_gold)]:
        m, lo, hi = mean_ci(values.tolist())
        out[name] = {"mean": m, "ci95": [lo, hi]}
    for name, values in [("by_proxy_minus_mean_sample", by_proxy - mean_sample),
                         ("by_gold_minus_mean_sample", by_gold - mean_sample)]:
        m, lo, hi = mean_ci(values.tolist())
        out[name] = {"mean": m, "ci95": [lo, hi]}
    out["exact_sort_rate"] = {"sft_sample": float((single == 1).float().mean()),
                              "best_of_n_by_proxy": float((by_proxy == 1).float().mean())}
    return out


def run_cem(name: str, overrides: dict, policy_path: str, a, workdir: Path) -> dict:
    from trl_extras.testbed import TestbedConfig, gold_reward_fn, heuristic_reward_fn, prompt_dataset, sft_dataset
    from trl_extras.trainers.cem import CEMConfig, CEMTrainer

    args = CEMConfig(
        output_dir=str(workdir / name), num_rounds=a.rounds, num_generations=a.n, prompts_per_round=a.prompts,
        max_completion_length=24, generation_batch_size=256, temperature=1.0, elite_top_k=1, dedupe=True,
        learning_rate=a.lr, num_train_epochs=a.epochs, per_device_train_batch_size=16, lr_scheduler_type="constant",
        eval_num_generations=a.eval_n, use_cpu=True, bf16=False, report_to="none", save_strategy="no",
        gradient_checkpointing=False, logging_steps=10, disable_tqdm=True, seed=0, resume=False, **overrides,
    )
    train = prompt_dataset("train", TestbedConfig())
    holdout = prompt_dataset("holdout", TestbedConfig()).select(range(a.eval_prompts))
    t0 = time.perf_counter()
    proxy = gold_reward_fn if a.reward == "gold" else heuristic_reward_fn
    trainer = CEMTrainer(policy_path, proxy, args, train_dataset=train, eval_dataset=holdout,
                         sft_dataset=sft_dataset(4000), eval_reward_funcs=gold_reward_fn)
    history = trainer.train()
    return {"config": overrides, "initial_eval": trainer.initial_eval, "rounds": history,
            "seconds": time.perf_counter() - t0}


KEYS = [("reward_mean", "proxy"), ("elite_reward_mean", "proxy elite"), ("gold_mean", "gold"),
        ("elite_gold_mean", "gold elite"), ("entropy", "entropy"), ("distinct_1", "dist-1"), ("distinct_2", "dist-2"),
        ("unique_fraction", "uniq"), ("eval_reward_mean", "holdout proxy"), ("eval_gold_mean", "holdout gold"),
        ("eval_entropy", "holdout entropy"), ("eval_distinct_2", "holdout dist-2"),
        ("eval_unique_fraction", "holdout uniq")]


def to_markdown(result: dict) -> str:
    optimized = "gold_reward_fn" if result["settings"].get("reward") == "gold" else "heuristic_reward_fn"
    lines = ["# CEM rounds on the testbed", "",
             f"Optimized reward (\"proxy\" columns) = `{optimized}`, gold = `gold_reward_fn` (tracked). "
             f"Settings: {result['settings']}.", ""]
    b = result.get("best_of_n")
    if b:
        lines += [f"## Best-of-{b['n']} vs the SFT policy (holdout, {b['num_prompts']} prompts, T=1, 95% t-intervals)",
                  "", "| quantity | mean gold | 95% CI |", "|---|---|---|"]
        for k in ("sft_single_sample", "sft_mean_of_samples", "best_of_n_by_proxy", "best_of_n_by_gold",
                  "by_proxy_minus_mean_sample", "by_gold_minus_mean_sample"):
            lines.append(f"| {k} | {b[k]['mean']:.4f} | [{b[k]['ci95'][0]:.4f}, {b[k]['ci95'][1]:.4f}] |")
        lines += ["", f"Exact sorts: SFT sample {b['exact_sort_rate']['sft_sample']:.3f}, best-of-{b['n']} by proxy "
                  f"{b['exact_sort_rate']['best_of_n_by_proxy']:.3f}.", ""]
    lines += ["## Rounds", "",
              "Round r's sample columns measure the model *before* round r's fine-tuning (r=0: the SFT policy); "
              "holdout columns are measured *after* it (row `init`: the SFT policy).", ""]
    header = "| config | round | " + " | ".join(label for _, label in KEYS) + " |"
    lines += [header, "|" + "---|" * (len(KEYS) + 2)]
    for name, run in result["runs"].items():
        init = run.get("initial_eval") or {}
        cells = [f"{init[k]:.3f}" if k in init else "" for k, _ in KEYS]
        lines.append(f"| {name} | init | " + " | ".join(cells) + " |")
        for h in run["rounds"]:
            cells = [f"{h[k]:.3f}" if isinstance(h.get(k), (int, float)) else "" for k, _ in KEYS]
            lines.append(f"| {name} | {h['round']} | " + " | ".join(cells) + " |")
        lines.append(f"| {name} | time | {run['seconds']:.0f} s |" + " |" * (len(KEYS) - 1))
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--n", type=int, default=8, help="samples per prompt per round")
    p.add_argument("--prompts", type=int, default=192, help="train prompts per round")
    p.add_argument("--eval-prompts", type=int, default=128)
    p.add_argument("--eval-n", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--best-of", type=int, default=16)
    p.add_argument("--configs", nargs="*", default=list(CONFIGS))
    p.add_argument("--reward", choices=["heuristic", "gold"], default="heuristic",
                   help="what CEM optimizes (gold is always tracked)")
    p.add_argument("--skip-best-of", action="store_true", help="skip the best-of-n comparison")
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke run")
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args(argv)
    if a.quick:
        a.rounds, a.prompts, a.eval_prompts, a.n, a.eval_n = 3, 16, 16, 4, 2

    import datasets

    from trl_extras.testbed import build_sft_policy

    datasets.disable_progress_bars()

    policy = build_sft_policy()
    result = {"settings": {k: v for k, v in vars(a).items() if k != "out"}}
    result["runs"] = {}
    if not a.skip_best_of:
        result["best_of_n"] = best_of_n(policy, a.best_of, a.eval_prompts if a.quick else 256)
        print(json.dumps(result["best_of_n"], indent=1), flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "cem_rounds" + ("_gold" if a.reward == "gold" else "") + ("_quick" if a.quick else "")

    def write():  # after every config, so a long run that is cut short still leaves its numbers
        (out / f"{stem}.json").write_text(json.dumps(result, indent=2))
        (out / f"{stem}.md").write_text(to_markdown(result))

    write()
    workdir = Path(tempfile.mkdtemp(prefix="cem_rounds_"))
    try:
        for name in a.configs:
            print(f"== {name}", flush=True)
            result["runs"][name] = run_cem(name, CONFIGS[name], policy, a, workdir)
            write()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    write()
    print(to_markdown(result))


if __name__ == "__main__":
    main()
