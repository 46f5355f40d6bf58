"""Synthetic preference pairs → DPO: the policy samples N answers per prompt, your reward ranks them, (best, worst)
becomes a pair; DPO trains on those first, then on real pairs (the article's two-stage DPO).

    python examples/synthetic_pairs_dpo.py                                   # testbed: tiny model, CPU, seconds
    python examples/synthetic_pairs_dpo.py --model testbed:smollm2 --lora
    python examples/synthetic_pairs_dpo.py --model path/to/sft --prompts prompts.jsonl --reward_model path/to/rm \
        --real_pairs pairs.jsonl --lora

Look at: how many prompts gave a pair and their mean margin (prompts whose answers all score alike give none), then
DPO's ``rewards/margins`` and ``rewards/accuracies`` in each stage.
"""

import argparse

from trl_extras import run_two_stage_dpo, synthesize_preference_pairs
from trl_extras.testbed import task_module, testbed_model_path

# isort: split
from datasets import load_dataset
from trl import DPOConfig


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="testbed:tiny", help="SFT policy path (or testbed:tiny / testbed:smollm2)")
    p.add_argument("--prompts", help="JSON/JSONL with a 'prompt' column; default: the testbed's prompts")
    p.add_argument("--reward_model", help="reward-model folder (full, LoRA adapter or RewardEnsemble); default: my_reward")
    p.add_argument("--real_pairs", help="JSON/JSONL prompt/chosen/rejected; default: the testbed's clean pairs")
    p.add_argument("--lora", action="store_true", help="LoRA DPO (stage 2 starts from the merged stage-1 model)")
    p.add_argument("--output_dir", default="outputs/examples/dpo")
    p.add_argument("--num_prompts", type=int, default=256)
    p.add_argument("--n", type=int, default=4, help="samples per prompt")
    p.add_argument("--num_real_pairs", type=int, default=256)
    p.add_argument("--max_steps", type=int, default=-1, help="DPO steps per stage (-1: one epoch)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--max_new_tokens", type=int, default=16)
    args = p.parse_args()

    task = task_module("arithmetic" if args.model == "testbed:smollm2" else "sort_digits")

    def my_reward(prompts, completions, **kwargs):
        """Your reward: any f(prompts, completions, **kwargs) -> list[float]. Here: the testbed task's gold score."""
        return task.gold_reward_fn(prompts, completions, **kwargs)

    model = testbed_model_path(args.model)
    prompts = (load_dataset("json", data_files=args.prompts, split="train") if args.prompts
               else task.prompt_dataset("train"))["prompt"][: args.num_prompts]
    synthetic, stats = synthesize_preference_pairs(model, args.reward_model or my_reward, prompts, n=args.n,
                                                   max_new_tokens=args.max_new_tokens, return_stats=True)  # fmt: skip
    print(f"{stats.num_pairs} pairs from {stats.num_prompts} prompts (mean margin {stats.mean_margin:.3f}; "
          f"{stats.skipped_no_preference} prompts had no preference)")
    real = (load_dataset("json", data_files=args.real_pairs, split="train") if args.real_pairs
            else task.clean_pairs(args.num_real_pairs, seed=2))
    real = real.select_columns(["prompt", "chosen", "rejected"])
    peft_config = None
    if args.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    config = DPOConfig(
        output_dir=args.output_dir, max_steps=args.max_steps, num_train_epochs=1, learning_rate=5e-5, beta=0.1,
        per_device_train_batch_size=args.batch_size, logging_steps=1, save_strategy="no",
        use_cpu=True, bf16=False, report_to="none", gradient_checkpointing=False, disable_tqdm=True,
    )
    stage1, stage2 = run_two_stage_dpo(model, synthetic.select_columns(["prompt", "chosen", "rejected"]), real,
                                       config, peft_config=peft_config)  # fmt: skip
    stage2.save_model(f"{args.output_dir}/final")
    for name, trainer in (("synthetic pairs", stage1), ("real pairs", stage2)):
        logs = [h for h in trainer.state.log_history if "rewards/margins" in h]
        print(f"DPO on {name}: rewards/margins {logs[0]['rewards/margins']:.3f} -> {logs[-1]['rewards/margins']:.3f}, "
              f"rewards/accuracies {logs[-1]['rewards/accuracies']:.3f}")
    print(f"final model saved to {args.output_dir}/final")


if __name__ == "__main__":
    main()
