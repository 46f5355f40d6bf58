"""ExactKLGRPOTrainer under `accelerate launch` (DDP or DeepSpeed, 2 CPU processes): run by tests/test_distributed.py.

Three steps with a frozen reference copy (prepared by `prepare_deepspeed` under DeepSpeed); writes the logged
metrics, so the test can check that every backend gives the same run.
"""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def length_reward(prompts, completions, **kwargs):  # varies across a group, so GRPO's advantages are not all 0
    return [float(len(c)) for c in completions]


def main(policy_path: str, out: str) -> None:
    from trl_extras.testbed import TestbedConfig, prompt_dataset
    from trl_extras.trainers.exact_kl_grpo import ExactKLGRPOConfig, ExactKLGRPOTrainer

    args = ExactKLGRPOConfig(
        output_dir=os.path.join(os.path.dirname(out), "grpo"), use_cpu=True, bf16=False, report_to="none",
        save_strategy="no", gradient_checkpointing=False, disable_tqdm=True, logging_steps=1,
        per_device_train_batch_size=4, num_generations=4, max_completion_length=6, max_steps=3, learning_rate=1e-2,
        temperature=0.9, exact_kl_coef=0.5, exact_kl_chunk_size=4, max_grad_norm=0.0, seed=0,
    )
    dataset = prompt_dataset("train", TestbedConfig(num_train_prompts=16, num_holdout_prompts=4))
    trainer = ExactKLGRPOTrainer(model=policy_path, reward_funcs=length_reward, args=args, train_dataset=dataset)
    trainer.train()
    if trainer.accelerator.is_main_process:
        with open(out, "w") as f:
            json.dump({"num_processes": trainer.accelerator.num_processes,
                       "distributed_type": str(trainer.accelerator.distributed_type),
                       "logs": [e for e in trainer.state.log_history if "exact_kl" in e]}, f)
    trainer.accelerator.wait_for_everyone()
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
