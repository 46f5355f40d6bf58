"""`log_completions` (GRPO's option) for PPO and CEM through one helper, `trl_extras.utils.completions`: the rich
console table, the `report_to` table (a fake wandb/trackio-like backend), GRPO's parquet file."""

import random
import sys
import types

import pytest
from helpers import cpu_config

from trl_extras.testbed import TestbedConfig, gold_reward_fn, prompt_dataset


class FakeBackend(types.ModuleType):
    """Stands in for the `wandb` / `trackio` module: `Table(dataframe=...)` and `log({...})`."""

    def __init__(self, name="wandb"):
        import importlib.machinery

        import trl.trainer.utils  # noqa: F401  (accelerate checks `find_spec("wandb")` on import: import it first)

        super().__init__(name)
        self.__spec__ = importlib.machinery.ModuleSpec(name, None)
        self.run = object()  # wandb: an active run
        self.logged = []

    class Table:
        def __init__(self, dataframe):
            self.dataframe = dataframe

    def log(self, payload):
        self.logged.append(payload)


def _rows(backend):
    """The logged tables' rows, as (prompt, completion, {column: value}) per row, in order."""
    out = []
    for payload in backend.logged:
        df = payload["completions"].dataframe
        for rec in df.to_dict("records"):
            out.append(rec)
    return out


def test_completion_log_prints_logs_and_writes(tmp_path, monkeypatch, capsys):
    import pandas as pd

    from trl_extras.utils.completions import CompletionLog

    fake = FakeBackend("wandb")
    monkeypatch.setitem(sys.modules, "wandb", fake)
    log = CompletionLog(report_to=["wandb"], parquet_dir=tmp_path / "completions")
    log.add(["3 1 >", "2 9 >"], [" 1 3", " 9 2"], {"gold": [1.0, 0.5], "proxy": [0.7, 0.2]}, extra={"elite": [True, False]})
    log.add(["3 1 >"], [" 3"], {"gold": [0.4], "proxy": [0.1]}, extra={"elite": [False]})
    state = random.getstate()
    table = log.flush(step=7)
    assert random.getstate() == state  # printing a random sample must not move the run's random stream
    assert len(log) == 0 and log.flush(8) is None  # forgotten after the flush
    printed = capsys.readouterr().out
    assert "Step 7" in printed and "2 9 >" in printed and "proxy" in printed and "elite" in printed
    assert table == {"step": [7, 7, 7], "prompt": ["3 1 >", "2 9 >", "3 1 >"], "completion": [" 1 3", " 9 2", " 3"],
                     "gold": [1.0, 0.5, 0.4], "proxy": [0.7, 0.2, 0.1], "elite": [True, False, False]}
    rows = _rows(fake)
    assert [r["prompt"] for r in rows] == table["prompt"] and [r["gold"] for r in rows] == table["gold"]
    written = pd.read_parquet(tmp_path / "completions" / "completions_00007.parquet")
    assert written["completion"].tolist() == table["completion"]

    unique = CompletionLog(report_to="wandb", log_unique_prompts=True, num_completions_to_print=1)
    unique.add(["a", "a", "b"], ["x", "y", "z"], {"r": [1, 2, 3]})
    fake.logged.clear()
    unique.flush(1)
    assert [r["completion"] for r in _rows(fake)] == ["x", "z"]
    assert capsys.readouterr().out.count("│ a ") + capsys.readouterr().out.count("│ b ") <= 1  # one row printed
    with pytest.raises(ValueError, match="reward r has 1 values for 2 prompts"):
        unique.add(["a", "b"], ["x", "y"], {"r": [1]})


def test_no_backend_without_report_to_or_run(monkeypatch):
    from trl_extras.utils.completions import logging_backends

    fake = FakeBackend("wandb")
    monkeypatch.setitem(sys.modules, "wandb", fake)
    assert logging_backends("none") == [] and logging_backends(["wandb"]) == [fake]
    fake.run = None  # wandb without an active run: GRPO skips it too
    assert logging_backends(["wandb"]) == []


def test_ppo_log_completions(tiny_paths, tmp_path, monkeypatch, capsys):
    """Each log prints the rollout's rows and hands the backend a table whose rows are the rollout's prompts,
    completions and per-function rewards (the optimized one and a tracked one)."""
    import trl_extras.utils.completions as completions_mod
    from trl_extras.trainers.ppo import PPOConfig, PPOTrainer

    calls = []

    def length_reward(prompts, completions, **kwargs):
        scores = [-abs(len(c) - 4) / 4 for c in completions]
        calls.append((list(prompts), list(completions), scores))
        return scores

    fake = FakeBackend("trackio")
    monkeypatch.setattr(completions_mod, "logging_backends", lambda report_to: [fake])
    data = prompt_dataset("train", TestbedConfig(num_train_prompts=8, num_holdout_prompts=2, seed=0))
    args = cpu_config(PPOConfig, tmp_path / "ppo", per_device_train_batch_size=4, num_mini_batches=1,
                      num_ppo_epochs=1, max_steps=2, max_completion_length=6, learning_rate=1e-3, seed=0,
                      log_completions=True, num_completions_to_print=2)
    trainer = PPOTrainer(tiny_paths["policy"], reward_funcs=length_reward, args=args, train_dataset=data,
                         log_reward_funcs=gold_reward_fn)
    trainer.train()
    assert len(calls) == 2 and len(fake.logged) == 2  # one rollout per step, one table per log
    for (prompts, completions, scores), payload in zip(calls, fake.logged):
        df = payload["completions"].dataframe
        assert df["prompt"].tolist() == prompts and df["completion"].tolist() == completions
        assert df["length_reward"].tolist() == pytest.approx(scores)
        assert df["gold_reward"].tolist() == pytest.approx(gold_reward_fn(prompts, completions))
    assert (tmp_path / "ppo" / "completions" / "completions_00002.parquet").exists()
    out = capsys.readouterr().out
    assert "Step 1" in out and "Step 2" in out and "length_reward" in out


def test_cem_log_completions(tiny_paths, tmp_path, monkeypatch, capsys):
    """Each round's rows (prompt, completion, reward, gold, elite) go to the backend once the elites are chosen."""
    from datasets import load_from_disk

    import trl_extras.utils.completions as completions_mod
    from trl_extras import CEMTrainer
    from trl_extras.trainers.cem import CEMConfig

    fake = FakeBackend("wandb")
    monkeypatch.setattr(completions_mod, "logging_backends", lambda report_to: [fake])
    args = cpu_config(CEMConfig, tmp_path / "cem", num_rounds=1, num_generations=4, max_completion_length=6,
                      generation_chunk_size=16, per_device_train_batch_size=8, num_train_epochs=1, seed=0, plot=False,
                      log_completions=True)
    data = prompt_dataset("train", TestbedConfig(num_train_prompts=3, num_holdout_prompts=2))
    trainer = CEMTrainer(tiny_paths["policy"], lambda completions, **k: [-abs(len(c) - 4) / 4 for c in completions],
                         args, train_dataset=data, eval_reward_funcs=gold_reward_fn)
    trainer.train()
    saved = load_from_disk(str(tmp_path / "cem" / "round_0" / "generations"))
    (payload,) = fake.logged
    df = payload["completions"].dataframe
    assert len(df) == 12
    for key in ("prompt", "completion", "reward", "gold", "elite"):
        assert df[key].tolist() == saved[key], key
    assert df["step"].tolist() == [0] * 12
    assert "Step 0" in capsys.readouterr().out
