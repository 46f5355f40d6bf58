"""The end-to-end pipeline at micro scale: every stage runs, results and report land, finished stages resume."""

import json

import pytest

from trl_extras.pipeline.config import PipelineConfig


def micro_config(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path / "pipe"),
        num_eval_prompts=16,
        num_train_prompts=32,
        num_dirty_pairs=128,
        num_clean_pairs=64,
        num_sft_examples=96,
        max_completion_length=12,
        sft_max_steps=4,
        sft_eval_steps=2,
        ensemble_size=2,
        cem_rounds=1,
        cem_num_generations=2,
        cem_prompts_per_round=8,
        ppo_max_steps=2,
        ppo_batch_size=8,
        refresh_every=1,
        refresh_num_pairs=8,
        dpo_num_generations=2,
        dpo_max_steps=2,
        use_cpu=True,
    )
    values.update(overrides)
    return PipelineConfig(**values)


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="Unknown stages"):
        micro_config(tmp_path, stages=["sft", "magic"])
    with pytest.raises(ValueError, match="ensemble_size"):
        micro_config(tmp_path, ensemble_size=1)
    with pytest.raises(ValueError, match="ppo_trajectory_points"):
        micro_config(tmp_path, ppo_trajectory_points=-1)
    with pytest.raises(ValueError, match="policy_model"):
        micro_config(tmp_path, prompt_dataset="some/dataset").check_models()


def _assert_log_lines(captured, stages):
    """A log file's view of a run: no carriage-return progress frames, two ``[pipeline] stage X`` lines per stage
    (its start, then its end), and a bounded number of lines overall."""
    out, err = captured
    assert "\r" not in out and "\r" not in err, "progress-bar frames in a non-terminal run"
    lines = out.splitlines()
    for stage in stages:
        mine = [i for i, line in enumerate(lines) if line.startswith(f"[pipeline] stage {stage}:")]
        assert len(mine) == 2, (stage, lines)
        assert lines[mine[0]].endswith("running ...") and " done in " in lines[mine[1]], (stage, lines)
    assert len(lines) < 40 * len(stages), lines


def test_pipeline_end_to_end_and_resume(tmp_path, sft_policy_path, capsys):
    from trl_extras.pipeline.report import write_report
    from trl_extras.pipeline.stages import run_pipeline

    # the SmolLM2 recipe's knobs: no clean-only RM baseline, a short PPO trajectory
    config = micro_config(tmp_path, rm_clean_only_baseline=False, ppo_trajectory_points=1)
    ctx = run_pipeline(config)
    # not a terminal (pytest captures the streams): no tqdm frames, one line per stage
    _assert_log_lines(capsys.readouterr(), config.stages)
    for stage in config.stages:
        assert (tmp_path / "pipe" / stage / "result.json").exists(), stage
    table = {row["stage"]: row for row in ctx.results["evaluate"]["table"]}
    assert set(table) == {"pretrained", "sft", "cem", "ppo_single", "ppo", "ppo_refresh", "dpo"}
    assert table["ppo_single"]["method"] == "PPO (single RM, β=0)"
    assert table["ppo"]["method"] == "PPO (ensemble variance λ=1, β=0.2)"
    # the article's "second way": the reward ensemble was re-trained once on judge-labelled policy-vs-SFT answers
    (refresh,) = ctx.results["ppo_refresh"]["refreshes"]
    assert refresh["step"] == 1 and refresh["labels"]["labelled"] > 0
    assert (tmp_path / "pipe" / "ppo_refresh" / "run" / "reward_refresh").is_dir()
    for name, row in table.items():
        assert 0.0 <= row["gold"] <= 1.0 and row["kl_to_sft"] >= -1e-4
        assert 0.0 <= row["gold_greedy"] <= 1.0  # every model is also measured greedy
        if name != "sft":
            assert 0.0 <= row["p_value"] <= 1.0 and row["wins"] + row["losses"] + row["ties"] == 16
            assert 0.0 <= row["p_value_greedy"] <= 1.0 and row["wins_greedy"] + row["losses_greedy"] + row["ties_greedy"] == 16
    assert abs(table["sft"]["kl_to_sft"]) < 1e-4  # the SFT model against itself
    assert "clean only" not in ctx.results["reward"]["accuracies"] and "dirty only" in ctx.results["reward"]["accuracies"]
    assert [p["step"] for p in ctx.results["ppo"]["trajectory"]] == [0, 2]  # before training and every 2 // 1 steps
    for name, row in table.items():  # greedy answers scored by gold and tested against SFT's greedy answers
        assert 0.0 <= row["gold_greedy"] <= 1.0
        if name != "sft":
            assert 0.0 <= row["p_value_greedy"] <= 1.0 and row["wins_greedy"] + row["losses_greedy"] <= 16
    report = write_report(ctx.results, tmp_path / "pipe" / "report")
    text = report.read_text()
    assert "Final table" in text and "reward_vs_kl.png" in text and "greedy 95% CI" in text
    assert "greedy 95% CI" in (tmp_path / "pipe" / "report" / "table.md").read_text()
    assert (tmp_path / "pipe" / "report" / "reward_vs_kl.png").stat().st_size > 1000
    # a second run skips every finished stage and reuses their results
    capsys.readouterr()
    ctx2 = run_pipeline(config)
    assert capsys.readouterr().out.count("skipped") == len(config.stages)
    assert json.dumps(ctx2.results["evaluate"], sort_keys=True) == json.dumps(ctx.results["evaluate"], sort_keys=True)


