"""GRPO with the exact KL penalty: TRL's GRPOTrainer plus β·(per-token KL summed over the whole vocabulary),
computed in chunks, instead of GRPO's sampled k3 estimate.

    python examples/grpo_exact_kl.py                                         # testbed: tiny model, CPU, seconds
    python examples/grpo_exact_kl.py --model testbed:smollm2 --lora
    python examples/grpo_exact_kl.py --model path/to/sft-model --reward_model path/to/rm --prompts prompts.jsonl --lora

Keep TRL's ``beta=0.0`` and set ``exact_kl_coef``. Look at: ``exact_kl`` (mean exact KL per token to the reference,
0 at the first step, growing slowly; a jump means the policy is leaving the reference fast) next to ``reward``.
"""

import argparse

from trl_extras import ExactKLGRPOConfig, ExactKLGRPOTrainer
from trl_extras.testbed import task_module, testbed_model_path

# isort: split
from datasets import load_dataset


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="testbed:tiny", help="SFT policy path (or testbed:tiny / testbed:smollm2)")
    p.add_argument("--reward_model", help="reward-model folder (full, LoRA adapter or RewardEnsemble); default: my_reward")
    p.add_argument("--prompts", help="JSON/JSONL with a 'prompt' column; default: the testbed's prompts")
    p.add_argument("--lora", action="store_true", help="LoRA policy (the reference is the adapter-disabled base)")
    p.add_argument("--output_dir", default="outputs/examples/grpo_exact_kl")
    p.add_argument("--max_steps", type=int, default=16)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--num_generations", type=int, default=4)
    p.add_argument("--max_completion_length", type=int, default=16)
    p.add_argument("--exact_kl_coef", type=float, default=0.1)
    args = p.parse_args()

    task = task_module("arithmetic" if args.model == "testbed:smollm2" else "sort_digits")

    def my_reward(prompts, completions, **kwargs):
        """Your reward: any f(prompts, completions, **kwargs) -> list[float]. Here: the testbed task's gold score."""
        return task.gold_reward_fn(prompts, completions, **kwargs)

    prompts = (load_dataset("json", data_files=args.prompts, split="train") if args.prompts
               else task.prompt_dataset("train"))
    peft_config = None
    if args.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    config = ExactKLGRPOConfig(
        output_dir=args.output_dir, max_steps=args.max_steps, learning_rate=1e-4,
        per_device_train_batch_size=args.batch_size, num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        beta=0.0, exact_kl_coef=args.exact_kl_coef,  # TRL's sampled KL off, the exact one on
        logging_steps=1, save_strategy="no",
        use_cpu=True, bf16=False, report_to="none", gradient_checkpointing=False, disable_tqdm=True,
    )
    trainer = ExactKLGRPOTrainer(model=testbed_model_path(args.model), reward_funcs=args.reward_model or my_reward,
                                 args=config, train_dataset=prompts, peft_config=peft_config)  # fmt: skip
    trainer.train()
    trainer.save_model(args.output_dir)

    logs = [h for h in trainer.state.log_history if "exact_kl" in h]
    shown = sorted({*range(0, len(logs), max(1, len(logs) // 8)), len(logs) - 1})
    for h in (logs[i] for i in shown):
        print(f"step {h['step']:>3}: reward {h['reward']:.3f}, exact_kl {h['exact_kl']:.5f}")
    print(f"policy saved to {args.output_dir}")


if __name__ == "__main__":
    main()
