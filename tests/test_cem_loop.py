"""CEM's round loop: one round record (``CEMRound``) per round, filled by the steps sample → score → select →
fine-tune → evaluate → save, and what the history, ``metrics.json`` and the generations on disk hold is the record
(tiny random models, CPU)."""

import json
import math

import pytest
from helpers import cpu_config

from trl_extras.testbed import TestbedConfig, gold_reward_fn, prompt_dataset


def logging_length_reward(prompts, completions, log_metric=None, **kwargs):
    """Prefers answers of about 6 characters; logs each answer's length (the round's ``reward_logs``)."""
    for c in completions:
        log_metric("length", len(c))
    return [-abs(len(c) - 6) / 6 for c in completions]


def _args(tmp_path, **overrides):
    from trl_extras.trainers.cem import CEMConfig

    defaults = dict(
        num_rounds=2, num_generations=4, max_completion_length=8, generation_chunk_size=16,
        per_device_train_batch_size=8, num_train_epochs=1, learning_rate=1e-3, seed=0, plot=False,
        elite_top_k=None, elite_quantile=0.5, elite_quantile_end=0.75, temperature=1.0, temperature_end=1.5,
        eval_num_generations=2,
    )
    return cpu_config(CEMConfig, tmp_path / "cem", **{**defaults, **overrides})


def _prompts(split="train", n=4):
    return prompt_dataset(split, TestbedConfig(num_train_prompts=n, num_holdout_prompts=2))


def _linear_quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile with linear interpolation (numpy's / torch's default), written out independently."""
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _expected_elites(columns: dict, quantile: float) -> list[bool]:
    """The quantile rule per prompt, among its distinct non-empty answers (the first copy of a duplicate)."""
    expected = [False] * len(columns["reward"])
    for g in sorted(set(columns["group"])):
        seen, candidates = set(), []
        for i, (group, text, empty) in enumerate(zip(columns["group"], columns["completion"], columns["empty"])):
            if group == g and not empty and text not in seen:
                seen.add(text)
                candidates.append(i)
        if not candidates:
            continue
        cut = _linear_quantile([columns["reward"][i] for i in candidates], quantile)
        for i in candidates:
            expected[i] = columns["reward"][i] >= cut - 1e-12
    return expected


@pytest.fixture(scope="module")
def run(tiny_paths, tmp_path_factory):
    from trl_extras import CEMTrainer

    tmp_path = tmp_path_factory.mktemp("cem_loop")
    trainer = CEMTrainer(tiny_paths["policy"], logging_length_reward, _args(tmp_path), train_dataset=_prompts(),
                         eval_dataset=_prompts("holdout", 2), eval_reward_funcs=gold_reward_fn)
    history = trainer.train()
    return trainer, history, tmp_path / "cem"


def test_one_record_per_round_with_its_schedule(run):
    trainer, history, _ = run
    assert [record.index for record in trainer.rounds] == [0, 1] == [h["round"] for h in history]
    assert [record.temperature for record in trainer.rounds] == [1.0, 1.5]
    assert [record.quantile for record in trainer.rounds] == [0.5, 0.75]
    assert all(record.stop_reason is None and not record.reused for record in trainer.rounds)


def test_selected_mask_follows_the_quantile_rule(run):
    trainer, _, _ = run
    for record in trainer.rounds:
        assert len(record.elite) == len(record.columns["reward"]) == 16  # 4 prompts x 4 answers
        assert record.elite == _expected_elites(record.columns, record.quantile)
        assert record.sample_metrics["elite_count"] == sum(record.elite) > 0
        # no SFT replay: the round fine-tunes on exactly its elites
        assert record.fine_tune_metrics["fine_tune_rows"] == sum(record.elite)
        assert record.fine_tune_metrics["sft_mix_rows"] == 0 and record.fine_tune_metrics["train_steps"] >= 1


def test_record_is_what_the_history_and_round_files_hold(run):
    from datasets import load_from_disk

    trainer, history, out = run
    saved = json.loads((out / "cem_history.json").read_text())
    for record, h, on_disk in zip(trainer.rounds, history, saved["rounds"]):
        metrics = record.metrics()
        assert metrics == h == on_disk
        assert json.loads((record.directory / "metrics.json").read_text()) == metrics
        assert record.directory == out / f"round_{record.index}"
        generations = load_from_disk(str(record.generations_path))
        assert generations["elite"] == record.elite and generations["reward"] == record.columns["reward"]
        # each step's part of the record is in the round's metrics
        assert record.eval_metrics and all(k.startswith("eval_") and metrics[k] == v
                                           for k, v in record.eval_metrics.items())
        assert {"train_loss", "fine_tune_rows"} <= set(record.fine_tune_metrics) <= set(metrics)
        lengths = [len(c) for c in record.columns["completion"]]
        assert record.reward_logs == {"length": pytest.approx(sum(lengths) / len(lengths))}
        assert metrics["reward_log/length"] == record.reward_logs["length"]
    assert saved["stopped"] is None


def test_a_rerun_resumes_every_finished_round_and_records_none(run, tiny_paths):
    from trl_extras import CEMTrainer

    trainer, history, out = run
    again = CEMTrainer(tiny_paths["policy"], logging_length_reward, _args(out.parent), train_dataset=_prompts(),
                       eval_dataset=_prompts("holdout", 2), eval_reward_funcs=gold_reward_fn)
    assert again.train() == history
    assert again.rounds == []


def test_a_diversity_floor_stops_the_record_before_fine_tuning(tiny_paths, tmp_path):
    from trl_extras import CEMTrainer

    trainer = CEMTrainer(tiny_paths["policy"], logging_length_reward, _args(tmp_path, min_distinct_n=1.5, distinct_n_order=3),
                         train_dataset=_prompts())
    history = trainer.train()
    (record,) = trainer.rounds
    assert record.stop_reason.startswith("distinct_3 ") and "min_distinct_n 1.5" in record.stop_reason
    # an order the round's measures lack is measured by the floor and kept in the record
    assert f"{record.sample_metrics['distinct_3']:.4f}" in record.stop_reason
    assert record.fine_tune_metrics == {} and record.eval_metrics == {}
    assert history == [record.metrics()] and history[0]["stopped"] == record.stop_reason
    stopped = json.loads((tmp_path / "cem" / "round_0" / "stopped.json").read_text())
    assert stopped == record.metrics()
    assert json.loads((tmp_path / "cem" / "cem_history.json").read_text())["stopped"] == record.stop_reason
