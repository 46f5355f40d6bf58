"""``trl-extras grpo-exact-kl``: TRL's GRPO with an exact full-vocabulary KL penalty to the reference model in the
loss (instead of GRPO's sampled k3 estimate; keep ``beta: 0``). ``--reward_funcs`` takes reward-model paths, LoRA
adapter folders, RewardEnsemble folders, ``module:function`` import paths and the testbed's ``gold`` /
``heuristic``, weighted by GRPO's ``--reward_weights``. Without ``--dataset_name`` (or with ``testbed``) it runs on
the built-in testbed: the cached SFT policy and the testbed's train prompts, optimizing ``gold`` unless
``--reward_funcs`` says otherwise; with your own prompts ``--reward_funcs`` and ``--model_name_or_path`` are required.

examples:
  trl-extras grpo-exact-kl --config recipes/grpo_exact_kl_testbed.yaml
  trl-extras grpo-exact-kl --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --dataset_name prompts.jsonl \\
      --reward_funcs out/rm --output_dir out/grpo_exact_kl --exact_kl_coef 0.05 --use_peft --load_in_4bit

Deprecated: ``--reward_model``, ``--reward`` (use ``--reward_funcs``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .utils import REWARD_FUNCS_HELP


@dataclass
class ExactKLGRPOScriptArguments:
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Prompts: a JSON/JSONL file, a `save_to_disk` directory or a hub dataset with a 'prompt' column. "
            "Default: the testbed's train prompts."
        },
    )
    dataset_split: str = field(default="train", metadata={"help": "Split of `dataset_name`."})
    reward_funcs: list[str] | None = field(default=None, metadata={"help": REWARD_FUNCS_HELP})
    reward_model: str | None = field(default=None, metadata={"help": "Deprecated: use --reward_funcs PATH."})
    reward: str | None = field(default=None, metadata={"help": "Deprecated: use --reward_funcs gold|heuristic."})
    num_train_prompts: int | None = field(
        default=None, metadata={"help": "Use only the first N prompts of the dataset (quick runs)."}
    )


def _load(name: str, split: str = "train"):
    from .utils import load_dataset_from_spec

    return load_dataset_from_spec(name, split=split)


def build_trainer(script_args: ExactKLGRPOScriptArguments, args, model_args):
    """An :class:`ExactKLGRPOTrainer` from parsed arguments, testbed defaults filled in only for a testbed run."""
    from trl import get_peft_config, get_quantization_config

    from ..testbed import prompt_dataset
    from ..trainers.exact_kl_grpo import ExactKLGRPOTrainer
    from .utils import (
        check_reward_weights,
        deprecated_reward_flags,
        require,
        resolve_model_name,
        resolve_reward_funcs,
        testbed_asked,
        testbed_reward_name,
    )

    deprecated_reward_flags(script_args, "grpo-exact-kl", {"reward_model": lambda v: [v], "reward": testbed_reward_name("--reward")})
    testbed = testbed_asked({"--dataset_name": script_args.dataset_name})
    if not testbed:
        require(script_args.reward_funcs, "--reward_funcs", "grpo-exact-kl", "what GRPO optimizes: a reward-model "
                "path, a RewardEnsemble folder, module:function, or the testbed's gold / heuristic")  # fmt: skip
        require(model_args.model_name_or_path, "--model_name_or_path", "grpo-exact-kl", "the policy to train")
    on_testbed_data = (script_args.dataset_name or "testbed") == "testbed"
    train = prompt_dataset("train") if on_testbed_data else _load(script_args.dataset_name, script_args.dataset_split)
    if "prompt" not in train.column_names:
        raise ValueError(f"The dataset needs a 'prompt' column; it has {train.column_names}.")
    if script_args.num_train_prompts:
        train = train.select(range(min(script_args.num_train_prompts, len(train))))
    specs = script_args.reward_funcs or ["gold"]  # the testbed's documented default
    check_reward_weights(args.reward_weights, len(specs))
    # model paths reach the trainer as paths: the reward contract loads them (full, adapter folder, ensemble folder)
    # and scores them as RewardTrainer trained them (chat template, truncation) rather than by GRPO's loader
    rewards = resolve_reward_funcs(specs)
    reward = rewards if len(rewards) > 1 else rewards[0]
    model = resolve_model_name(model_args.model_name_or_path or "testbed", "--model_name_or_path")
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None or model_args.dtype not in (None, "auto"):
        args.model_init_kwargs = {
            **(args.model_init_kwargs or {}),
            **({"quantization_config": quantization_config} if quantization_config is not None else {}),
            **({"dtype": model_args.dtype} if model_args.dtype not in (None, "auto") else {}),
        }
    return ExactKLGRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=args,
        train_dataset=train,
        peft_config=get_peft_config(model_args),
    )


def main(argv: list[str] | None = None) -> int:
    from trl import ModelConfig

    from ..trainers.exact_kl_grpo import ExactKLGRPOConfig
    from ..utils.progress import print_main
    from .utils import parse_args, save_evaluate_report

    script_args, args, model_args = parse_args(
        (ExactKLGRPOScriptArguments, ExactKLGRPOConfig, ModelConfig), argv, "grpo-exact-kl"
    )
    trainer = build_trainer(script_args, args, model_args)
    trainer.train()
    kl = [h["exact_kl"] for h in trainer.state.log_history if "exact_kl" in h]
    if kl:
        print_main(f"exact KL to the reference: first {kl[0]:.4f}, last {kl[-1]:.4f} (mean per token)")
    save_evaluate_report(trainer, args.output_dir, "grpo_metrics.json", dataset_name=script_args.dataset_name)
    return 0
