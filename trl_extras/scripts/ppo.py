"""``trl-extras ppo``: PPO with a separate value model, advantage normalization and an exact KL penalty.

    trl-extras ppo --config recipes/ppo_testbed.yaml                                  # testbed, tiny models, CPU
    trl-extras ppo --config recipes/ppo_qlora.yaml --reward_model_path my-org/my-rm   # 0.5B instruct, QLoRA
    accelerate launch --config_file recipes/accelerate/ddp.yaml -m trl_extras.cli ppo --config ...

Rewards: ``--reward_model_path`` (one or several reward-model paths; a directory saved by ``RewardEnsemble`` is
loaded as an ensemble with its penalty), and/or ``--reward_funcs gold`` / ``heuristic`` (the testbed's Python
rewards). ``--track_reward_funcs gold`` logs a reward without optimizing it (e.g. gold while optimizing a proxy).
``dataset_name`` takes ``testbed`` (the built-in prompts), a Hub dataset, a ``save_to_disk`` directory or a data
file with a ``prompt`` column. ``model_name_or_path`` ``testbed`` (or unset) is the testbed's SFT policy.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from trl import ScriptArguments

TESTBED = "testbed"
PYTHON_REWARDS = ("gold", "heuristic")


@dataclass
class PPOScriptArguments(ScriptArguments):
    """Data and reward selection for ``trl-extras ppo`` (TRL's ``ScriptArguments`` plus rewards and testbed sizes)."""

    reward_model_path: list[str] | None = field(
        default=None,
        metadata={"help": "Reward model path(s); a RewardEnsemble directory is loaded as an ensemble (its penalty)."},
    )
    reward_funcs: list[str] | None = field(
        default=None, metadata={"help": "Built-in Python rewards to optimize: 'gold' and/or 'heuristic' (testbed)."}
    )
    track_reward_funcs: list[str] | None = field(
        default=None, metadata={"help": "Built-in rewards logged as rewards/<name>/mean but not optimized, e.g. gold."}
    )
    value_model_path: str | None = field(
        default=None, metadata={"help": "Value model path (default: copy of the reward model, else the policy)."}
    )
    testbed_num_train_prompts: int = field(default=2000, metadata={"help": "Testbed: number of training prompts."})
    testbed_num_eval_prompts: int = field(default=128, metadata={"help": "Testbed: holdout prompts for evaluate (0: none)."})
    testbed_conversational: bool = field(default=False, metadata={"help": "Testbed: conversational (message) prompts."})
    testbed_seed: int = field(default=0, metadata={"help": "Testbed: seed of the prompt pool."})
    metrics_file: str = field(default="ppo_metrics.json", metadata={"help": "File under output_dir for final metrics."})


def _python_reward(name: str):
    from ..testbed import gold_reward_fn, heuristic_reward_fn

    if name not in PYTHON_REWARDS:
        raise ValueError(f"Unknown built-in reward {name!r}; choose from {PYTHON_REWARDS} or pass --reward_model_path.")
    return {"gold": gold_reward_fn, "heuristic": heuristic_reward_fn}[name]


def _reward_model(path: str, model_init_kwargs: dict):
    """A reward-model path, or a RewardEnsemble when the directory is one."""
    from ..rewards.ensemble import MANIFEST_NAME, RewardEnsemble, interrupted_ensemble_dir

    if os.path.isfile(os.path.join(path, MANIFEST_NAME)):
        return RewardEnsemble.from_pretrained(path)
    if interrupted_ensemble_dir(path):
        raise ValueError(
            f"--reward_model_path {path} holds reward-ensemble members but no {MANIFEST_NAME}: its training or "
            "calibration was interrupted. Rerun `trl-extras reward-ensemble` with the same settings (finished "
            "members are reused)."
        )
    from ..rewards.scoring import RewardModelScorer

    return RewardModelScorer(path, model_init_kwargs=model_init_kwargs)


def datasets_for(script_args: PPOScriptArguments):
    if (script_args.dataset_name or TESTBED) == TESTBED:
        from ..testbed import TestbedConfig, prompt_dataset

        cfg = TestbedConfig(
            num_train_prompts=script_args.testbed_num_train_prompts,
            num_holdout_prompts=max(script_args.testbed_num_eval_prompts, 1),
            seed=script_args.testbed_seed,
        )
        conv = script_args.testbed_conversational
        train = prompt_dataset("train", cfg, conversational=conv)
        evaluation = prompt_dataset("holdout", cfg, conversational=conv) if script_args.testbed_num_eval_prompts else None
        return train, evaluation
    from .reward_two_stage import load_pairs  # generic loader: Hub name, save_to_disk directory or data file
    from .utils import load_eval_split

    train = load_pairs(script_args.dataset_name, script_args.dataset_config, script_args.dataset_train_split)
    evaluation = load_eval_split(script_args.dataset_name, script_args.dataset_config, script_args.dataset_test_split)
    return train, evaluation


def main(argv=None) -> int:
    from trl import ModelConfig, get_peft_config, get_quantization_config

    from ..trainers.ppo import PPOConfig, PPOTrainer
    from .reward_two_stage import resolve_model, resume_arg
    from .utils import parse_args

    script_args, training_args, model_args = parse_args([PPOScriptArguments, PPOConfig, ModelConfig], argv, "ppo")
    from ..utils.validation import check_model_path

    for path in script_args.reward_model_path or []:  # before any model loads
        check_model_path(path, "--reward_model_path")
    check_model_path(script_args.value_model_path, "--value_model_path")
    model = resolve_model(model_args, training_args)  # 'testbed' -> the SFT policy; fills model_init_kwargs
    quantization_config = get_quantization_config(model_args)
    load_kwargs = dict(training_args.model_init_kwargs or {})
    if quantization_config is not None:
        load_kwargs["quantization_config"] = quantization_config
    rewards = [_reward_model(p, load_kwargs) for p in script_args.reward_model_path or []]
    rewards += [_python_reward(n) for n in script_args.reward_funcs or []]
    if not rewards:
        raise ValueError("No reward: pass --reward_model_path and/or --reward_funcs gold|heuristic.")
    tracked = [_python_reward(n) for n in script_args.track_reward_funcs or []] or None
    train, evaluation = datasets_for(script_args)
    peft_config = get_peft_config(model_args)
    trainer = PPOTrainer(
        model=model,
        reward_funcs=rewards,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        value_model=script_args.value_model_path,
        log_reward_funcs=tracked,
        quantization_config=quantization_config,
        peft_config=peft_config,
    )
    trainer.train(resume_from_checkpoint=resume_arg(training_args.resume_from_checkpoint))
    trainer.save_model(training_args.output_dir)
    metrics = {"global_step": trainer.state.global_step}
    if trainer.eval_dataset is not None:
        metrics["final_eval"] = trainer.evaluate()
    if trainer.args.should_save:
        os.makedirs(training_args.output_dir, exist_ok=True)
        with open(os.path.join(training_args.output_dir, script_args.metrics_file), "w", encoding="utf-8") as f:
            json.dump(metrics, f, indent=2, default=str)
    trainer.accelerator.print(json.dumps(metrics, indent=2, default=str))
    return 0
