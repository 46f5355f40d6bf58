"""CEM ("poor man's RL"): each round samples N answers per prompt, keeps the best by your reward, fine-tunes on
them with TRL's SFTTrainer, and repeats; diversity is watched every round.

    python examples/cem_rounds.py                                            # testbed: tiny model, CPU, seconds
    python examples/cem_rounds.py --model testbed:smollm2 --lora
    python examples/cem_rounds.py --model path/to/sft-model --reward_model path/to/rm --prompts prompts.jsonl --lora

Look at, per round: ``reward_mean`` (all samples) and ``elite_reward_mean`` (the kept ones) rising, the held-out
``eval_reward_mean``, and the diversity measures ``entropy`` and ``distinct_2``: a collapse shows there first (the
``min_entropy`` / ``min_distinct_n`` floors stop the run). Re-running the same command resumes at the unfinished round.
"""

import argparse

from trl_extras import CEMConfig, CEMTrainer
from trl_extras.testbed import task_module, testbed_model_path

# isort: split
from datasets import load_dataset


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="testbed:tiny", help="SFT policy path (or testbed:tiny / testbed:smollm2)")
    p.add_argument("--reward_model", help="reward-model folder (full, LoRA adapter or RewardEnsemble); default: my_reward")
    p.add_argument("--prompts", help="JSON/JSONL with a 'prompt' column; default: the testbed's prompts")
    p.add_argument("--lora", action="store_true", help="fine-tune a LoRA adapter each round")
    p.add_argument("--output_dir", default="outputs/examples/cem")
    p.add_argument("--num_rounds", type=int, default=3)
    p.add_argument("--num_generations", type=int, default=8, help="samples per prompt (the N of best-of-N)")
    p.add_argument("--prompts_per_round", type=int, default=64)
    p.add_argument("--num_eval_prompts", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--max_completion_length", type=int, default=16)
    args = p.parse_args()

    task = task_module("arithmetic" if args.model == "testbed:smollm2" else "sort_digits")

    def my_reward(prompts, completions, **kwargs):
        """Your reward: any f(prompts, completions, **kwargs) -> list[float]. Here: the testbed task's gold score."""
        return task.gold_reward_fn(prompts, completions, **kwargs)

    prompts = (load_dataset("json", data_files=args.prompts, split="train") if args.prompts
               else task.prompt_dataset("train"))
    held_out = task.prompt_dataset("holdout").select(range(args.num_eval_prompts)) if not args.prompts else None
    peft_config = None
    if args.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    config = CEMConfig(
        output_dir=args.output_dir, num_rounds=args.num_rounds, num_generations=args.num_generations,
        prompts_per_round=args.prompts_per_round, max_completion_length=args.max_completion_length,
        elite_top_k=1,  # best-of-N; or elite_quantile=0.75
        dedupe=True, kl_coef=0.1,  # exact KL to the initial model while fine-tuning
        min_entropy=0.05, min_distinct_n=0.2,  # stop when diversity collapses
        eval_num_generations=2, learning_rate=5e-4, lr_scheduler_type="constant", num_train_epochs=1,
        per_device_train_batch_size=args.batch_size, logging_steps=10, save_strategy="no",
        use_cpu=True, bf16=False, report_to="none", gradient_checkpointing=False, disable_tqdm=True,
    )
    trainer = CEMTrainer(testbed_model_path(args.model), args.reward_model or my_reward, config,
                         train_dataset=prompts, eval_dataset=held_out, peft_config=peft_config)  # fmt: skip
    history = trainer.train()  # one dict per round, also in <output_dir>/cem_history.json
    trainer.save_model(args.output_dir)

    for h in history:
        print(f"round {h['round']}: reward_mean {h['reward_mean']:.3f}, elite_reward_mean {h['elite_reward_mean']:.3f}, "
              f"eval_reward_mean {h.get('eval_reward_mean', float('nan')):.3f}, entropy {h['entropy']:.3f}, "
              f"distinct_2 {h['distinct_2']:.3f}")
    print(f"model saved to {args.output_dir}; per-round files in {args.output_dir}/round_*")


if __name__ == "__main__":
    main()
