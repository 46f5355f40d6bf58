"""Saved state is complete or absent, resumed state must match the settings, and real processes killed at the
dangerous moment (``TRL_EXTRAS_KILL_AT``: the process SIGKILLs itself right there) resume with nothing lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from trl_extras.utils.atomic import KILL_ENV, atomic_write_json, atomic_writer, publish_dir, read_json
from trl_extras.utils.fingerprint import changed_fields, check_fingerprint, settings_fingerprint

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "kill_resume.py"


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------
def test_atomic_writer_leaves_old_file_or_new_one(tmp_path):
    path = tmp_path / "state.json"
    atomic_write_json(path, {"a": 1})

    def crash(tmp):
        Path(tmp).write_text('{"a": 2, "trunc')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_writer(path, crash)
    assert read_json(path) == {"a": 1} and os.listdir(tmp_path) == ["state.json"]  # no temp file left
    path.write_text('{"a": ')
    with pytest.raises(ValueError, match=r"state.json is not valid JSON"):
        read_json(path, what="State file")


def test_publish_dir_replaces_whole_directory(tmp_path):
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "old.txt").write_text("old")
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp" / "new.txt").write_text("new")
    publish_dir(tmp_path / "tmp", tmp_path / "final")
    assert sorted(os.listdir(tmp_path)) == ["final"] and os.listdir(tmp_path / "final") == ["new.txt"]


def test_fingerprint_names_changed_fields():
    def reward_a(p, c):
        return [0.0]

    old = settings_fingerprint(reward=reward_a, num_generations=4, num_rounds=3)
    new = settings_fingerprint(reward="path/to/rm", num_generations=8, num_rounds=3)
    assert set(changed_fields(old, new)) == {"reward", "num_generations"}
    with pytest.raises(ValueError, match=r"num_generations: 4 -> 8.*reward: .*reward_a.* -> 'path/to/rm'"):
        check_fingerprint(old, new, "CEM state", "Pass --resume false.")
    check_fingerprint(old, dict(old), "CEM state", "")  # same settings: fine


# ---------------------------------------------------------------------------------------------------------------
# PPO checkpoints: the newest COMPLETE one is resumed
# ---------------------------------------------------------------------------------------------------------------
def _fake_checkpoint(root: Path, step: int, complete: bool, truncate: str | None = None) -> Path:
    ckpt = root / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    files = {"model.safetensors": b"x" * 100, "optimizer.pt": b"y" * 50, "value_model.safetensors": b"v" * 30}
    for name, data in files.items():
        (ckpt / name).write_bytes(data)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if complete:
        from trl_extras.utils.resume import write_manifest

        (ckpt / "ppo_state.json").write_text(json.dumps({"kl_coef": 0.1, "reward_moments": {}}))
        write_manifest(ckpt, "ppo_checkpoint", step=step)  # the completion marker (utils.resume), written last
    if truncate:
        (ckpt / truncate).write_bytes(b"x")
    return ckpt


def test_resume_selection_skips_incomplete_and_truncated_checkpoints(tmp_path):
    from trl_extras.trainers.ppo import checkpoint_problem, latest_complete_checkpoint

    _fake_checkpoint(tmp_path, 1, complete=True)
    _fake_checkpoint(tmp_path, 2, complete=True, truncate="optimizer.pt")
    _fake_checkpoint(tmp_path, 3, complete=False)  # killed while writing the PPO extras
    with pytest.warns(UserWarning, match=r"checkpoint-3: no resume_manifest.json"):
        assert latest_complete_checkpoint(str(tmp_path)).endswith("checkpoint-1")
    assert "optimizer.pt is truncated" in checkpoint_problem(str(tmp_path / "checkpoint-2"))
    (tmp_path / "checkpoint-1" / "trainer_state.json").write_text('{"global_step": 7}')  # same size, other bytes
    assert "trainer_state.json is corrupted" in checkpoint_problem(str(tmp_path / "checkpoint-1"))
    with pytest.raises(ValueError, match="No complete checkpoint"), pytest.warns(UserWarning):
        latest_complete_checkpoint(str(tmp_path))


# ---------------------------------------------------------------------------------------------------------------
# kill -9 at the dangerous moment, then resume (real processes; minutes on a 2-core CPU)
# ---------------------------------------------------------------------------------------------------------------
def _run(args: list[str], kill_at: str | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(KILL_ENV, None)
    if kill_at:
        env[KILL_ENV] = kill_at
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env=env)  # fmt: skip


def _killed(proc) -> bool:
    return proc.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_ppo_killed_while_writing_a_checkpoint_resumes_from_the_previous_complete_one(tiny_paths, tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    full = _run(["ppo", tiny_paths["policy"], tiny_paths["reward"], str(ref), "3", "0", str(tmp_path / "ref.json")])
    assert full.returncode == 0, full.stderr[-3000:]
    killed = _run(["ppo", tiny_paths["policy"], tiny_paths["reward"], str(run), "3", "0", str(tmp_path / "x.json")],
                  kill_at="ppo_checkpoint_extras:2")  # fmt: skip
    assert _killed(killed), killed.stderr[-3000:]
    assert (run / "checkpoint-2" / "model.safetensors").exists()  # the Trainer's part was written ...
    assert not (run / "checkpoint-2" / "ppo_state.json").exists()  # ... the PPO part was not: incomplete
    resumed = _run(["ppo", tiny_paths["policy"], tiny_paths["reward"], str(run), "3", "1", str(tmp_path / "r.json")])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = json.loads((tmp_path / "ref.json").read_text()), json.loads((tmp_path / "r.json").read_text())
    assert b["global_step"] == 3 and any("checkpoint-2" in w for w in b["warnings"])
    assert (a["policy"], a["value"]) == (b["policy"], b["value"])  # nothing lost: identical to the uninterrupted run


@pytest.mark.slow
def test_reward_ensemble_killed_during_calibration_reuses_members_and_writes_manifest_last(tiny_paths, tmp_path):
    from trl_extras.rewards.ensemble import MANIFEST_NAME, RewardEnsemble, interrupted_ensemble_dir

    out = tmp_path / "ens"
    killed = _run(["ensemble", tiny_paths["policy"], str(out), str(tmp_path / "x.json")], kill_at="ensemble_calibration")
    assert _killed(killed), killed.stderr[-3000:]
    assert not (out / MANIFEST_NAME).exists() and interrupted_ensemble_dir(out)
    with pytest.raises(FileNotFoundError, match="interrupted"):
        RewardEnsemble.from_pretrained(out)  # never loads silently as an uncalibrated ensemble
    weights = {p: p.stat().st_mtime_ns for p in out.glob("member_*/model.safetensors")}
    assert len(weights) == 2
    resumed = _run(["ensemble", tiny_paths["policy"], str(out), str(tmp_path / "r.json")])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in out.glob("member_*/model.safetensors")} == weights  # members reused
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["calibration"] is not None and json.loads((out / MANIFEST_NAME).read_text())["calibration"]


@pytest.mark.slow
def test_cem_killed_between_rounds_resumes_identically(tiny_paths, tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    full = _run(["cem", tiny_paths["policy"], str(ref), "2", str(tmp_path / "ref.json")])
    assert full.returncode == 0, full.stderr[-3000:]
    killed = _run(["cem", tiny_paths["policy"], str(run), "2", str(tmp_path / "x.json")], kill_at="cem_round_done:0")
    assert _killed(killed), killed.stderr[-3000:]
    assert (run / "round_0" / "metrics.json").exists() and not (run / "round_1").exists()
    mtime = (run / "round_0" / "model" / "model.safetensors").stat().st_mtime_ns
    resumed = _run(["cem", tiny_paths["policy"], str(run), "2", str(tmp_path / "r.json")])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (run / "round_0" / "model" / "model.safetensors").stat().st_mtime_ns == mtime  # round 0 reused
    a, b = json.loads((tmp_path / "ref.json").read_text()), json.loads((tmp_path / "r.json").read_text())
    assert a == b  # same rounds, rewards and final weights as the uninterrupted run


# ---------------------------------------------------------------------------------------------------------------
# resumed state must match the settings
# ---------------------------------------------------------------------------------------------------------------
def _cem(tiny_paths, out, **overrides):
    from datasets import Dataset

    from trl_extras.trainers.cem import CEMConfig, CEMTrainer

    def length_reward(prompts, completions, **kwargs):
        return [float(len(c)) for c in completions]

    values = dict(output_dir=str(out), num_rounds=2, num_generations=2, prompts_per_round=2, max_completion_length=4,
                  elite_top_k=1, use_cpu=True, bf16=False, report_to="none", save_strategy="no", plot=False,
                  gradient_checkpointing=False, disable_tqdm=True)  # fmt: skip
    reward = overrides.pop("reward", length_reward)
    values.update(overrides)
    return CEMTrainer(tiny_paths["policy"], reward_funcs=reward, args=CEMConfig(**values),
                      train_dataset=Dataset.from_dict({"prompt": ["1 2 >", "3 1 >"]}))  # fmt: skip


def test_cem_refuses_rounds_made_under_other_settings(tiny_paths, tmp_path):
    from trl_extras.testbed import gold_reward_fn

    out = tmp_path / "cem"
    first = _cem(tiny_paths, out, temperature_end=0.5)
    first._check_settings()  # what train() does first: store the settings
    (out / "round_0" / "generations").mkdir(parents=True)  # a round made under them
    for change, words in [({"num_generations": 4}, "num_generations: 2 -> 4"),
                          ({"num_rounds": 3}, "num_rounds: 2 -> 3"),  # the temperature schedule spans the rounds
                          ({"reward": gold_reward_fn}, "reward_funcs: ")]:  # fmt: skip
        with pytest.raises(ValueError, match=words) as err:
            _cem(tiny_paths, out, temperature_end=0.5, **change).train()
        assert "--resume false" in str(err.value)
    assert (out / "round_0" / "generations").exists()  # nothing was deleted by the refusal
    _cem(tiny_paths, out, temperature_end=0.5)._check_settings()  # same settings: resumes
    _cem(tiny_paths, out, num_generations=4, resume=False)._check_settings()  # the documented way to start over
    # without a schedule over the rounds, more rounds extend a run (round r does not depend on num_rounds)
    plain = tmp_path / "plain"
    _cem(tiny_paths, plain)._check_settings()
    (plain / "round_0" / "generations").mkdir(parents=True)
    _cem(tiny_paths, plain, num_rounds=3)._check_settings()


def test_pipeline_refuses_a_finished_stage_made_under_other_settings(tmp_path):
    from test_pipeline import micro_config

    from trl_extras.pipeline.stages import Context, run_pipeline, stage_settings

    config = micro_config(tmp_path, stages=["sft"])
    ctx = Context(config=config, data={})
    stage = tmp_path / "pipe" / "sft"
    stage.mkdir(parents=True)
    (stage / "result.json").write_text(json.dumps({"model": "m", "settings": stage_settings(ctx, "sft")}))
    from trl_extras.utils.resume import write_manifest

    write_manifest(stage, "pipeline_stage")  # the completion marker (utils.resume), written last
    assert run_pipeline(config, progress=False).results["sft"]["model"] == "m"  # same settings: skipped
    with pytest.raises(ValueError, match=r"Stage 'sft'.*sft_max_steps: 4 -> 8.*--overwrite"):
        run_pipeline(micro_config(tmp_path, stages=["sft"], sft_max_steps=8), progress=False)


def test_every_pipeline_setting_is_fingerprinted_or_declared_non_shaping():
    """A PipelineConfig field missing from every stage's fingerprint would let a rerun with a changed value silently
    reuse stages made under the old one (the task/ppo_reward/... fields once were)."""
    from dataclasses import fields

    from trl_extras.pipeline.config import PipelineConfig
    from trl_extras.pipeline.stages import NON_SHAPING_SETTINGS, PIPELINE_STAGES

    fingerprinted = {name for stage in PIPELINE_STAGES for name in PIPELINE_STAGES.get(stage).settings}
    unaccounted = [f.name for f in fields(PipelineConfig) if f.name not in fingerprinted | set(NON_SHAPING_SETTINGS)]
    assert not unaccounted, f"add these to a stage's settings (or NON_SHAPING_SETTINGS): {unaccounted}"
    assert not fingerprinted & set(NON_SHAPING_SETTINGS)
