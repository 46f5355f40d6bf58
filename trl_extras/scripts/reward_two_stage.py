"""``trl-extras reward-two-stage``: train a reward model on many cheap, noisy (dirty) pairs first (stage 1), then
continue on the clean pairs (stage 2), the article's recipe. ``dataset_name`` (the clean pairs) and
``pretrain_dataset_name`` (the dirty pairs) take ``testbed`` (the built-in sort-the-digits pairs), a Hub dataset
name, a directory saved with ``Dataset.save_to_disk``, or a ``.json``/``.jsonl``/``.parquet``/``.csv`` file; with your
own ``dataset_name`` both ``pretrain_dataset_name`` and ``model_name_or_path`` are required (the testbed fills them
in only for a testbed run). ``model_name_or_path`` ``testbed`` (or unset on the testbed) initialises the reward
model from the testbed SFT policy with a new score head; ``testbed:smollm2`` is SmolLM2-135M-Instruct offline.

examples:
  trl-extras reward-two-stage --config recipes/reward_two_stage.yaml                      # testbed, tiny models
  trl-extras reward-two-stage --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \\
      --pretrain_dataset_name my-org/dirty-pairs --dataset_name trl-lib/ultrafeedback_binarized \\
      --use_peft --lora_task_type SEQ_CLS --load_in_4bit --output_dir out/rm-two-stage
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import ScriptArguments

from .utils import load_pairs, resolve_model, resume_arg  # noqa: F401  (shared with the other commands)

TESTBED = "testbed"


@dataclass
class RewardScriptArguments(ScriptArguments):
    """Dataset selection shared by the reward subcommands (TRL's ``ScriptArguments`` plus the testbed's sizes)."""

    testbed_clean_pairs: int = field(default=300, metadata={"help": "Testbed: clean (gold-labelled) training pairs."})
    testbed_dirty_pairs: int = field(default=3000, metadata={"help": "Testbed: dirty (heuristic) pretraining pairs."})
    testbed_eval_pairs: int = field(default=200, metadata={"help": "Testbed: clean evaluation pairs (0: none)."})
    testbed_flip_rate: float = field(default=0.1, metadata={"help": "Testbed: label flip rate of the clean pairs."})
    testbed_conversational: bool = field(default=False, metadata={"help": "Testbed: conversational (message) form."})
    testbed_seed: int = field(default=0, metadata={"help": "Testbed: seed of the task and of the pair generators."})
    metrics_file: str = field(
        default="reward_metrics.json", metadata={"help": "File under output_dir for the final metrics (JSON)."}
    )


@dataclass
class TwoStageScriptArguments(RewardScriptArguments):
    pretrain_dataset_name: str | None = field(
        default=None,
        metadata={"help": "Stage-1 (dirty) pairs: 'testbed', a Hub name, a directory or a file. Unset: the testbed's "
                  "dirty pairs when dataset_name is the testbed; required with your own dataset_name."},
    )
    pretrain_dataset_config: str | None = field(default=None, metadata={"help": "Config name of the stage-1 dataset."})
    pretrain_dataset_split: str = field(default="train", metadata={"help": "Split of the stage-1 dataset."})


def testbed_datasets(script_args: RewardScriptArguments) -> dict:
    """The testbed's dirty, clean and clean-eval pairs (disjoint generator seeds)."""
    from ..testbed import TestbedConfig, clean_pairs, dirty_pairs

    task = TestbedConfig(seed=script_args.testbed_seed)
    conv = script_args.testbed_conversational
    s = script_args.testbed_seed
    out = {
        "dirty": dirty_pairs(script_args.testbed_dirty_pairs, config=task, conversational=conv, seed=1000 + s),
        "clean": clean_pairs(
            script_args.testbed_clean_pairs,
            flip_rate=script_args.testbed_flip_rate,
            config=task,
            conversational=conv,
            seed=2000 + s,
        ),
        "eval": None,
    }
    if script_args.testbed_eval_pairs > 0:
        # Evaluation labels are gold (flip_rate 0): accuracy is agreement with the true preference.
        out["eval"] = clean_pairs(
            script_args.testbed_eval_pairs, flip_rate=0.0, config=task, conversational=conv, seed=3000 + s
        )
    return out


def train_and_eval_datasets(script_args: RewardScriptArguments):
    if (script_args.dataset_name or TESTBED) == TESTBED:
        data = testbed_datasets(script_args)
        return data["clean"], data["eval"]
    from ..rewards.pairs import validate_preference_dataset
    from .utils import load_eval_split, load_preference_split

    name, config = script_args.dataset_name, script_args.dataset_config
    train = load_preference_split(name, config, script_args.dataset_train_split)
    evaluation = load_eval_split(name, config, script_args.dataset_test_split)
    validate_preference_dataset(evaluation, f"--dataset_name {name!r} (split {script_args.dataset_test_split!r})")
    return train, evaluation


def finish(trainer, script_args, training_args, extra: dict) -> dict:
    """Save the model and tokenizer (and its model card, naming ``--dataset_name``), write and print the final
    metrics."""
    from .utils import save_evaluate_report

    return save_evaluate_report(trainer, training_args.output_dir, script_args.metrics_file, extra,
                                dataset_name=getattr(script_args, "dataset_name", None))  # prints where it went


def main(argv=None) -> int:
    from trl import ModelConfig, get_peft_config, get_quantization_config

    from ..rewards.two_stage import TwoStageRewardConfig, TwoStageRewardTrainer
    from .utils import parse_args, require, testbed_asked

    script_args, training_args, model_args = parse_args(
        [TwoStageScriptArguments, TwoStageRewardConfig, ModelConfig], argv, "reward-two-stage"
    )
    testbed = testbed_asked({"--dataset_name": script_args.dataset_name})
    train, evaluation = train_and_eval_datasets(script_args)  # the user's pairs are checked first
    if not testbed:  # the user's clean pairs: stage 1 on 3000 testbed digit-sorting pairs would be a wrong result
        require(script_args.pretrain_dataset_name, "--pretrain_dataset_name", "reward-two-stage",
                "the stage-1 (dirty) pairs; 'testbed' for the testbed's")
    if (script_args.pretrain_dataset_name or TESTBED) == TESTBED:
        pretrain = testbed_datasets(script_args)["dirty"]
    else:
        pretrain = load_pairs(
            script_args.pretrain_dataset_name, script_args.pretrain_dataset_config, script_args.pretrain_dataset_split
        )
    trainer = TwoStageRewardTrainer(
        model=resolve_model(model_args, training_args, testbed, "reward-two-stage"),
        args=training_args,
        pretrain_dataset=pretrain,
        train_dataset=train,
        eval_dataset=evaluation,
        peft_config=get_peft_config(model_args),
        quantization_config=get_quantization_config(model_args),
    )
    trainer.train(resume_from_checkpoint=resume_arg(training_args.resume_from_checkpoint))
    finish(trainer, script_args, training_args, {"stage_metrics": trainer.stage_metrics})
    return 0
