"""RewardEarlyStoppingCallback inside TRL's SFTTrainer on the tiny model."""

import pytest

from trl_extras.callbacks.reward_early_stopping import RewardEarlyStoppingCallback
from trl_extras.testbed import gold_reward_fn, prompt_dataset, sft_dataset


class ScheduledReward:
    """A fake reward: the k-th evaluation gets ``values[k]`` for every completion (checks prompts/completions)."""

    __name__ = "scheduled"

    def __init__(self, values):
        self.values, self.calls = list(values), 0

    def __call__(self, prompts, completions, **kwargs):
        assert len(prompts) == len(completions) and all(isinstance(c, str) for c in completions)
        value = self.values[min(self.calls, len(self.values) - 1)]
        self.calls += 1
        return [value] * len(prompts)


def _trainer(tiny_paths, tmp_path, callback, attach=True, **overrides):
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(tiny_paths["tokenizer"])
    tok.padding_side = "right"
    data = sft_dataset(32).select_columns(["prompt", "completion"])
    kwargs = dict(
        output_dir=str(tmp_path), max_steps=8, per_device_train_batch_size=4, per_device_eval_batch_size=8,
        eval_strategy="steps", eval_steps=2, logging_steps=2, save_strategy="no", use_cpu=True, bf16=False,
        report_to="none", gradient_checkpointing=False, learning_rate=1e-3, disable_tqdm=True,
    )
    kwargs.update(overrides)
    trainer = SFTTrainer(
        model=tiny_paths["policy"], args=SFTConfig(**kwargs), train_dataset=data, eval_dataset=data.select(range(8)),
        processing_class=tok, callbacks=[callback],
    )
    if attach:
        callback.set_trainer(trainer)
    return trainer, tok


def _cb(reward, **kw):
    kw.setdefault("max_new_tokens", 6)
    return RewardEarlyStoppingCallback(reward, prompt_dataset("holdout").select(range(6)), **kw)


def test_eval_reward_in_metrics_log_and_best_checkpoint(tiny_paths, tmp_path):
    reward = ScheduledReward([0.1, 0.9, 0.3, 0.2])
    cb = _cb(reward, patience=None, extra_reward_funcs={"gold": gold_reward_fn})
    trainer, tok = _trainer(
        tiny_paths, tmp_path, cb, save_strategy="steps", save_steps=2, metric_for_best_model="eval_reward",
        load_best_model_at_end=True,
    )
    trainer.train()
    assert trainer.state.global_step == 8 and reward.calls == 4
    logged = [h for h in trainer.state.log_history if "eval_reward" in h]
    assert [h["eval_reward"] for h in logged] == pytest.approx([0.1, 0.9, 0.3, 0.2])
    assert [h["step"] for h in logged] == [2, 4, 6, 8]
    assert all(0.0 <= h["eval_reward_gold"] <= 1.0 for h in logged)
    assert logged[-1]["eval_reward_best"] == pytest.approx(0.9)
    # the Trainer's best-model tracking read eval_reward from the metrics dict
    assert trainer.state.best_metric == pytest.approx(0.9)
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-4")
    assert tok.padding_side == "right"
    # a direct evaluate() also returns the metric
    metrics = trainer.evaluate()
    assert "eval_reward" in metrics and "eval_loss" in metrics


def test_stops_after_patience(tiny_paths, tmp_path):
    reward = ScheduledReward([1.0, 0.9, 0.8, 0.7, 0.6, 0.5])
    cb = _cb(reward, patience=2)
    trainer, tok = _trainer(tiny_paths, tmp_path, cb, max_steps=20)
    trainer.train()
    # evaluations at steps 2 (best), 4 (wait 1), 6 (wait 2 -> stop)
    assert trainer.state.global_step == 6 and reward.calls == 3
    assert cb.best == 1.0 and cb.best_step == 2 and cb.wait == 2
    assert tok.padding_side == "right"


def test_threshold_counts_small_gains_as_no_improvement(tiny_paths, tmp_path):
    reward = ScheduledReward([0.5, 0.505, 0.51, 0.9])
    cb = _cb(reward, patience=2, threshold=0.05)
    trainer, _ = _trainer(tiny_paths, tmp_path, cb, attach=False, max_steps=20)
    trainer.train()
    assert trainer.state.global_step == 6
    # without the trainer attached the metric still lands in the log history
    assert [h["step"] for h in trainer.state.log_history if "eval_reward" in h] == [2, 4, 6]


