"""Reward-model refresh (the article's "second way" against Goodhart): compare the policy's answers with the SFT
model's, have them labelled, and fine-tune the reward model on those pairs — (1) with a judge inside a PPO run
(``RewardRefreshCallback``), and (2) with people between runs: export a file, fill it in, import it, refresh.

    python examples/reward_two_stage.py --output_dir outputs/examples/rm       # a reward model first
    python examples/reward_refresh.py --reward_model outputs/examples/rm       # testbed: tiny models, CPU
    python examples/reward_refresh.py --model path/to/sft --reward_model path/to/rm --prompts prompts.jsonl --lora

The judge here is a Python verifier (``my_judge_reward``: write your own, or pass a stronger reward-model folder).
Look at: ``refresh/accuracy_before`` → ``refresh/accuracy_after`` (the reward model's accuracy on the new pairs: low
before means the policy found answers the reward model misjudges) and ``refresh/policy_win_rate`` (how often the
labeller preferred the policy's answer to the SFT model's).
"""

import argparse
import csv

from trl_extras import (
    PPOConfig,
    PPOTrainer,
    RewardJudge,
    RewardRefreshCallback,
    RewardRefreshConfig,
    collect_comparisons,
    export_for_labeling,
    import_labels,
    load_reward,
    refresh_reward_model,
    to_preference_pairs,
)
from trl_extras.testbed import task_module, testbed_model_path

# isort: split
from datasets import load_dataset


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="testbed:tiny", help="SFT policy path (or testbed:tiny / testbed:smollm2)")
    p.add_argument("--reward_model", required=True, help="the reward-model folder to refresh (full or LoRA adapter)")
    p.add_argument("--prompts", help="JSON/JSONL with a 'prompt' column; default: the testbed's prompts")
    p.add_argument("--lora", action="store_true", help="LoRA policy")
    p.add_argument("--output_dir", default="outputs/examples/refresh")
    p.add_argument("--max_steps", type=int, default=16)
    p.add_argument("--refresh_every", type=int, default=8, help="PPO steps between refreshes")
    p.add_argument("--num_pairs", type=int, default=32, help="comparisons labelled per refresh")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--max_completion_length", type=int, default=16)
    args = p.parse_args()

    task = task_module("arithmetic" if args.model == "testbed:smollm2" else "sort_digits")

    def my_judge_reward(prompts, completions, **kwargs):
        """The labeller's reward (a verifier, a stronger model...): here the testbed task's gold score."""
        return task.gold_reward_fn(prompts, completions, **kwargs)

    sft = testbed_model_path(args.model)
    prompts = (load_dataset("json", data_files=args.prompts, split="train") if args.prompts
               else task.prompt_dataset("train"))["prompt"]
    rl_prompts, fresh_prompts = prompts[: len(prompts) // 2], prompts[len(prompts) // 2 :]  # refresh on unseen ones
    peft_config = None
    if args.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    refresh_args = RewardRefreshConfig(output_dir=f"{args.output_dir}/refresh_training", learning_rate=1e-4, num_train_epochs=1,
                                       per_device_train_batch_size=16, use_cpu=True, bf16=False,
                                       disable_tqdm=True)  # fmt: skip

    # 1. a judge in the loop: PPO optimizes the reward model; every `refresh_every` steps the callback compares the
    #    policy's answers with the SFT model's on fresh prompts, the judge labels them, the reward model is refreshed
    from datasets import Dataset

    callback = RewardRefreshCallback(RewardJudge(my_judge_reward), every_n_steps=args.refresh_every,
                                     num_pairs=args.num_pairs, prompts=fresh_prompts, baseline=sft,
                                     refresh_args=refresh_args, max_new_tokens=args.max_completion_length)  # fmt: skip
    trainer = PPOTrainer(
        model=sft, reward_funcs=args.reward_model, train_dataset=Dataset.from_dict({"prompt": rl_prompts}),
        peft_config=peft_config, callbacks=[callback],
        args=PPOConfig(output_dir=f"{args.output_dir}/ppo", max_steps=args.max_steps, learning_rate=1e-4,
                       per_device_train_batch_size=args.batch_size, max_completion_length=args.max_completion_length,
                       kl_estimator="exact", kl_coef=0.05, logging_steps=1, save_strategy="no", use_cpu=True,
                       bf16=False, report_to="none", gradient_checkpointing=False, disable_tqdm=True),
    )
    callback.set_trainer(trainer)
    trainer.train()
    trainer.save_model(f"{args.output_dir}/ppo")
    for h in trainer.state.log_history:
        if "refresh/accuracy_after" in h:
            print(f"judge refresh at step {h['step']}: accuracy on the new pairs {h['refresh/accuracy_before']:.3f} -> "
                  f"{h['refresh/accuracy_after']:.3f}, policy win rate {h.get('refresh/policy_win_rate', float('nan')):.3f}")

    # 2. people between runs: export comparisons (random A/B order, no model names), people fill the label column
    #    (A, B or tie) in a spreadsheet, import, refresh the reward model, save it
    comparisons = collect_comparisons(f"{args.output_dir}/ppo", sft, fresh_prompts[-args.num_pairs :],
                                      max_new_tokens=args.max_completion_length)  # fmt: skip
    path = export_for_labeling(comparisons, f"{args.output_dir}/to_label.csv")
    print(f"exported {len(comparisons)} comparisons to {path}: fill the 'label' column with A, B or tie")
    fill_like_a_person(path, my_judge_reward)  # stands in for the people; leaves some rows empty
    labelled = import_labels(path, comparisons=comparisons)
    reward = load_reward(args.reward_model)  # the folder's model, to be refreshed in place
    report = refresh_reward_model(reward, to_preference_pairs(labelled), args=refresh_args)
    reward.model.save_pretrained(f"{args.output_dir}/rm_refreshed")
    reward.processing_class.save_pretrained(f"{args.output_dir}/rm_refreshed")
    print(f"people refresh: {report.num_new_pairs} labelled pairs, accuracy on them {report.accuracy_before:.3f} -> "
          f"{report.accuracy_after:.3f}; refreshed reward model saved to {args.output_dir}/rm_refreshed")


def fill_like_a_person(path, judge_reward):
    """What an annotator does with the CSV: read both answers, write A, B or tie (and skip every fifth row)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows):
        if i % 5 == 4:
            continue
        a, b = judge_reward([row["prompt"]] * 2, [row["answer_a"], row["answer_b"]])
        row["label"] = "A" if a > b else "B" if b > a else "tie"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
