"""The README quickstart: PPO with an exact KL penalty on the built-in testbed (CPU, about a minute).

    python examples/quickstart_ppo.py
"""

from trl_extras import PPOConfig, PPOTrainer
from trl_extras.testbed import build_sft_policy, gold_reward_fn, prompt_dataset

policy = build_sft_policy()  # tiny "pretrained SFT" model, cached on disk (~1 min the first time)
dataset = prompt_dataset("train")  # a `prompt` column, like GRPO data

args = PPOConfig(
    output_dir="outputs/quickstart-ppo",
    use_cpu=True,
    bf16=False,
    report_to="none",
    kl_estimator="exact",  # full-vocabulary KL per token, in chunks
    kl_coef=0.05,
    advantage_normalization="batch",  # zero mean, unit variance over the global batch
    learning_rate=1e-4,
    max_steps=30,
    per_device_train_batch_size=32,
    max_completion_length=16,
    save_strategy="no",
)
trainer = PPOTrainer(
    model=policy,
    reward_funcs=gold_reward_fn,  # or a reward-model path, a RewardEnsemble, or a list with reward_weights
    args=args,
    train_dataset=dataset,
)
trainer.train()
last_rollout = [entry for entry in trainer.state.log_history if "reward" in entry][-1]
print({k: last_rollout[k] for k in ("reward", "kl/exact", "entropy")})
