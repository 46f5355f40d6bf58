"""PPO with an exact KL penalty and a reward model: train, stop, resume from the checkpoint, save.

    python examples/reward_two_stage.py --output_dir outputs/examples/rm          # a reward model first
    python examples/ppo_reward_model.py --reward_model outputs/examples/rm         # testbed: tiny models, CPU
    python examples/ppo_reward_model.py --model testbed:smollm2 --reward_model out/rm-smollm2 --lora
    python examples/ppo_reward_model.py --model path/to/sft-model --reward_model path/to/rm --prompts prompts.jsonl

``--reward_model`` is any reward-model folder: a full checkpoint, a LoRA adapter folder or a RewardEnsemble folder.
Without it the example optimizes a Python reward function (``my_reward`` below: write your own). The value model
starts from the reward model (adapter merged, head kept). Look at: ``reward`` rising, ``kl/exact`` (per-token KL
to the SFT model) staying small, ``policy/ratio_mean`` 1 and ``policy/approx_kl`` 0 at each rollout's first update,
``value/explained_variance`` rising towards 1; and the line saying which checkpoint the second run resumed from.
"""

import argparse

from trl_extras import PPOConfig, PPOTrainer
from trl_extras.testbed import task_module, testbed_model_path

# isort: split
from datasets import load_dataset
from transformers import TrainerCallback


class StopAt(TrainerCallback):
    """Stands in for a crash or a pre-empted job: stops training after ``step`` optimizer steps."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = state.global_step >= self.step


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="testbed:tiny", help="SFT policy path (or testbed:tiny / testbed:smollm2)")
    p.add_argument("--reward_model", help="reward-model folder (full, LoRA adapter or RewardEnsemble); default: my_reward")
    p.add_argument("--prompts", help="JSON/JSONL with a 'prompt' column; default: the testbed's prompts")
    p.add_argument("--lora", action="store_true", help="LoRA policy (the reference is the adapter-disabled base)")
    p.add_argument("--output_dir", default="outputs/examples/ppo")
    p.add_argument("--max_steps", type=int, default=32)
    p.add_argument("--stop_at", type=int, default=None, help="interrupt the first run here (default: half-way)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_completion_length", type=int, default=16)
    p.add_argument("--kl_coef", type=float, default=0.05)
    args = p.parse_args()

    task = task_module("arithmetic" if args.model == "testbed:smollm2" else "sort_digits")

    def my_reward(prompts, completions, **kwargs):
        """Your reward: any f(prompts, completions, **kwargs) -> list[float]. Here: the testbed task's gold score."""
        return task.gold_reward_fn(prompts, completions, **kwargs)

    prompts = (load_dataset("json", data_files=args.prompts, split="train") if args.prompts
               else task.prompt_dataset("train"))
    stop_at = args.stop_at or max(1, args.max_steps // 2)
    config = PPOConfig(
        output_dir=args.output_dir, max_steps=args.max_steps, learning_rate=1e-4,
        per_device_train_batch_size=args.batch_size, max_completion_length=args.max_completion_length,
        kl_estimator="exact", kl_coef=args.kl_coef,  # full-vocabulary KL per token, computed in chunks
        advantage_normalization="batch",
        save_strategy="steps", save_steps=stop_at, logging_steps=1,
        use_cpu=True, bf16=False, report_to="none", gradient_checkpointing=False, disable_tqdm=True,
    )

    def trainer(callbacks=()):
        peft_config = None
        if args.lora:  # a fresh LoraConfig for each trainer: peft fills in the one it is given ("all-linear" becomes
            from peft import LoraConfig  # the module list), which the resume check would see as a changed setting

            peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
        return PPOTrainer(model=testbed_model_path(args.model), reward_funcs=args.reward_model or my_reward,
                          args=config, train_dataset=prompts, peft_config=peft_config, callbacks=list(callbacks))

    first = trainer([StopAt(stop_at)])
    first.train()  # stops at `stop_at` with checkpoint-<stop_at> written
    print(f"first run stopped at step {first.state.global_step}")
    resumed = trainer()
    resumed.train(resume_from_checkpoint=True)  # the newest complete checkpoint under output_dir
    resumed.save_model(args.output_dir)

    rollouts = [h for h in resumed.state.log_history if "reward" in h]
    first_log, last_log = rollouts[0], rollouts[-1]
    for key in ("reward", "kl/exact", "value/explained_variance", "policy/ratio_mean", "policy/approx_kl"):
        print(f"{key:>26}: {first_log[key]:.4f} (step {first_log['step']}) -> {last_log[key]:.4f} (step {last_log['step']})")
    print(f"policy saved to {args.output_dir}")


if __name__ == "__main__":
    main()
