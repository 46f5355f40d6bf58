"""Runs for tests/test_reliability.py's kill tests: a tiny PPO, reward-ensemble or CEM run that the test kills with
``TRL_EXTRAS_KILL_AT=<point>`` (the process SIGKILLs itself there) and then reruns to check the resume.

    python kill_resume.py ppo <policy> <reward> <output_dir> <max_steps> <resume:0|1> <result.json> [<num_ppo_epochs>|default]
    python kill_resume.py ensemble <base_model> <output_dir> <result.json>
    python kill_resume.py cem <policy> <output_dir> <num_rounds> <result.json>
"""

import hashlib
import json
import os
import sys
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")



def length_reward(prompts, completions, **kwargs):
    return [float(len(c)) / 10.0 for c in completions]


def digest(module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def prompts(n=16):
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [f"{i % 10} {(i * 7) % 10} {(i * 3) % 10} >" for i in range(n)]})


def run_ppo(policy, reward, output_dir, max_steps, resume, result_path, num_ppo_epochs="1"):
    from trl_extras import PPOConfig, PPOTrainer

    epochs = {} if num_ppo_epochs == "default" else {"num_ppo_epochs": int(num_ppo_epochs)}  # default: PPOConfig's (4)
    args = PPOConfig(
        output_dir=output_dir, use_cpu=True, bf16=False, report_to="none", save_strategy="steps", save_steps=1,
        gradient_checkpointing=False, disable_tqdm=True, logging_steps=1, per_device_train_batch_size=4,
        num_mini_batches=1, max_steps=int(max_steps), max_completion_length=6, learning_rate=1e-2, seed=0, **epochs,
    )
    trainer = PPOTrainer(policy, reward_funcs=length_reward, args=args, train_dataset=prompts(),
                         value_model=reward)  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train(resume_from_checkpoint=True if resume == "1" else None)
    out = {
        "global_step": trainer.state.global_step,
        "policy": digest(trainer.model),
        "value": digest(trainer.accelerator.unwrap_model(trainer.value_model)),
        "warnings": [str(w.message) for w in caught if "checkpoint" in str(w.message)],
    }
    json.dump(out, open(result_path, "w"))


def run_ensemble(base, output_dir, result_path):
    from trl import RewardConfig

    from trl_extras.rewards.ensemble import train_reward_ensemble
    from trl_extras.testbed import clean_pairs

    pairs = clean_pairs(24, seed=3)
    args = RewardConfig(output_dir=output_dir + "/runs", use_cpu=True, bf16=False, report_to="none",
                        save_strategy="no", max_steps=2, per_device_train_batch_size=8, disable_tqdm=True,
                        gradient_checkpointing=False, learning_rate=1e-3, logging_steps=1)  # fmt: skip
    ens = train_reward_ensemble(base, pairs, args=args, k=2, output_dir=output_dir, calibration_size=8,
                                progress=False)  # fmt: skip
    out = {"calibration": ens.calibration, "members": [digest(m) for m in ens.models]}
    json.dump(out, open(result_path, "w"))


def run_cem(policy, output_dir, num_rounds, result_path):
    from trl_extras.trainers.cem import CEMConfig, CEMTrainer

    args = CEMConfig(
        output_dir=output_dir, num_rounds=int(num_rounds), num_generations=2, prompts_per_round=4,
        max_completion_length=6, elite_top_k=1, learning_rate=1e-3, per_device_train_batch_size=4, num_train_epochs=1,
        use_cpu=True, bf16=False, report_to="none", save_strategy="no", gradient_checkpointing=False,
        disable_tqdm=True, logging_steps=1, seed=0, plot=False,
    )
    trainer = CEMTrainer(policy, reward_funcs=length_reward, args=args, train_dataset=prompts())
    history = trainer.train()
    out = {"rounds": [h["round"] for h in history], "policy": digest(trainer.model),
           "reward_means": [h["reward_mean"] for h in history]}  # fmt: skip
    json.dump(out, open(result_path, "w"))


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    {"ppo": run_ppo, "ensemble": run_ensemble, "cem": run_cem}[mode](*rest)
