"""``trl-extras reward-ensemble``: train K reward models (or K LoRA adapters on one base) as a RewardEnsemble.

    trl-extras reward-ensemble --config recipes/reward_ensemble.yaml                         # testbed, tiny models
    trl-extras reward-ensemble --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \\
        --dataset_name trl-lib/ultrafeedback_binarized --use_peft --lora_task_type SEQ_CLS \\
        --lora_last_layers 4 --load_in_4bit --k 4 --output_dir out/rm-ensemble

Members differ by seed (head init, data order) and optionally by bootstrap resampling. ``--use_peft`` trains
K LoRA adapters on one frozen base (``--lora_last_layers m`` restricts them to the last m layers, which makes
scoring run the trunk once); otherwise K full checkpoints. The output directory holds an ``ensemble_manifest.json``
and loads with ``RewardEnsemble.from_pretrained(output_dir)``; it is a GRPO/RLOO reward function as is.

``dataset_name`` takes ``testbed`` (default: the sort-the-digits pairs, dirty + clean unless
``--testbed_include_dirty false``), a Hub name, a ``save_to_disk`` directory or a data file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .reward_two_stage import TESTBED, RewardScriptArguments, testbed_datasets, train_and_eval_datasets
from .utils import resolve_model


@dataclass
class EnsembleScriptArguments(RewardScriptArguments):
    k: int = field(default=4, metadata={"help": "Number of ensemble members (>= 2)."})
    seeds: list[int] | None = field(
        default=None, metadata={"help": "One seed per member (default: the training seed + 0..k-1)."}
    )
    bootstrap: bool = field(
        default=False, metadata={"help": "Train each member on its own bootstrap resample of the pairs."}
    )
    lora_last_layers: int | None = field(
        default=None,
        metadata={"help": "With --use_peft: adapters on the last m decoder layers only (enables trunk-once scoring)."},
    )
    penalty: str = field(
        default="variance",
        metadata={"help": "Ensemble reward: variance (mean - coef*var, UWO), std, min (WCO) or mean."},
    )
    coef: float = field(
        default=0.1, metadata={"help": "Penalty weight λ (Coste et al.: 0.5 for best-of-n, 0.1 for PPO)."}
    )
    calibration_size: int = field(
        default=512,
        metadata={
            "help": "Standardize members on the chosen+rejected completions of this many training pairs (0: off)."
        },
    )
    testbed_include_dirty: bool = field(
        default=True, metadata={"help": "Testbed: train on dirty + clean pairs (else clean only)."}
    )


def ensemble_datasets(script_args: EnsembleScriptArguments):
    """(train, eval) preference datasets: the testbed's (dirty +) clean pairs, or loaded by name."""
    if (script_args.dataset_name or TESTBED) == TESTBED:
        from datasets import concatenate_datasets

        data = testbed_datasets(script_args)
        columns = ["id", "prompt", "chosen", "rejected"]
        train = data["clean"].select_columns(columns)
        if script_args.testbed_include_dirty:
            train = concatenate_datasets([data["dirty"].select_columns(columns), train]).shuffle(
                seed=script_args.testbed_seed
            )
        return train, data["eval"]
    return train_and_eval_datasets(script_args)


def evaluate_ensemble(ensemble, dataset) -> dict:
    """Pairwise accuracy of each member, of the ensemble mean and of the penalized reward on ``dataset``."""
    import torch

    from ..rewards.metrics import pairwise_accuracy

    if dataset is None or len(dataset) == 0:
        return {}
    prompts = list(dataset["prompt"]) if "prompt" in dataset.column_names else None
    if prompts is None:
        empty = [] if isinstance(dataset[0]["chosen"], list) else ""
        prompts = [empty] * len(dataset)
    chosen = ensemble.score(prompts, list(dataset["chosen"]))
    rejected = ensemble.score(prompts, list(dataset["rejected"]))
    member_margins = chosen.members - rejected.members
    penalized = chosen.penalized(ensemble.penalty, ensemble.coef) - rejected.penalized(ensemble.penalty, ensemble.coef)
    return {
        "member_accuracy": [pairwise_accuracy(m) for m in member_margins],
        "mean_accuracy": pairwise_accuracy(chosen.mean - rejected.mean),
        "penalized_accuracy": pairwise_accuracy(penalized),
        "mean_member_std": float(torch.cat([chosen.std, rejected.std]).mean()),
    }


def main(argv=None) -> int:
    from trl import ModelConfig, RewardConfig, get_peft_config, get_quantization_config

    from ..rewards.ensemble import train_reward_ensemble
    from .utils import parse_args, report_metrics, testbed_asked

    script_args, training_args, model_args = parse_args(
        [EnsembleScriptArguments, RewardConfig, ModelConfig], argv, "reward-ensemble"
    )
    testbed = testbed_asked({"--dataset_name": script_args.dataset_name})
    model = resolve_model(model_args, training_args, testbed, "reward-ensemble")
    train, evaluation = ensemble_datasets(script_args)
    ensemble = train_reward_ensemble(
        model,
        train,
        training_args,
        k=script_args.k,
        peft_config=get_peft_config(model_args),
        bootstrap=script_args.bootstrap,
        seeds=script_args.seeds,
        output_dir=training_args.output_dir,
        lora_last_layers=script_args.lora_last_layers,
        calibration_size=script_args.calibration_size or None,
        penalty=script_args.penalty,
        coef=script_args.coef,
        quantization_config=get_quantization_config(model_args),
    )
    import os

    metrics = {"ensemble": repr(ensemble), "eval": evaluate_ensemble(ensemble, evaluation)}
    ev = metrics["eval"]
    lines = []
    if ev:
        lines.append(f"Final: eval accuracy of the penalized reward {ev['penalized_accuracy']:.4g}, of the mean "
                     f"{ev['mean_accuracy']:.4g}, members {', '.join(f'{a:.3g}' for a in ev['member_accuracy'])} "
                     f"(on {len(evaluation)} pairs)")  # fmt: skip
    lines += [f"Ensemble saved to {training_args.output_dir} (load with RewardEnsemble.from_pretrained)",
              f"Metrics saved to {os.path.join(training_args.output_dir, script_args.metrics_file)}"]  # fmt: skip
    report_metrics(metrics, training_args.output_dir, script_args.metrics_file, summary=lines)
    return 0
