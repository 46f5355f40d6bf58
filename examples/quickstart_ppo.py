"""The README quickstart: PPO with an exact KL penalty on the built-in testbed (CPU, a few minutes).

    python examples/quickstart_ppo.py                      # the README's settings
    python examples/quickstart_ppo.py --max_steps 1        # a smoke test

README's "Quickstart" block is this file without the command-line lines (tests/test_readme_snippets.py checks it).
"""

import argparse

from trl_extras import PPOConfig, PPOTrainer
from trl_extras.testbed import build_sft_policy, gold_reward_fn, prompt_dataset

parser = argparse.ArgumentParser(description="PPO with an exact KL penalty on the testbed.")
parser.add_argument("--max_steps", type=int, default=30)
parser.add_argument("--output_dir", default="outputs/quickstart-ppo")
cli = parser.parse_args()

policy = build_sft_policy()                       # tiny "pretrained SFT" model, cached on disk (~1 min once)
dataset = prompt_dataset("train")                 # a `prompt` column, like GRPO data

args = PPOConfig(
    output_dir="outputs/quickstart-ppo", use_cpu=True, bf16=False, report_to="none", save_strategy="no",
    kl_estimator="exact", kl_coef=0.05,           # full-vocabulary KL per token, computed in chunks
    advantage_normalization="batch",              # zero mean, unit variance over the global batch
    learning_rate=1e-4, max_steps=30, per_device_train_batch_size=32, max_completion_length=16,
)
args.output_dir, args.max_steps = cli.output_dir, cli.max_steps  # the command line's (README: the defaults)
trainer = PPOTrainer(
    model=policy, reward_funcs=gold_reward_fn,    # or a reward-model path, a RewardEnsemble, a list + reward_weights
    args=args, train_dataset=dataset,
)
trainer.train()
last_rollout = [entry for entry in trainer.state.log_history if "reward" in entry][-1]
print({k: last_rollout[k] for k in ("reward", "kl/exact", "entropy")})
