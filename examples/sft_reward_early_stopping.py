"""SFT with reward-based early stopping: at each evaluation the model answers held-out prompts, your reward scores
them (``eval_reward``), training stops after ``patience`` evaluations without improvement, and the best checkpoint
by reward (not by eval_loss) is kept.

    python examples/sft_reward_early_stopping.py                             # testbed: tiny model, CPU, seconds
    python examples/sft_reward_early_stopping.py --model testbed:smollm2 --lora
    python examples/sft_reward_early_stopping.py --model path/to/base --sft_data sft.jsonl --eval_prompts prompts.jsonl \
        --reward_model path/to/rm --lora

Look at: ``eval_reward`` against ``eval_loss`` at each evaluation (they need not agree: the reward measures the
answers the model generates) and ``eval_reward_best``; the final line names the chosen checkpoint.
"""

import argparse

from trl_extras import RewardEarlyStoppingCallback
from trl_extras.testbed import task_module, testbed_model_path

# isort: split
from datasets import load_dataset
from transformers import AutoTokenizer
from trl import SFTConfig, SFTTrainer


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="testbed:tiny", help="model to fine-tune (or testbed:tiny / testbed:smollm2)")
    p.add_argument("--sft_data", help="JSON/JSONL prompt/completion (or messages) rows; default: the testbed's")
    p.add_argument("--eval_prompts", help="JSON/JSONL with a 'prompt' column; default: testbed held-out prompts")
    p.add_argument("--reward_model", help="reward-model folder (full, LoRA adapter or RewardEnsemble); default: my_reward")
    p.add_argument("--lora", action="store_true", help="fine-tune a LoRA adapter")
    p.add_argument("--output_dir", default="outputs/examples/sft_reward_es")
    p.add_argument("--num_examples", type=int, default=512)
    p.add_argument("--num_eval_prompts", type=int, default=64)
    p.add_argument("--max_steps", type=int, default=40)
    p.add_argument("--eval_steps", type=int, default=10)
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--max_new_tokens", type=int, default=16)
    args = p.parse_args()

    task = task_module("arithmetic" if args.model == "testbed:smollm2" else "sort_digits")

    def my_reward(prompts, completions, **kwargs):
        """Your reward: any f(prompts, completions, **kwargs) -> list[float]. Here: the testbed task's gold score."""
        return task.gold_reward_fn(prompts, completions, **kwargs)

    data = (load_dataset("json", data_files=args.sft_data, split="train") if args.sft_data
            else task.sft_dataset(args.num_examples, seed=5).select_columns(["prompt", "completion"]))
    split = data.train_test_split(test_size=0.1, seed=0)  # eval_loss on held-out rows, beside eval_reward
    prompts = (load_dataset("json", data_files=args.eval_prompts, split="train") if args.eval_prompts
               else task.prompt_dataset("holdout"))["prompt"][: args.num_eval_prompts]
    model = testbed_model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    peft_config = None
    if args.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")

    callback = RewardEarlyStoppingCallback(args.reward_model or my_reward, prompts, processing_class=tokenizer,
                                           patience=args.patience, max_new_tokens=args.max_new_tokens)  # fmt: skip
    config = SFTConfig(
        output_dir=args.output_dir, max_steps=args.max_steps, learning_rate=2e-4,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.batch_size,
        eval_strategy="steps", eval_steps=args.eval_steps, save_strategy="steps", save_steps=args.eval_steps,
        metric_for_best_model="eval_reward", greater_is_better=True, load_best_model_at_end=True,
        save_total_limit=2, logging_steps=args.eval_steps,
        use_cpu=True, bf16=False, report_to="none", gradient_checkpointing=False, disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=split["train"], eval_dataset=split["test"],
                         processing_class=tokenizer, callbacks=[callback], peft_config=peft_config)  # fmt: skip
    callback.set_trainer(trainer)  # logs eval_reward through the trainer (report_to integrations)
    trainer.train()
    trainer.save_model(args.output_dir)

    for h in trainer.state.log_history:
        if "eval_reward" in h:
            loss = next((e["eval_loss"] for e in trainer.state.log_history
                         if "eval_loss" in e and e["step"] == h["step"]), float("nan"))  # fmt: skip
            print(f"step {h['step']:>3}: eval_reward {h['eval_reward']:.3f}, eval_loss {loss:.3f}")
    print(f"best eval_reward {callback.best:.3f} at step {callback.best_step}; stopped at step "
          f"{trainer.state.global_step}; best checkpoint {trainer.state.best_model_checkpoint} (saved to {args.output_dir})")


if __name__ == "__main__":
    main()