def test_reward_model_path_and_resume_state(tiny_paths, tmp_path):
    cb = _cb(tiny_paths["reward"], patience=5, temperature=0)
    trainer, _ = _trainer(tiny_paths, tmp_path, cb, max_steps=4)
    trainer.train()
    values = [h["eval_reward"] for h in trainer.state.log_history if "eval_reward" in h]
    assert len(values) == 2
    # greedy + a fixed reward model: evaluating the same weights twice gives the same number
    assert trainer.evaluate()["eval_reward"] == pytest.approx(trainer.evaluate()["eval_reward"], abs=1e-6)
    # on_train_begin rebuilds best/wait from the logged history (what a resumed run sees)
    fresh = _cb(tiny_paths["reward"], patience=5)
    fresh.on_train_begin(trainer.args, trainer.state, trainer.control)
    assert fresh.best == pytest.approx(max(values[:2]))


def test_bad_input(tiny_paths):
    from datasets import Dataset

    with pytest.raises(ValueError, match="empty"):
        RewardEarlyStoppingCallback(gold_reward_fn, [])
    with pytest.raises(ValueError, match="'prompt' column"):
        RewardEarlyStoppingCallback(gold_reward_fn, Dataset.from_dict({"text": ["1 2 >"]}))
    with pytest.raises(ValueError, match="patience"):
        RewardEarlyStoppingCallback(gold_reward_fn, ["1 2 >"], patience=-1)
    with pytest.raises(ValueError, match="start with 'eval_'"):
        RewardEarlyStoppingCallback(gold_reward_fn, ["1 2 >"], metric_name="reward")
    with pytest.raises(TypeError, match="Unsupported reward"):
        RewardEarlyStoppingCallback(42, ["1 2 >"])


def test_nan_reward_is_a_clear_error(tiny_paths, tmp_path):
    cb = _cb(lambda prompts, completions, **kw: [float("nan")] * len(prompts))
    trainer, _ = _trainer(tiny_paths, tmp_path, cb, max_steps=2)
    with pytest.raises(ValueError, match="finite"):
        trainer.train()


def test_cli_recipe(tmp_path):
    import json

    from trl_extras.cli import main

    argv = ["sft-reward-es", "--config", "recipes/sft_reward_early_stopping.yaml", "--output_dir", str(tmp_path),
            "--max_steps", "2", "--eval_steps", "2", "--save_steps", "2", "--use_cpu", "true", "--disable_tqdm", "true",
            "--num_train_examples", "16", "--num_eval_examples", "8", "--num_eval_prompts", "4", "--max_new_tokens", "6"]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "reward_early_stopping.json").read_text())
    assert summary["best_step"] == 2 and len(summary["evaluations"]) == 1
    assert {"eval_reward", "eval_reward_gold"} <= set(summary["evaluations"][0])


@pytest.mark.slow  # ~10-30 s of process start-up on 2 cores each; run with `pytest -m distributed`
@pytest.mark.distributed
@pytest.mark.parametrize("backend", ["ddp", "zero2", "zero3"])
def test_two_processes_split_prompts_and_gather(backend, tmp_path):
    """Under DDP and DeepSpeed ZeRO-2/3 (2 CPU processes) each process answers a share of the prompts (ZeRO-3
    gathers the sharded policy to generate) and the metric averages all of them."""
    import json
    import sys
    from pathlib import Path

    from helpers import launch_two_processes

    from trl_extras.testbed.task import parse_prompt

    script = Path(__file__).parent / "scripts" / "reward_es_dist.py"
    out = tmp_path / "result.json"
    launch_two_processes(script, backend, tmp_path, str(out), timeout=300)
    result = json.loads(out.read_text())
    assert result["num_processes"] == 2
    sys.path.insert(0, str(script.parent))
    try:
        from reward_es_dist import PROMPTS
    finally:
        sys.path.pop(0)
    # each process scored a disjoint share; together all prompts exactly once
    first, second = result["seen"]
    assert first and second and not set(first) & set(second)
    assert sorted(first + second) == sorted(PROMPTS)
    expected = sum(len(parse_prompt(p)) for p in PROMPTS) / len(PROMPTS)
    assert result["eval_reward"] == [pytest.approx(expected)]
