"""``trl-extras pipeline``: the whole alignment pipeline from a recipe, stage by stage (SFT with reward early
stopping → two-stage reward model → reward ensemble → CEM → PPO → DPO on synthetic pairs → side-by-side
evaluation), resumable: a stage with a ``result.json`` is skipped on the next run. Datasets are ``testbed`` or your
own (a Hub id, a folder or a data file, ``name[:split]``). The testbed's policy and rewards stand in only on a testbed
run (no dataset of your own): with your own data name every dataset (yours or ``testbed``), set ``policy_model`` (or ``--model_name_or_path``; ``testbed:smollm2``
is SmolLM2-135M-Instruct offline) and ``sft_reward`` (a reward-model path, ``module:function``, or null for
eval_loss); ``gold_reward`` (measuring only) takes ``gold`` / ``heuristic``, ``module:function`` or a path.

examples:
  trl-extras pipeline --config recipes/pipeline_testbed.yaml
  trl-extras pipeline --config recipes/pipeline_smollm2.yaml --output_dir out/smollm2
  trl-extras pipeline --config recipes/pipeline_real.yaml --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct
"""

from __future__ import annotations

import os
from pathlib import Path


def run_and_report(config, model_args=None, title: str = "trl-extras pipeline report") -> Path:
    from ..pipeline.report import table_lines, write_report
    from ..pipeline.stages import run_pipeline

    ctx = run_pipeline(config, model_args=model_args)
    report = write_report(ctx.results, Path(config.output_dir) / "report", title=title)
    table = ctx.results.get("evaluate", {}).get("table")
    if table:
        print()
        print("\n".join(table_lines(table)))
    print(f"\nReport: {report}")
    return report


def main(argv=None) -> int:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl import ModelConfig

    from ..pipeline.config import PipelineConfig
    from .utils import parse_args

    config, model_args = parse_args([PipelineConfig, ModelConfig], argv, "pipeline")
    if model_args.model_name_or_path and not config.policy_model:
        config.policy_model = model_args.model_name_or_path
    run_and_report(config, model_args)
    return 0
