"""Throughput of trl_extras' PPOTrainer against TRL 1.16's GRPOTrainer, interleaved, with a phase split per trainer.

Same model, prompts, batch, group size (4) and completion length; the trainers' runs alternate (GRPO, PPO, GRPO,
PPO, ... ``--pairs`` rounds, after an untimed one-rollout warm-up of each) in one process, so both see the same
machine load; the ratio is the median of the per-round PPO/GRPO ratios with their min-max spread, and the load
average is recorded at the start and end (``benchmarks/interleave.py``). Samples/s = sampled sequences that went
through a full update per second of the training steps (``trainer.train()`` minus its fixed set-up before the first
step, which does not grow with the run); ``samples_per_s_with_setup`` counts the whole ``train()`` call.

Phase split (``benchmarks/phases.py``: exclusive wall time from timing wrappers this script installs around the
trainers' functions; no trainer code is changed):
  * generation          PPO ``generate_rollouts``; GRPO ``_generate`` (sampling, with its tokenization/decoding)
  * reward scoring      PPO ``RewardFunctions.__call__``; GRPO ``_calculate_rewards``
  * rollout statistics  PPO ``completion_token_stats`` in the rollout (policy + reference log-probs, exact KL,
                        entropy); GRPO ``_get_per_token_logps_and_entropies`` in the rollout (reference, and old
                        log-probs when it needs them)
  * value               PPO: the value model's forward in the rollout
  * rollout (other)     the rest of ``_prepare_inputs`` (rewards/advantages, buffers)
  * update              the rest of ``training_step``: the loss's forward (log-probs, values, KL) and backward
  * train setup         ``train()`` until its ``on_train_begin`` (optimizer creation, accelerate's prepare)
  * other               ``train()`` minus all of the above: optimizer step, logging, callbacks

    python benchmarks/ppo_vs_grpo_throughput.py --model tiny                     # testbed policy, about 2 min
    python benchmarks/ppo_vs_grpo_throughput.py --model smollm2 --batch 8 --length 16 --dtype bf16 --pairs 3

``--model smollm2``: SmolLM2-135M-Instruct (``trl_extras.testbed.smollm2_path``) with LoRA (r=16 on q/k/v/o) on the
arithmetic task (gold verifier as reward). Variants (``--variants``, the first is the baseline of the ratios):
``grpo`` TRL GRPO beta=0.05 (k3, reference = the adapter-disabled base / a frozen copy), ``grpo-beta0`` (TRL's
default, no reference), ``ppo`` PPO ``--epochs`` epoch(s) x 1 minibatch, exact KL (value model = policy backbone +
fresh head), ``ppo-k3`` the same with k3. Writes ``benchmarks/results/ppo_vs_grpo_throughput_<model>_<dtype>.json``
and ``.md`` (``--out`` to rename).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

sys.path.insert(0, str(Path(__file__).parent))
from interleave import load_text, ratio_text, run_interleaved, write_result  # noqa: E402
from phases import ROLLOUT, PhaseTimer, by_context  # noqa: E402

RESULTS = Path(__file__).parent / "results"
COMMON = dict(use_cpu=True, bf16=False, report_to="none", save_strategy="no", gradient_checkpointing=False,
              lr_scheduler_type="constant", logging_steps=1, seed=0, disable_tqdm=True)
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
PHASE_ORDER = ("generation", "reward scoring", "rollout statistics", "value", ROLLOUT, "update", "train setup", "other")


def _lora():
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      task_type="CAUSAL_LM")


def build_grpo(setup: dict, rollouts: int, out: str, beta: float):
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(output_dir=out, per_device_train_batch_size=setup["batch"], gradient_accumulation_steps=1,
                      num_generations=4, max_completion_length=setup["length"], max_steps=rollouts,
                      learning_rate=5e-5, beta=beta, model_init_kwargs={"dtype": setup["dtype"]}, **COMMON)
    return GRPOTrainer(setup["path"], reward_funcs=setup["reward"], args=args, train_dataset=setup["data"],
                       peft_config=_lora() if setup["lora"] else None)


def build_ppo(setup: dict, rollouts: int, out: str, estimator: str):
    from trl_extras.trainers.ppo import PPOConfig, PPOTrainer

    epochs = setup["epochs"]
    args = PPOConfig(output_dir=out, per_device_train_batch_size=setup["batch"], gradient_accumulation_steps=1,
                     num_mini_batches=1, num_ppo_epochs=epochs, num_generations=4,
                     max_completion_length=setup["length"], max_steps=rollouts * epochs, learning_rate=5e-5,
                     kl_estimator=estimator, value_model_init="policy", model_init_kwargs={"dtype": setup["dtype"]},
                     **COMMON)
    return PPOTrainer(setup["path"], reward_funcs=setup["reward"], args=args, train_dataset=setup["data"],
                      peft_config=_lora() if setup["lora"] else None)


VARIANTS = {
    "grpo": ("GRPO beta=0.05 k3 (TRL 1.16)", lambda s, n, out: build_grpo(s, n, out, 0.05)),
    "grpo-beta0": ("GRPO beta=0 (TRL 1.16)", lambda s, n, out: build_grpo(s, n, out, 0.0)),
    "ppo": ("PPO {epochs} epoch(s), exact KL", lambda s, n, out: build_ppo(s, n, out, "exact")),
    "ppo-k3": ("PPO {epochs} epoch(s), k3 KL", lambda s, n, out: build_ppo(s, n, out, "k3")),
}


def instrument(trainer) -> PhaseTimer:
    """Timing wrappers around the phases of ``trainer`` (PPO or GRPO); restore with ``timer.restore()``."""
    timer = PhaseTimer()
    timer.patch(trainer, "training_step", "update")
    timer.patch(trainer, "_prepare_inputs", ROLLOUT)
    if hasattr(trainer, "_generate_and_score_completions"):  # TRL GRPO
        timer.patch(trainer, "_generate", "generation")
        timer.patch(trainer, "_calculate_rewards", "reward scoring")
        timer.patch(trainer, "_get_per_token_logps_and_entropies", by_context("rollout statistics", "update"))
    else:  # trl_extras PPO
        from trl_extras.rewards.functions import RewardFunctions

        timer.patch_everywhere("trl_extras.modeling.generation", "generate_rollouts", "generation")
        timer.patch(RewardFunctions, "__call__", "reward scoring")
        timer.patch_everywhere("trl_extras.modeling.lm", "completion_token_stats",
                               by_context("rollout statistics", "update"))
        value = getattr(trainer, "value_model", None)
        if value is not None:
            timer.patch(value, "forward", by_context("value", "update"))
    return timer


def one_run(variant: str, setup: dict, rollouts: int, out: str) -> dict:
    """Build a fresh trainer (not timed), train ``rollouts`` rollout batches, return samples/s and the phase split."""
    from transformers import TrainerCallback

    trainer = VARIANTS[variant][1](setup, rollouts, out)
    timer = instrument(trainer)
    began = {}

    class TrainBegin(TrainerCallback):  # train()'s own set-up (optimizer, accelerate's prepare) until the first step
        def on_train_begin(self, args, state, control, **kwargs):
            began["t"] = time.perf_counter()

    trainer.add_callback(TrainBegin())
    try:
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
    finally:
        timer.restore()
    split = timer.split(seconds)
    split["train setup"] = began.get("t", t0) - t0
    split["other"] -= split["train setup"]
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    samples = rollouts * setup["batch"]
    # samples/s of the steps (train()'s fixed set-up excluded: it does not grow with the run's length) and of the
    # whole train() call
    metrics = {"seconds": seconds, "samples_per_s": samples / (seconds - split["train setup"]),
               "samples_per_s_with_setup": samples / seconds,
               "mean_completion_length": statistics.mean(lengths) if lengths else float("nan")}
    for phase, s in split.items():
        metrics[f"phase/{phase}_s"] = s
    metrics["wrapped"] = timer.patched
    metrics["not_found"] = timer.missing
    del trainer
    return metrics


def make_setup(args) -> dict:
    setup = {"batch": args.batch, "length": args.length, "dtype": DTYPES[args.dtype], "epochs": args.epochs}
    if args.model == "smollm2":
        from trl_extras.testbed import arithmetic
        from trl_extras.testbed.smollm2 import smollm2_path

        setup.update(path=smollm2_path(), data=arithmetic.prompt_dataset("train"), reward=arithmetic.gold_reward_fn,
                     lora=True, what="SmolLM2-135M-Instruct + LoRA r=16, arithmetic (gold verifier)")
    else:
        from trl_extras.testbed import TestbedConfig, build_sft_policy, gold_reward_fn, prompt_dataset

        setup.update(path=build_sft_policy(progress=False), data=prompt_dataset("train", TestbedConfig()),
                     reward=gold_reward_fn, lora=False, what="testbed SFT policy (full fine-tuning), sort task")
    return setup


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny", "testbed", "smollm2"), default="tiny",
                        help="tiny (= testbed): the testbed's SFT policy; smollm2: SmolLM2-135M-Instruct + LoRA")
    parser.add_argument("--batch", type=int, default=32, help="sequences per rollout = per update batch")
    parser.add_argument("--length", type=int, default=24, help="max_completion_length")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="weights' dtype (model_init_kwargs)")
    parser.add_argument("--epochs", type=int, default=1, help="PPO num_ppo_epochs (1 minibatch each)")
    parser.add_argument("--rollouts", type=int, default=3, help="rollout batches per timed run")
    parser.add_argument("--pairs", type=int, default=3, help="interleaved rounds (>= 3)")
    parser.add_argument("--variants", default="grpo,ppo",
                        help=f"comma-separated, first = baseline of the ratios; from {sorted(VARIANTS)}")
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed one-rollout run of each variant")
    parser.add_argument("--out", help="result name under benchmarks/results (default "
                                      "ppo_vs_grpo_throughput_<model>_<dtype>)")
    parser.add_argument("--render-only", action="store_true", help="rewrite the .md from the existing .json")
    args = parser.parse_args(argv)
    args.model = "tiny" if args.model == "testbed" else args.model
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or len(variants) < 2:
        parser.error(f"--variants {args.variants!r}: give at least two of {sorted(VARIANTS)} (unknown: {unknown})")
    if args.pairs < 3:
        parser.error(f"--pairs {args.pairs}: a ratio needs at least 3 interleaved pairs")
    for flag in ("batch", "length", "epochs", "rollouts"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} {getattr(args, flag)}: must be >= 1")
    args.variant_list = variants
    args.out = args.out or f"ppo_vs_grpo_throughput_{args.model}_{args.dtype}"
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.render_only:
        return write_markdown(json.loads((RESULTS / f"{args.out}.json").read_text()), args.out)

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    setup = make_setup(args)
    labels = {v: VARIANTS[v][0].format(epochs=args.epochs) for v in args.variant_list}
    with tempfile.TemporaryDirectory() as tmp:
        counter = iter(range(10**6))

        def variant(name):
            return lambda: one_run(name, setup, args.rollouts, os.path.join(tmp, f"{name}{next(counter)}"))

        if not args.no_warmup:  # first-call overheads (lazy imports, allocator) would penalise the first variant
            for name in args.variant_list:
                one_run(name, setup, 1, os.path.join(tmp, f"warmup_{name}"))
        meta = {"model": setup["what"], "model_flag": args.model, "dtype": args.dtype, "batch": args.batch,
                "max_completion_length": args.length, "num_generations": 4, "ppo_epochs": args.epochs,
                "rollouts_per_run": args.rollouts, "threads": torch.get_num_threads(), "labels": labels,
                "command": "python benchmarks/ppo_vs_grpo_throughput.py " + " ".join(sys.argv[1:] if argv is None
                                                                                     else argv)}
        result = run_interleaved({name: variant(name) for name in args.variant_list}, rounds=args.pairs, meta=meta)
    write_result(result, RESULTS / f"{args.out}.json")
    write_markdown(result, args.out)
    return result


def write_markdown(result: dict, name: str) -> None:
    """``<name>.md`` from the measured ``result``: samples/s and ratio per variant, then the phase split."""
    m, metrics, base = result["meta"], result["metrics"], result["baseline"]
    names = [base] + [n for n in metrics if n != base]
    lines = [
        f"# PPO vs GRPO throughput ({m['model']}, {m['dtype']} weights, batch {m['batch']} "
        f"({m['num_generations']} completions per prompt), max {m['max_completion_length']} new tokens, "
        f"{m['rollouts_per_run']} rollouts per run, CPU, {m['threads']} threads)",
        "",
        f"{result['rounds']} interleaved rounds ({' '.join(names)}, repeated); {load_text(result)}. "
        f"Ratios: median of the per-round ratios to {m['labels'][base]} (min-max). `{m['command']}`",
        "",
        "samples/s: of the training steps (train()'s fixed set-up excluded); *with set-up*: of the whole train() call.",
        "",
        f"| run | samples/s median (min-max) | vs {m['labels'][base]} | with set-up: samples/s, ratio | "
        "mean completion length |",
        "|---|---|---|---|---|",
    ]
    for n in names:
        s, w = metrics[n]["samples_per_s"], metrics[n]["samples_per_s_with_setup"]
        ratio = "1.00x" if n == base else ratio_text(result, n, "samples_per_s")
        ratio_w = "1.00x" if n == base else ratio_text(result, n, "samples_per_s_with_setup")
        lines.append(f"| {m['labels'][n]} | {s['median']:.3g} ({s['min']:.3g}-{s['max']:.3g}) | {ratio} | "
                     f"{w['median']:.3g}, {ratio_w} | {metrics[n]['mean_completion_length']['median']:.1f} |")
    lines += ["", "Seconds per run by phase (median over rounds; exclusive times, `benchmarks/phases.py`):", "",
              "| phase | " + " | ".join(m["labels"][n] for n in names) + " |",
              "|---|" + "---|" * len(names)]
    phases = [p for p in PHASE_ORDER if any(f"phase/{p}_s" in metrics[n] for n in names)]
    for p in phases:
        cells = []
        for n in names:
            v = metrics[n].get(f"phase/{p}_s")
            total = metrics[n]["seconds"]["median"]
            cells.append("–" if v is None else f"{v['median']:.2f} ({100 * v['median'] / total:.0f}%)")
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    lines.append("| total (train) | " + " | ".join(f"{metrics[n]['seconds']['median']:.2f}" for n in names) + " |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
