"""PPO under `accelerate launch` (2 CPU processes, DDP): run by tests/test_trial_findings.py.

Two optimizer steps with batch-normalized advantages; every process writes its Trainer log history, so the test can
check that the update and advantage metrics are global (the same on both processes, advantages/mean = 0 after the
global normalization), not each process's share.
"""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def length_reward(prompts, completions, **kwargs):
    return [float(len(c)) + (i % 3) for i, c in enumerate(completions)]


def main(policy_path: str, out_prefix: str) -> None:
    from datasets import Dataset

    from trl_extras import PPOConfig, PPOTrainer

    prompts = [f"{i % 10} {(i * 7) % 10} >" for i in range(16)]
    args = PPOConfig(
        output_dir=out_prefix + "_run", use_cpu=True, bf16=False, report_to="none", save_strategy="no",
        disable_tqdm=True, logging_steps=1, per_device_train_batch_size=4, num_mini_batches=1, num_ppo_epochs=2,
        max_steps=2, max_completion_length=6, learning_rate=1e-2, advantage_normalization="batch",
        advantage_keep_mean=False, value_warmup_steps=0, seed=0,
        top_k=50,  # an off-policy sampling setting: PPOTrainer warns at construction (the test counts the warnings)
    )
    trainer = PPOTrainer(policy_path, reward_funcs=length_reward, args=args,
                         train_dataset=Dataset.from_dict({"prompt": prompts}))
    trainer.train()
    rank = trainer.accelerator.process_index
    with open(f"{out_prefix}.rank{rank}.json", "w") as f:
        json.dump({"num_processes": trainer.accelerator.num_processes, "log_history": trainer.state.log_history}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
