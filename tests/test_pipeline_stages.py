"""Pipeline stages as objects: one registry entry per stage (its function, inputs, fingerprinted settings, label,
whether it is evaluated) that config validation, resume, evaluation and the report read. A toy stage registered in
one place is accepted by the config, runs with its inputs' results, is fingerprinted and re-run on a changed
setting, and joins the evaluation table with its label."""

import json

import pytest
from test_pipeline import micro_config

from trl_extras.pipeline.stages import (
    PIPELINE_STAGES,
    Context,
    evaluated_models,
    method_label,
    run_pipeline,
    stage_inputs,
    stage_settings,
    stage_summary,
)

TOY_CALLS = []


def _toy_stage(ctx: Context) -> dict:
    """Reads its input's (the SFT stage's) result, writes into its own directory."""
    out = ctx.stage_dir("toy")
    (out / "model").mkdir(exist_ok=True)
    TOY_CALLS.append(ctx.results["sft"]["model"])
    return {"model": str(out / "model"), "read": ctx.results["sft"]["model"], "beta": ctx.config.dpo_beta}


@pytest.fixture
def toy_stage():
    """The toy stage, registered like a built-in one (a decorator on its function) and removed after the test."""
    TOY_CALLS.clear()
    PIPELINE_STAGES.register(
        "toy", inputs=("sft",), settings=("seed", "dpo_beta"), evaluated=True,
        label=lambda cfg: f"toy (β={cfg.dpo_beta:g})", summary=lambda result: f"read {result['read']}",
    )(_toy_stage)
    yield PIPELINE_STAGES.get("toy")
    PIPELINE_STAGES.unregister("toy")


def _finished_sft(tmp_path, config):
    """A finished SFT stage on disk (result + manifest), as a previous run leaves it: the toy's input."""
    from trl_extras.utils.resume import write_manifest

    stage = tmp_path / "pipe" / "sft"
    stage.mkdir(parents=True)
    settings = stage_settings(Context(config=config, data={}), "sft")
    (stage / "result.json").write_text(json.dumps({"model": "sft/model", "base_model": "base", "settings": settings}))
    write_manifest(stage, "pipeline_stage")


def test_the_registry_is_the_pipeline():
    """Everything the six tables held is on the stage entries, in pipeline order."""
    assert tuple(PIPELINE_STAGES) == ("sft", "reward", "ensemble", "cem", "ppo_single", "ppo", "ppo_refresh", "dpo",
                                      "evaluate")
    from trl_extras.pipeline.config import PipelineConfig

    assert PipelineConfig(use_cpu=True).stages == list(PIPELINE_STAGES)
    assert PIPELINE_STAGES.names(evaluated=True) == ("sft", "cem", "ppo_single", "ppo", "ppo_refresh", "dpo")
    assert stage_inputs("cem") == ("sft", "ensemble")
    assert stage_inputs("evaluate") == ("sft", "reward", "ensemble", "cem", "ppo_single", "ppo", "ppo_refresh", "dpo")
    assert PIPELINE_STAGES.get("cem").fn.__name__ == "stage_cem"


def test_config_accepts_a_registered_stage(toy_stage, tmp_path):
    config = micro_config(tmp_path, stages=["sft", "toy"])
    assert config.stages == ["sft", "toy"]
    assert "toy" in micro_config(tmp_path).stages  # the default is every registered stage
    PIPELINE_STAGES.unregister("toy")
    with pytest.raises(ValueError, match=r"Unknown stages \['toy'\]"):
        micro_config(tmp_path, stages=["sft", "toy"])


def test_toy_stage_runs_with_its_inputs_and_is_fingerprinted(toy_stage, tmp_path):
    config = micro_config(tmp_path, stages=["sft", "toy"])
    _finished_sft(tmp_path, config)
    ctx = run_pipeline(config, progress=False)
    assert TOY_CALLS == ["sft/model"]  # ran once, with the SFT stage's result available
    result = json.loads((tmp_path / "pipe" / "toy" / "result.json").read_text())
    assert result["read"] == "sft/model" and ctx.results["toy"]["read"] == "sft/model"
    # its fingerprint: its settings and the fingerprint of the stage it reads
    assert {"seed", "dpo_beta", "sft_stage"} <= set(result["settings"])
    assert "num_eval_prompts" not in result["settings"]  # not one of its settings
    assert stage_summary("toy", result) == ": read sft/model"

    run_pipeline(config, progress=False)  # same settings: finished, skipped
    assert TOY_CALLS == ["sft/model"]
    changed = micro_config(tmp_path, stages=["sft", "toy"], dpo_beta=0.5)
    with pytest.raises(ValueError, match=r"Stage 'toy'.*dpo_beta: 0.1 -> 0.5.*--overwrite"):
        run_pipeline(changed, progress=False)  # a changed setting is never silently reused
    assert TOY_CALLS == ["sft/model"]
    run_pipeline(micro_config(tmp_path, stages=["toy"], dpo_beta=0.5, overwrite=True), progress=False)
    assert TOY_CALLS == ["sft/model", "sft/model"]  # re-run under the new setting
    assert json.loads((tmp_path / "pipe" / "toy" / "result.json").read_text())["beta"] == 0.5


def test_a_flagged_stage_joins_the_evaluation_with_its_label(toy_stage, tmp_path):
    config = micro_config(tmp_path)
    ctx = Context(config=config, data={}, results={
        "sft": {"model": "sft/model", "base_model": "base", "settings": {"a": 1}},
        "cem": {"model": "cem/model", "settings": {"b": 2}},
        "toy": {"model": "toy/model", "settings": {"c": 3}},
    })
    assert evaluated_models(ctx) == {"pretrained": "base", "sft": "sft/model", "cem": "cem/model",
                                     "toy": "toy/model"}
    assert method_label("toy", config) == "toy (β=0.1)"
    assert method_label("cem", config) == "CEM (1 round, ensemble variance λ=1)"
    assert method_label("pretrained", config) == "pretrained"
    # the evaluate stage reads it: re-running the toy stage makes the evaluation stale
    assert "toy" in stage_inputs("evaluate") and "toy_stage" in stage_settings(ctx, "evaluate")
    PIPELINE_STAGES.unregister("toy")
    assert "toy" not in evaluated_models(ctx) and "toy_stage" not in stage_settings(ctx, "evaluate")
