"""``trl-extras pipeline --config recipes/pipeline_*.yaml``: the whole pipeline, stage by stage, resumable."""

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
