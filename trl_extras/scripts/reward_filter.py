"""``trl-extras reward-filter``: train a reward model on all pairs, drop the easiest (and most suspect) pairs, train a
fresh reward model on the rest.

    trl-extras reward-filter --config recipes/reward_filtering.yaml                          # testbed, tiny models
    trl-extras reward-filter --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \\
        --dataset_name trl-lib/ultrafeedback_binarized --drop_easiest 0.2 --drop_suspect 0.05 \\
        --use_peft --lora_task_type SEQ_CLS --output_dir out/rm-filtered

Writes the final model to ``output_dir``, the scoring run to ``output_dir/scoring``, the filter report (counts,
margin quantiles, dropped ids) to ``output_dir/filter_report.json`` and the kept pairs to
``output_dir/filtered_pairs.jsonl``. Dataset and model arguments as in ``reward-two-stage`` (``testbed`` uses the
built-in clean pairs).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from .reward_two_stage import RewardScriptArguments, finish, train_and_eval_datasets
from .utils import resolve_model


@dataclass
class FilterArguments(RewardScriptArguments):
    drop_easiest: float = field(default=0.2, metadata={"help": "Fraction of pairs with the largest margins to drop."})
    drop_suspect: float = field(
        default=0.0, metadata={"help": "Fraction of pairs with the most negative margins (likely noise) to drop."}
    )
    min_keep: int = field(default=16, metadata={"help": "Refuse when fewer pairs would remain."})
    scoring_batch_size: int = field(default=64, metadata={"help": "Sequences per forward pass when scoring pairs."})
    id_column: str = field(default="id", metadata={"help": "Stable pair id column (created when absent)."})


def main(argv=None) -> int:
    from trl import ModelConfig, RewardConfig, get_peft_config, get_quantization_config

    from ..rewards.filtering import train_with_easy_pair_filtering
    from .utils import parse_args, testbed_asked

    script_args, training_args, model_args = parse_args(
        [FilterArguments, RewardConfig, ModelConfig], argv, "reward-filter"
    )
    testbed = testbed_asked({"--dataset_name": script_args.dataset_name})
    model = resolve_model(model_args, training_args, testbed, "reward-filter")
    train, evaluation = train_and_eval_datasets(script_args)
    result = train_with_easy_pair_filtering(
        model,
        train,
        args=training_args,
        eval_dataset=evaluation,
        drop_easiest=script_args.drop_easiest,
        drop_suspect=script_args.drop_suspect,
        min_keep=script_args.min_keep,
        scoring_batch_size=script_args.scoring_batch_size,
        id_column=script_args.id_column,
        peft_config=get_peft_config(model_args),
        quantization_config=get_quantization_config(model_args),
    )
    report = result.report.to_dict()
    if result.trainer.args.should_save:
        os.makedirs(training_args.output_dir, exist_ok=True)
        with open(os.path.join(training_args.output_dir, "filter_report.json"), "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
        from ..utils.atomic import atomic_writer

        atomic_writer(os.path.join(training_args.output_dir, "filtered_pairs.jsonl"), result.filtered_dataset.to_json)
    summary = {k: v for k, v in report.items() if not k.startswith("dropped_")}
    extra = {"filter": summary}
    if evaluation is not None:
        extra["scoring_model_eval"] = result.scoring_trainer.evaluate()
    finish(result.trainer, script_args, training_args, extra)
    return 0
