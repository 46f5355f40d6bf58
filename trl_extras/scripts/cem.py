"""``trl-extras cem``: the cross-entropy method ("poor man's RL") with diversity control.

    trl-extras cem --config recipes/cem_testbed.yaml
    trl-extras cem --model_name_or_path out/sft --dataset_name prompts.jsonl --reward_model out/rm \\
        --output_dir out/cem --num_rounds 3 --num_generations 8 --sft_mix_ratio 0.5 --kl_coef 0.1

Without ``--model_name_or_path`` / ``--dataset_name`` it runs on the built-in testbed: the cached SFT policy,
testbed train prompts, the biased heuristic labeller as the optimized reward (or ``--reward gold``), and the gold
reward tracked on every round. Re-running the same command resumes at the round where it stopped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass
class CEMScriptArguments:
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Prompts: a JSON/JSONL file, a `save_to_disk` directory or a hub dataset with a 'prompt' "
                  "column. Default: the testbed's train prompts."},
    )
    dataset_split: str = field(default="train", metadata={"help": "Split of `dataset_name`."})
    eval_dataset_name: str | None = field(
        default=None, metadata={"help": "Holdout prompts evaluated after each round. Default (testbed): holdout."}
    )
    num_eval_prompts: int = field(default=128, metadata={"help": "Eval prompts used (the first ones)."})
    sft_dataset_name: str | None = field(
        default=None, metadata={"help": "Prompt/completion rows replayed when sft_mix_ratio > 0. Default: testbed SFT."}
    )
    reward_model: str | None = field(
        default=None, metadata={"help": "Path of a reward model (or RewardEnsemble directory) to optimize."}
    )
    reward: str = field(
        default="heuristic",
        metadata={"help": "Testbed reward when no --reward_model: 'heuristic' (the biased proxy) or 'gold'."},
    )
    reward_ensemble: bool = field(
        default=False, metadata={"help": "Load --reward_model with RewardEnsemble.from_pretrained (penalized)."}
    )
    track_gold: bool = field(default=True, metadata={"help": "Testbed: also score every sample with the gold reward."})


def _load(name: str, split: str = "train"):
    from .utils import load_dataset_from_spec

    return load_dataset_from_spec(name, split=split)


def build_trainer(script_args: CEMScriptArguments, cem_args, model_args):
    """A :class:`CEMTrainer` from parsed arguments, testbed defaults filled in."""
    from trl import get_peft_config

    from ..testbed import TestbedConfig, build_sft_policy, gold_reward_fn, heuristic_reward_fn, prompt_dataset
    from ..testbed import sft_dataset as testbed_sft
    from ..trainers.cem import CEMTrainer
    from ..utils.validation import check_model_path

    check_model_path(model_args.model_name_or_path, "--model_name_or_path")
    check_model_path(script_args.reward_model, "--reward_model")
    testbed = script_args.dataset_name is None
    model = model_args.model_name_or_path or build_sft_policy()
    train = _load(script_args.dataset_name, script_args.dataset_split) if not testbed else prompt_dataset("train")
    if script_args.eval_dataset_name:
        eval_ = _load(script_args.eval_dataset_name)
    else:
        eval_ = prompt_dataset("holdout", TestbedConfig()) if testbed else None
    if eval_ is not None:
        eval_ = eval_.select(range(min(script_args.num_eval_prompts, len(eval_))))
    sft = None
    if cem_args.sft_mix_ratio > 0:
        sft = _load(script_args.sft_dataset_name) if script_args.sft_dataset_name else (testbed_sft(4000) if testbed
                                                                                        else None)
    if script_args.reward_model:
        if script_args.reward_ensemble:
            from ..rewards.ensemble import RewardEnsemble

            reward = RewardEnsemble.from_pretrained(script_args.reward_model)
        else:
            reward = script_args.reward_model
    elif testbed or script_args.reward in ("heuristic", "gold"):
        if script_args.reward not in ("heuristic", "gold"):
            raise ValueError(f"--reward must be 'heuristic' or 'gold', got {script_args.reward!r}")
        reward = heuristic_reward_fn if script_args.reward == "heuristic" else gold_reward_fn
    else:
        raise ValueError("Pass --reward_model for a non-testbed dataset.")
    eval_rewards = gold_reward_fn if (testbed and script_args.track_gold) else None
    return CEMTrainer(model, reward, cem_args, train_dataset=train, eval_dataset=eval_, sft_dataset=sft,
                      peft_config=get_peft_config(model_args), eval_reward_funcs=eval_rewards)


def main(argv: list[str] | None = None) -> int:
    from trl import ModelConfig

    from ..trainers.cem import CEMConfig
    from ..utils.progress import print_main
    from .utils import parse_args

    script_args, cem_args, model_args = parse_args((CEMScriptArguments, CEMConfig, ModelConfig), argv, "cem")
    trainer = build_trainer(script_args, cem_args, model_args)
    history = trainer.train()
    trainer.save_model(cem_args.output_dir)
    trainer.create_model_card(dataset_name=script_args.dataset_name)  # like TRL's scripts: the dataset on the card
    if cem_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    keys = ("round", "reward_mean", "elite_reward_mean", "gold_mean", "entropy", "distinct_2", "eval_reward_mean",
            "eval_gold_mean", "stopped")
    for h in history:
        print_main(json.dumps({k: h[k] for k in keys if k in h}))  # once, not once per process
    print_main(f"History: {cem_args.output_dir}/cem_history.json, plot: {cem_args.output_dir}/cem_history.png")
    return 0
