"""Throughput of trl_extras' PPOTrainer against TRL 1.16's GRPOTrainer: same model, batch and completion length,
in one process, one after the other (so both see the same machine load).

Samples/s = sampled sequences that went through a full update per second of ``trainer.train()`` (generation,
scoring, log-probs, the update). Runs:
  * GRPO beta=0 (TRL's default: no reference model)            * GRPO beta=0.05 (k3 KL, reference forward)
  * PPO, 1 epoch x 1 minibatch (one update per rollout, like GRPO's num_iterations=1), exact KL
  * PPO, 1 epoch, k3 KL                                          * PPO, 4 epochs x 1 minibatch (the default), exact KL
PPO runs a value model (one more forward at rollout and one forward+backward per update) and its exact KL needs
the reference's logits; GRPO needs ``num_generations >= 2`` (4 here; PPO uses 4 too, for identical batches).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ppo_vs_grpo_throughput.py        # ~5 min on one CPU core

Writes ``benchmarks/results/ppo_vs_grpo_throughput.json`` and ``.md``.
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
COMMON = dict(use_cpu=True, bf16=False, report_to="none", save_strategy="no", gradient_checkpointing=False,
              lr_scheduler_type="constant", logging_steps=1, seed=0, disable_tqdm=True)


def grpo(sft_path, data, batch, length, rollouts, beta, out):
    from trl import GRPOConfig, GRPOTrainer

    from trl_extras.testbed import gold_reward_fn

    args = GRPOConfig(output_dir=out, per_device_train_batch_size=batch, gradient_accumulation_steps=1,
                      num_generations=4, max_completion_length=length, max_steps=rollouts, learning_rate=5e-5,
                      beta=beta, **COMMON)
    trainer = GRPOTrainer(sft_path, reward_funcs=gold_reward_fn, args=args, train_dataset=data)
    return trainer, rollouts * batch


def ppo(sft_path, data, batch, length, rollouts, epochs, estimator, out):
    from trl_extras.testbed import gold_reward_fn
    from trl_extras.trainers.ppo import PPOConfig, PPOTrainer

    args = PPOConfig(output_dir=out, per_device_train_batch_size=batch, gradient_accumulation_steps=1,
                     num_mini_batches=1, num_ppo_epochs=epochs, num_generations=4, max_completion_length=length,
                     max_steps=rollouts * epochs, learning_rate=5e-5, kl_estimator=estimator,
                     value_model_init="policy", **COMMON)
    trainer = PPOTrainer(sft_path, reward_funcs=gold_reward_fn, args=args, train_dataset=data)
    return trainer, rollouts * batch


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="sequences per rollout = per update batch")
    parser.add_argument("--length", type=int, default=24, help="max_completion_length")
    parser.add_argument("--rollouts", type=int, default=8, help="rollout batches per run (after one warm-up)")
    args = parser.parse_args(argv)

    import torch

    from trl_extras.testbed import TestbedConfig, build_sft_policy, prompt_dataset

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    sft_path = build_sft_policy(progress=False)
    data = prompt_dataset("train", TestbedConfig())
    runs = {
        "GRPO beta=0 (TRL 1.16)": lambda out: grpo(sft_path, data, args.batch, args.length, args.rollouts, 0.0, out),
        "GRPO beta=0.05 k3 (TRL 1.16)": lambda out: grpo(sft_path, data, args.batch, args.length, args.rollouts, 0.05, out),
        "PPO 1 epoch, exact KL": lambda out: ppo(sft_path, data, args.batch, args.length, args.rollouts, 1, "exact", out),
        "PPO 1 epoch, k3 KL": lambda out: ppo(sft_path, data, args.batch, args.length, args.rollouts, 1, "k3", out),
        "PPO 4 epochs, exact KL": lambda out: ppo(sft_path, data, args.batch, args.length, args.rollouts, 4, "exact", out),
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # warm-up (lazy imports, allocator, first-call overheads) so that the first measured run is not penalised
        grpo(sft_path, data, args.batch, args.length, 1, 0.0, os.path.join(tmp, "warmup"))[0].train()
        ppo(sft_path, data, args.batch, args.length, 1, 1, "exact", os.path.join(tmp, "warmup2"))[0].train()
        for i, (name, build) in enumerate(runs.items()):
            trainer, samples = build(os.path.join(tmp, str(i)))
            t0 = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - t0
            lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
            rows.append({"run": name, "samples": samples, "seconds": seconds, "samples_per_s": samples / seconds,
                         "mean_completion_length": sum(lengths) / len(lengths) if lengths else None})
            print(rows[-1], flush=True)
            del trainer
    result = {"batch": args.batch, "max_completion_length": args.length, "rollouts": args.rollouts,
              "threads": torch.get_num_threads(), "runs": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ppo_vs_grpo_throughput.json").write_text(json.dumps(result, indent=2))
    base = rows[0]["samples_per_s"]
    lines = [
        f"# PPO vs GRPO throughput (testbed SFT policy, batch {args.batch}, max {args.length} new tokens, "
        f"{args.rollouts} rollouts, CPU, {torch.get_num_threads()} threads, shared machine)",
        "",
        "| run | samples/s | vs GRPO beta=0 | mean completion length |",
        "|---|---|---|---|",
    ]
    for r in rows:
        length = r["mean_completion_length"]
        lines.append(f"| {r['run']} | {r['samples_per_s']:.1f} | {r['samples_per_s'] / base:.2f}x | "
                     f"{'' if length is None else f'{length:.1f}'} |")
    (RESULTS / "ppo_vs_grpo_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
