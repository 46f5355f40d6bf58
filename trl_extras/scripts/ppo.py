"""``trl-extras ppo``: PPO with a separate value model (initialised from the reward model or the policy), advantage
normalization and an exact full-vocabulary KL penalty to the reference policy, on TRL's Trainer. Rewards come from
``--reward_funcs`` (reward-model paths, LoRA adapter folders, RewardEnsemble folders, ``module:function`` import
paths, the testbed's ``gold`` / ``heuristic``), summed with ``--reward_weights``; ``--track_reward_funcs`` (same
vocabulary) are logged as ``rewards/<name>/mean`` but not optimized. ``dataset_name`` takes ``testbed`` (the built-in
prompts), a Hub dataset, a ``save_to_disk`` directory or a data file with a ``prompt`` column;
``model_name_or_path`` takes a path, a Hub id, ``testbed`` (the testbed's SFT policy) or ``testbed:smollm2``. The
testbed fills in the model only when the data is the testbed's.

examples:
  trl-extras ppo --config recipes/ppo_testbed.yaml                                  # testbed, tiny models, CPU
  trl-extras ppo --model_name_or_path out/sft --dataset_name prompts.jsonl --reward_funcs out/rm \\
      --output_dir out/ppo --use_peft --lora_task_type CAUSAL_LM
  trl-extras ppo --config recipes/ppo_qlora.yaml --reward_funcs my-org/my-rm myrewards:length_penalty \\
      --reward_weights 1.0 0.1
  accelerate launch --config_file recipes/accelerate/ddp.yaml -m trl_extras.cli ppo --config ...

Deprecated: ``--reward_model_path`` (use ``--reward_funcs``; still accepted with a warning).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import ScriptArguments

from .utils import REWARD_FUNCS_HELP

TESTBED = "testbed"
PYTHON_REWARDS = ("gold", "heuristic")


@dataclass
class PPOScriptArguments(ScriptArguments):
    """Data and reward selection for ``trl-extras ppo`` (TRL's ``ScriptArguments`` plus rewards and testbed sizes)."""

    reward_funcs: list[str] | None = field(default=None, metadata={"help": REWARD_FUNCS_HELP})
    track_reward_funcs: list[str] | None = field(
        default=None,
        metadata={"help": "Rewards logged as rewards/<name>/mean but not optimized (same forms as --reward_funcs), "
                  "e.g. gold while optimizing a proxy."},
    )
    reward_model_path: list[str] | None = field(
        default=None, metadata={"help": "Deprecated: use --reward_funcs (takes the same paths)."}
    )
    value_model_path: str | None = field(
        default=None, metadata={"help": "Value model path (default: copy of the reward model, else the policy)."}
    )
    testbed_num_train_prompts: int = field(default=2000, metadata={"help": "Testbed: number of training prompts."})
    testbed_num_eval_prompts: int = field(default=128, metadata={"help": "Testbed: holdout prompts for evaluate (0: none)."})
    testbed_conversational: bool = field(default=False, metadata={"help": "Testbed: conversational (message) prompts."})
    testbed_seed: int = field(default=0, metadata={"help": "Testbed: seed of the prompt pool."})
    metrics_file: str = field(default="ppo_metrics.json", metadata={"help": "File under output_dir for final metrics."})


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
    from .utils import (
        load_eval_split,
        load_pairs,  # generic loader: Hub name, save_to_disk directory or data file
    )

    train = load_pairs(script_args.dataset_name, script_args.dataset_config, script_args.dataset_train_split)
    evaluation = load_eval_split(script_args.dataset_name, script_args.dataset_config, script_args.dataset_test_split)
    return train, evaluation


def main(argv=None) -> int:
    from trl import ModelConfig, get_peft_config, get_quantization_config

    from ..rewards.source import load_reward
    from ..trainers.ppo import PPOConfig, PPOTrainer
    from .utils import (
        check_reward_weights,
        deprecated_reward_flags,
        parse_args,
        require,
        resolve_model,
        resolve_model_name,
        resolve_reward_funcs,
        resume_arg,
        save_evaluate_report,
        testbed_asked,
    )

    script_args, training_args, model_args = parse_args([PPOScriptArguments, PPOConfig, ModelConfig], argv, "ppo")
    deprecated_reward_flags(script_args, "ppo", {"reward_model_path": list})
    require(script_args.reward_funcs, "--reward_funcs", "ppo", "what PPO optimizes: a reward-model path, "
            "a RewardEnsemble folder, module:function, or the testbed's gold / heuristic", own_data=False)  # fmt: skip
    testbed = testbed_asked({"--dataset_name": script_args.dataset_name})
    check_reward_weights(training_args.reward_weights, len(script_args.reward_funcs))
    resolved = resolve_reward_funcs(script_args.reward_funcs)  # paths checked before any model loads
    resolved_tracked = resolve_reward_funcs(script_args.track_reward_funcs, "--track_reward_funcs")
    script_args.value_model_path = resolve_model_name(script_args.value_model_path, "--value_model_path")
    model = resolve_model(model_args, training_args, testbed, "ppo")  # 'testbed' -> the SFT policy; model_init_kwargs
    quantization_config = get_quantization_config(model_args)
    load_kwargs = dict(training_args.model_init_kwargs or {})
    if quantization_config is not None:
        load_kwargs["quantization_config"] = quantization_config

    special = quantization_config is not None or load_kwargs.get("dtype") not in (None, "auto", "float32")

    def loaded(rewards):
        """Model paths reach the trainer as paths (it loads full RMs, adapter folders and ensembles alike), except
        when the policy's dtype / quantization must apply to them too: then they are loaded here with those."""
        return [load_reward(r, model_init_kwargs=load_kwargs) if isinstance(r, str) and special else r
                for r in rewards]  # fmt: skip

    rewards, tracked = loaded(resolved), loaded(resolved_tracked) or None
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
    save_evaluate_report(trainer, training_args.output_dir, script_args.metrics_file,
                         dataset_name=script_args.dataset_name)
    return 0
