"""Early stopping on reward vs on validation loss, judged by the gold reward (testbed).

The article: "early stopping on the reward occurs at a different iteration compared to the early stopping on the
loss ... we consistently get higher-quality SFT models." Set-up: a freshly initialised tiny Llama is fine-tuned with
TRL's SFTTrainer on a small set of correctly sorted answers for many epochs, so validation loss (holdout prompts,
sorted answers) bottoms out and then rises (overfitting). At every evaluation ``RewardEarlyStoppingCallback``
samples answers to 128 other holdout prompts and scores them with the heuristic labeller (the proxy "reward model";
it agrees with gold on ~92% of pairs) and, for reference, with gold. Every evaluation step is checkpointed; then the
checkpoint chosen by min ``eval_loss``, by max ``eval_reward`` (proxy), by patience-based stopping on
``eval_reward``, and by max gold reward (an oracle) are compared on 256 fresh prompts (never used for selection)
by the gold reward, and reward-chosen vs loss-chosen with ``side_by_side`` (gold judge, binomial test).

Writes ``benchmarks/results/reward_early_stopping.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def patience_stop(values: list[float], patience: int, threshold: float = 0.0) -> int:
    """Index of the best evaluation when patience-based stopping (as in the callback) would have stopped."""
    best, best_i, wait = None, 0, 0
    for i, v in enumerate(values):
        if best is None or v > best + threshold:
            best, best_i, wait = v, i, 0
        else:
            wait += 1
            if wait >= patience:
                break
    return best_i


def gold_of(path, prompts, max_new_tokens, seed=0):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_extras.modeling.generation import generate_rollouts
    from trl_extras.testbed import gold_reward_fn

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(seed)
    sampled = generate_rollouts(model, tok, prompts, max_new_tokens=max_new_tokens, num_generations=4, batch_size=256)
    gs = gold_reward_fn(sampled.prompts, sampled.completions)
    greedy = generate_rollouts(model, tok, prompts, max_new_tokens=max_new_tokens, do_sample=False, batch_size=256)
    gg = gold_reward_fn(greedy.prompts, greedy.completions)
    return {
        "gold_T1": sum(gs) / len(gs),
        "exact_T1": sum(g == 1.0 for g in gs) / len(gs),
        "gold_greedy": sum(gg) / len(gg),
        "exact_greedy": sum(g == 1.0 for g in gg) / len(gg),
    }


def run(seed: int, args) -> dict:
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from trl_extras.callbacks.reward_early_stopping import RewardEarlyStoppingCallback
    from trl_extras.evaluation.side_by_side import side_by_side
    from trl_extras.scripts.sft_reward_es import testbed_sft_splits
    from trl_extras.testbed import (
        TestbedConfig,
        TinyModelSpec,
        build_causal_lm,
        build_tokenizer,
        gold_reward_fn,
        heuristic_reward_fn,
        prompt_dataset,
        save_tiny,
    )

    root = Path(args.work_dir) / f"seed{seed}"
    shutil.rmtree(root, ignore_errors=True)
    tok = build_tokenizer()
    init = save_tiny(build_causal_lm(tok, TinyModelSpec(), seed=seed), tok, root / "init")
    train, eval_ = testbed_sft_splits(args.num_train_examples, 128, correct_only=True, seed=0)
    holdout = prompt_dataset("holdout", TestbedConfig(num_holdout_prompts=512))["prompt"]
    es_prompts, fresh_prompts = holdout[:128], holdout[256:512]  # eval_loss uses holdout[128:256]
    assert not set(fresh_prompts) & set(train["prompt"])
    tokenizer = AutoTokenizer.from_pretrained(init)
    cb = RewardEarlyStoppingCallback(
        heuristic_reward_fn, es_prompts, processing_class=tokenizer, patience=None, max_new_tokens=args.max_new_tokens,
        extra_reward_funcs={"gold": gold_reward_fn}, seed=seed,
    )
    config = SFTConfig(
        output_dir=str(root / "run"), num_train_epochs=args.epochs, per_device_train_batch_size=32,
        learning_rate=args.learning_rate, lr_scheduler_type="constant", eval_strategy="steps",
        eval_steps=args.eval_steps, save_strategy="steps", save_steps=args.eval_steps, save_only_model=True,
        logging_steps=args.eval_steps, report_to="none", use_cpu=True, bf16=False, gradient_checkpointing=False,
        seed=seed, disable_tqdm=True,
    )
    trainer = SFTTrainer(model=init, args=config, train_dataset=train, eval_dataset=eval_, processing_class=tokenizer,
                         callbacks=[cb])
    cb.set_trainer(trainer)
    trainer.train()
    losses = {h["step"]: h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h}
    curve = [{"step": h["step"], "eval_loss": losses[h["step"]], "eval_reward": h["eval_reward"],
              "eval_reward_gold": h["eval_reward_gold"]} for h in cb.history]
    steps = [c["step"] for c in curve]
    by_loss = min(curve, key=lambda c: c["eval_loss"])["step"]
    by_reward = max(curve, key=lambda c: c["eval_reward"])["step"]
    by_patience = steps[patience_stop([c["eval_reward"] for c in curve], args.patience)]
    by_gold = max(curve, key=lambda c: c["eval_reward_gold"])["step"]
    picks = {"eval_loss": by_loss, "eval_reward": by_reward, f"eval_reward_patience{args.patience}": by_patience,
             "oracle_gold": by_gold, "last": steps[-1]}
    ckpt = lambda step: str(root / "run" / f"checkpoint-{step}")  # noqa: E731
    evaluated = {}
    for step in picks.values():
        if step not in evaluated:
            evaluated[step] = gold_of(ckpt(step), fresh_prompts, args.max_new_tokens, seed=seed)
    sbs = side_by_side(ckpt(by_reward), ckpt(by_loss), fresh_prompts, gold_reward_fn, seed=seed,
                       max_new_tokens=args.max_new_tokens)
    return {
        "seed": seed,
        "curve": curve,
        "picks": {name: {"step": step, **evaluated[step]} for name, step in picks.items()},
        "sbs_reward_vs_loss": sbs.to_dict(with_records=False),
        "loss_overfits": curve[-1]["eval_loss"] > min(c["eval_loss"] for c in curve) + 0.01,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--num_train_examples", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--eval_steps", type=int, default=16)
    parser.add_argument("--patience", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, default=16)
    parser.add_argument("--work_dir", default="/tmp/trl_extras_reward_es")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--name", default="reward_early_stopping", help="basename of the result files")
    args = parser.parse_args()
    start = time.perf_counter()
    runs = [run(s, args) for s in args.seeds]
    result = {"settings": vars(args), "runs": runs, "seconds": round(time.perf_counter() - start, 1)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    lines = ["# Early stopping on reward vs on validation loss (testbed, gold reward on 256 fresh prompts)", "",
             f"{args.num_train_examples} SFT examples, {args.epochs} epochs, lr {args.learning_rate}, evaluation "
             f"every {args.eval_steps} steps; reward to stop on = heuristic labeller (proxy), gold = oracle.", "",
             "| seed | selected by | step | gold T=1 | exact T=1 | gold greedy | exact greedy |",
             "|---|---|---|---|---|---|---|"]
    for r in runs:
        for name, p in r["picks"].items():
            lines.append(f"| {r['seed']} | {name} | {p['step']} | {p['gold_T1']:.3f} | {p['exact_T1']:.3f} | "
                         f"{p['gold_greedy']:.3f} | {p['exact_greedy']:.3f} |")
    lines.append("")
    for r in runs:
        s = r["sbs_reward_vs_loss"]
        lines.append(f"seed {r['seed']}: reward-chosen vs loss-chosen side by side (gold, T=1): {s['wins']} wins, "
                     f"{s['losses']} losses, {s['ties']} ties, p = {s['p_value']:.3g}; validation loss overfits: "
                     f"{r['loss_overfits']}")
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"seconds: {result['seconds']}")


if __name__ == "__main__":
    main()
