"""``trl-extras grpo-exact-kl``: TRL's GRPO with the exact full-vocabulary KL penalty.

    trl-extras grpo-exact-kl --config recipes/grpo_exact_kl_testbed.yaml
    trl-extras grpo-exact-kl --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --dataset_name prompts.jsonl \\
        --reward_model out/rm --output_dir out/grpo_exact_kl --exact_kl_coef 0.05 --use_peft --load_in_4bit

Without ``--model_name_or_path`` / ``--dataset_name`` it runs on the built-in testbed: the cached SFT policy and
the testbed's train prompts, optimizing the gold reward (``--reward gold``) or the biased heuristic proxy.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
    reward_model: str | None = field(
        default=None,
        metadata={"help": "Path of a reward model (sequence classification, num_labels=1) to optimize."},
    )
    reward: str = field(
        default="gold",
        metadata={"help": "Testbed reward when no --reward_model: 'gold' or 'heuristic' (the biased proxy)."},
    )
    num_train_prompts: int | None = field(
        default=None, metadata={"help": "Use only the first N prompts of the dataset (quick runs)."}
    )


def _load(name: str, split: str = "train"):
    from .utils import load_dataset_from_spec

    return load_dataset_from_spec(name, split=split)


def build_trainer(script_args: ExactKLGRPOScriptArguments, args, model_args):
    """An :class:`ExactKLGRPOTrainer` from parsed arguments, testbed defaults filled in."""
    from trl import get_peft_config, get_quantization_config

    from ..testbed import build_sft_policy, gold_reward_fn, heuristic_reward_fn, prompt_dataset
    from ..trainers.exact_kl_grpo import ExactKLGRPOTrainer

    testbed = script_args.dataset_name is None
    train = prompt_dataset("train") if testbed else _load(script_args.dataset_name, script_args.dataset_split)
    if "prompt" not in train.column_names:
        raise ValueError(f"The dataset needs a 'prompt' column; it has {train.column_names}.")
    if script_args.num_train_prompts:
        train = train.select(range(min(script_args.num_train_prompts, len(train))))
    if script_args.reward_model:
        from ..rewards.scoring import RewardModelScorer

        reward = RewardModelScorer(script_args.reward_model)  # tokenized like RewardTrainer trained it
    elif testbed:
        if script_args.reward not in ("gold", "heuristic"):
            raise ValueError(f"--reward must be 'gold' or 'heuristic', got {script_args.reward!r}.")
        reward = gold_reward_fn if script_args.reward == "gold" else heuristic_reward_fn
    else:
        raise ValueError("Pass --reward_model for a dataset other than the testbed's.")
    model = model_args.model_name_or_path or build_sft_policy()
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
    from .model_card import write_model_card
    from .utils import parse_args

    script_args, args, model_args = parse_args(
        (ExactKLGRPOScriptArguments, ExactKLGRPOConfig, ModelConfig), argv, "grpo-exact-kl"
    )
    trainer = build_trainer(script_args, args, model_args)
    trainer.train()
    trainer.save_model(args.output_dir)
    write_model_card(trainer, args, script_args.dataset_name)
    kl = [h["exact_kl"] for h in trainer.state.log_history if "exact_kl" in h]
    if kl:
        print_main(f"exact KL to the reference: first {kl[0]:.4f}, last {kl[-1]:.4f} (mean per token)")
    print_main(f"Saved to {args.output_dir}")  # once, not once per process
    return 0