@pytest.mark.slow
def test_pipeline_log_file_is_readable(tmp_path, sft_policy_path):
    """`trl-extras pipeline > log 2>&1`: the micro pipeline in a subprocess whose stdout and stderr go to a file."""
    import os
    import subprocess
    import sys

    values = {k: v for k, v in vars(micro_config(tmp_path)).items() if k in MICRO_FLAGS}
    argv = [sys.executable, "-m", "trl_extras.cli", "pipeline"]
    for key, value in values.items():
        argv += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    log = tmp_path / "pipeline.log"
    env = {k: v for k, v in os.environ.items() if k != "TRL_EXTRAS_PROGRESS"}
    with open(log, "w") as f:
        subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, check=True, env=env, timeout=1800)
    text = log.read_text()
    stages = micro_config(tmp_path).stages
    _assert_log_lines((text, ""), stages)
    assert "[cem] round 0 of 0..0, reward" in text and "[reward-eval] step 2:" in text and "[trajectory] step 2:" in text


MICRO_FLAGS = ("output_dir", "num_eval_prompts", "num_train_prompts", "num_dirty_pairs", "num_clean_pairs",
               "num_sft_examples", "max_completion_length", "sft_max_steps", "sft_eval_steps", "ensemble_size",
               "cem_rounds", "cem_num_generations", "cem_prompts_per_round", "ppo_max_steps", "ppo_batch_size",
               "refresh_every", "refresh_num_pairs", "dpo_num_generations", "dpo_max_steps", "use_cpu")


def test_pipeline_datasets_from_local_files(tmp_path):
    """Outside the testbed, datasets come from specs; the last 10% of the clean pairs are held out for RM tests."""
    from trl_extras.pipeline.data import pipeline_datasets
    from trl_extras.testbed import clean_pairs, prompt_dataset

    clean_pairs(50).to_json(tmp_path / "clean.jsonl")
    prompt_dataset("holdout").select(range(8)).to_json(tmp_path / "prompts.jsonl")
    config = micro_config(
        tmp_path,
        policy_model="unused-here",
        prompt_dataset=str(tmp_path / "prompts.jsonl"),
        eval_prompt_dataset=str(tmp_path / "prompts.jsonl:train"),
        clean_pairs_dataset=str(tmp_path / "clean.jsonl"),
        real_pairs_dataset=None,
        sft_dataset="testbed",  # with the user's data every dataset is named (the testbed's only when asked for)
        dirty_pairs_dataset="testbed",
    )
    data = pipeline_datasets(config)
    assert len(data["prompts"]) == 8 and data["real_pairs"] is None
    assert len(data["clean"]) == 45 and len(data["rm_test"]) == 5
    assert not set(data["clean"]["id"]) & set(data["rm_test"]["id"])
    (tmp_path / "text.jsonl").write_text('{"text": "1 2 >"}\n')
    bad = micro_config(tmp_path, policy_model="x", prompt_dataset=str(tmp_path / "text.jsonl"))
    with pytest.raises(ValueError, match="no 'prompt' column"):
        pipeline_datasets(bad)


def test_real_recipe_parses_and_sft_without_reward_selects_by_loss(tmp_path, sft_policy_path):
    """The real-model recipe parses (ModelConfig + PipelineConfig); with no early-stopping reward the SFT stage
    still runs and keeps the eval_loss-best checkpoint."""
    from pathlib import Path

    from trl import ModelConfig

    from trl_extras.pipeline.stages import run_pipeline
    from trl_extras.scripts.utils import parse_args

    recipe = Path(__file__).parents[1] / "recipes" / "pipeline_real.yaml"
    config, model_args = parse_args([PipelineConfig, ModelConfig], ["--config", str(recipe)], "pipeline")
    assert config.sft_reward is None and config.gold_reward is None and model_args.load_in_4bit
    ctx = run_pipeline(micro_config(tmp_path, stages=["sft"], sft_reward=None))
    evals = ctx.results["sft"]["evaluations"]
    assert evals and all("eval_reward" not in e for e in evals)
    assert ctx.results["sft"]["best_step_by_loss"] in [e["step"] for e in evals]


def test_sort_hard_curated_sft_data_keeps_the_demonstrators_mode(tmp_path):
    """On sort_hard the curated SFT data are the answers the demonstrators meant to be right, their systematic wrong
    mode included (a gold filter would remove it and with it the headroom); the plain task still filters by gold."""
    from trl_extras.pipeline.data import pipeline_datasets

    hard = pipeline_datasets(micro_config(tmp_path, task="sort_hard"))
    kinds = set(hard["sft"]["kind"])
    assert kinds == {"correct", "mode"}
    assert min(hard["sft"]["gold"]) < 0.75  # wrong-mode answers on long prompts stay in
    plain = pipeline_datasets(micro_config(tmp_path))
    assert min(plain["sft"]["gold"]) >= 0.75
    with pytest.raises(ValueError, match="task must be one of"):
        micro_config(tmp_path, task="sort_harder")
