"""Two PPO steps under `accelerate launch` (2 CPU processes): run by tests/test_distributed.py."""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def length_reward(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]


def main(policy_path: str, out: str) -> None:
    from datasets import Dataset

    from trl_extras import PPOConfig, PPOTrainer

    prompts = [f"{i % 10} {(i * 7) % 10} >" for i in range(16)]
    args = PPOConfig(
        output_dir=os.path.join(os.path.dirname(out), "ppo"), use_cpu=True, bf16=False, report_to="none",
        save_strategy="no", gradient_checkpointing=False, disable_tqdm=True, logging_steps=1,
        per_device_train_batch_size=4, num_mini_batches=1, num_ppo_epochs=1, max_steps=2,
        max_completion_length=6, learning_rate=1e-3, seed=0,
    )
    trainer = PPOTrainer(model=policy_path, reward_funcs=length_reward, args=args,
                         train_dataset=Dataset.from_dict({"prompt": prompts}))
    trainer.train()
    if trainer.accelerator.is_main_process:
        rollouts = [e for e in trainer.state.log_history if "reward" in e]
        with open(out, "w") as f:
            json.dump({"num_processes": trainer.accelerator.num_processes,
                       "global_step": trainer.state.global_step, "rollout_logs": rollouts}, f)
    trainer.accelerator.wait_for_everyone()
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
