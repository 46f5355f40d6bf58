"""One resume protocol (``trl_extras.utils.resume``) for PPO checkpoints, CEM rounds, pipeline stages, iterate steps
and reward-ensemble members: settings checked on every resume (rewards and models by content), lineage, content
hashes, an output-directory lock, writability first, save errors that name the file and the disk, exact resume at
the default ``num_ppo_epochs`` and SIGTERM / SIGINT stopping at a safe point."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "kill_resume.py"


# ---------------------------------------------------------------------------------------------------------------
# rewards by content
# ---------------------------------------------------------------------------------------------------------------
def _lambda_one():
    return lambda prompts, completions, **kw: [1.0] * len(completions)


def _lambda_two():
    return lambda prompts, completions, **kw: [2.0] * len(completions)


class _Scaled:
    def __init__(self, scale):
        self.scale = scale

    def __call__(self, prompts, completions, **kwargs):
        return [self.scale * len(c) for c in completions]

    def method(self, prompts, completions, **kwargs):
        return [self.scale] * len(completions)


def _length(prompts, completions, scale=1.0, **kwargs):
    return [scale * len(c) for c in completions]


def _gold():
    from trl_extras.testbed import gold_reward_fn

    return gold_reward_fn


def _heuristic():
    from trl_extras.testbed import heuristic_reward_fn

    return heuristic_reward_fn


DIFFERENT_REWARDS = {
    # testbed: both are `task.batched.<locals>.reward_fn` (CEM named them alike: `--reward heuristic` then
    # `--reward gold` reused round 0)
    "gold_vs_heuristic": (_gold, _heuristic),
    "two_lambdas": (_lambda_one, _lambda_two),
    "callable_class_params": (lambda: _Scaled(1.0), lambda: _Scaled(2.0)),
    "bound_method_instances": (lambda: _Scaled(1.0).method, lambda: _Scaled(3.0).method),
    "partial_args": (lambda: functools.partial(_length, scale=1.0), lambda: functools.partial(_length, scale=2.0)),
    "weights_in_list": (lambda: [_gold(), _heuristic()], lambda: [_heuristic(), _gold()]),
}
SAME_REWARDS = {
    "one_vs_list_of_one": (_gold, lambda: [_gold()]),
    "reward_functions_wrapper": (_gold, lambda: __import__("trl_extras.rewards.functions", fromlist=["x"]).RewardFunctions(_gold())),
    "equal_instances": (lambda: _Scaled(2.0), lambda: _Scaled(2.0)),
}


@pytest.mark.parametrize("case", sorted(DIFFERENT_REWARDS))
def test_reward_identity_tells_rewards_apart_by_content(case):
    from trl_extras.utils.fingerprint import rewards_identity

    a, b = DIFFERENT_REWARDS[case]
    assert rewards_identity(a()) != rewards_identity(b())
    assert rewards_identity(a()) == rewards_identity(a())  # and is stable


@pytest.mark.parametrize("case", sorted(SAME_REWARDS))
def test_reward_identity_equivalent_spellings_compare_equal(case):
    from trl_extras.utils.fingerprint import rewards_identity

    a, b = SAME_REWARDS[case]
    assert rewards_identity(a()) == rewards_identity(b())


def test_reward_identity_of_models_and_paths_is_by_content(tiny_paths, tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    from trl_extras.utils.fingerprint import model_identity, reward_identity

    copy = tmp_path / "moved" / Path(tiny_paths["reward"]).name
    shutil.copytree(tiny_paths["reward"], copy)
    assert reward_identity(str(copy)) == reward_identity(tiny_paths["reward"])  # moved: same content
    monkeypatch.chdir(tmp_path / "moved")
    assert reward_identity(copy.name) == reward_identity(str(copy)) == reward_identity(copy)  # other spellings
    weights = load_file(str(copy / "model.safetensors"))
    name = sorted(weights)[-1]
    weights[name] = weights[name] + 1.0  # retrained in place: same names, shapes and size
    save_file(weights, str(copy / "model.safetensors"), metadata={"format": "pt"})
    assert reward_identity(str(copy)) != reward_identity(tiny_paths["reward"])

    from transformers import AutoModelForSequenceClassification

    a = AutoModelForSequenceClassification.from_pretrained(tiny_paths["reward"])
    b = AutoModelForSequenceClassification.from_pretrained(str(copy))
    assert model_identity(a) != model_identity(b) and model_identity(a) == model_identity(
        AutoModelForSequenceClassification.from_pretrained(tiny_paths["reward"])
    )


def test_reward_identity_of_an_ensemble_is_its_members_and_penalty(tmp_path):
    """A saved RewardEnsemble (duck-typed: ``metadata["directory"]``, ``penalty``, ``coef``) by its directory's
    content and the penalty it applies: a retrained member or another coefficient changes it."""
    from trl_extras.utils.fingerprint import reward_identity

    class Ensemble:  # the attributes reward_identity reads from trl_extras.rewards.ensemble.RewardEnsemble
        def __init__(self, directory, coef):
            self.metadata, self.penalty, self.coef = {"directory": str(directory)}, "variance", coef

        def __call__(self, prompts, completions, **kwargs):
            return [0.0] * len(completions)

    d = tmp_path / "ens"
    (d / "member_0").mkdir(parents=True)
    (d / "member_0" / "model.safetensors").write_bytes(b"a" * 100)
    before = reward_identity(Ensemble(d, 0.1))
    assert before == reward_identity(Ensemble(d, 0.1)) != reward_identity(Ensemble(d, 0.2))
    (d / "member_0" / "model.safetensors").write_bytes(b"b" * 100)
    assert reward_identity(Ensemble(d, 0.1)) != before


# ---------------------------------------------------------------------------------------------------------------
# CEM: rewards by content, equivalent spellings, the override
# ---------------------------------------------------------------------------------------------------------------
def _cem(tiny_paths, out, reward, **overrides):
    from datasets import Dataset

    from trl_extras.trainers.cem import CEMConfig, CEMTrainer

    values = dict(output_dir=str(out), num_rounds=2, num_generations=2, prompts_per_round=2, max_completion_length=4,
                  elite_top_k=1, use_cpu=True, bf16=False, report_to="none", save_strategy="no", plot=False,
                  gradient_checkpointing=False, disable_tqdm=True)  # fmt: skip
    values.update(overrides)
    return CEMTrainer(tiny_paths["policy"], reward_funcs=reward, args=CEMConfig(**values),
                      train_dataset=Dataset.from_dict({"prompt": ["1 2 >", "3 1 >"]}))  # fmt: skip


def _cem_with_a_round(tiny_paths, out, reward):
    """A CEM directory whose settings are stored and whose round 0 exists (what `train` leaves after round 0)."""
    _cem(tiny_paths, out, reward)._check_settings()
    (out / "round_0" / "generations").mkdir(parents=True)


@pytest.mark.parametrize("case", sorted(DIFFERENT_REWARDS))
def test_cem_refuses_a_resume_with_another_reward(tiny_paths, tmp_path, case):
    a, b = DIFFERENT_REWARDS[case]
    _cem_with_a_round(tiny_paths, tmp_path / "cem", a())
    with pytest.raises(ValueError, match=r"reward_funcs: .*resume_allow_changes"):
        _cem(tiny_paths, tmp_path / "cem", b())._check_settings()


@pytest.mark.parametrize("case", ["one_vs_list_of_one", "reward_functions_wrapper"])  # refused before
def test_cem_accepts_an_equivalent_spelling_of_the_reward(tiny_paths, tmp_path, case):
    a, b = SAME_REWARDS[case]
    _cem_with_a_round(tiny_paths, tmp_path / "cem", a())
    _cem(tiny_paths, tmp_path / "cem", b())._check_settings()  # `gold` then `[gold]`: no refusal


def test_cem_override_accepts_the_listed_fields_only(tiny_paths, tmp_path):
    _cem_with_a_round(tiny_paths, tmp_path / "cem", _gold())
    _cem(tiny_paths, tmp_path / "cem", _heuristic(), resume_allow_changes=["reward_funcs"])._check_settings()
    with pytest.raises(ValueError, match=r"num_generations: 2 -> 4"):
        _cem(tiny_paths, tmp_path / "cem", _heuristic(), num_generations=4,
             resume_allow_changes=["reward_funcs"])._check_settings()  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# PPO: a tiny run whose checkpoints the cases below resume
# ---------------------------------------------------------------------------------------------------------------
def _length_reward(prompts, completions, **kwargs):
    return [float(len(c)) / 10.0 for c in completions]


def _ppo(tiny_paths, out, reward=_length_reward, model=None, callbacks=None, ref_model=None, **overrides):
    from datasets import Dataset

    from trl_extras import PPOConfig, PPOTrainer

    values = dict(output_dir=str(out), use_cpu=True, bf16=False, report_to="none", save_strategy="steps", save_steps=1,
                  gradient_checkpointing=False, disable_tqdm=True, logging_steps=1, per_device_train_batch_size=4,
                  num_mini_batches=1, num_ppo_epochs=1, max_steps=2, max_completion_length=4, learning_rate=1e-2,
                  seed=0)  # fmt: skip
    values.update(overrides)
    prompts = Dataset.from_dict({"prompt": [f"{i % 10} {(i * 7) % 10} >" for i in range(16)]})
    return PPOTrainer(model or tiny_paths["policy"], reward_funcs=reward, args=PPOConfig(**values),
                      train_dataset=prompts, value_model=tiny_paths["reward"], callbacks=callbacks,
                      ref_model=ref_model)  # fmt: skip


@pytest.fixture(scope="module")
def ppo_run(tiny_paths, tmp_path_factory):
    """A finished 2-step PPO run (checkpoint-1, checkpoint-2), copied per test."""
    out = tmp_path_factory.mktemp("ppo") / "run"
    _ppo(tiny_paths, out).train()
    return out


@pytest.fixture
def run_copy(ppo_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(ppo_run, out)
    return out


def _other_policy(tiny_paths, tmp_path) -> str:
    """The tiny policy with one tensor changed: same path layout, names, shapes and file size."""
    from safetensors.torch import load_file, save_file

    other = tmp_path / "other_policy"
    shutil.copytree(tiny_paths["policy"], other)
    weights = load_file(str(other / "model.safetensors"))
    name = sorted(weights)[0]
    weights[name] = weights[name] * 0.5
    save_file(weights, str(other / "model.safetensors"), metadata={"format": "pt"})
    return str(other)


# (overrides, words the refusal must contain): every case resumed silently before (β, reward, policy kept/changed
# without a word; a changed batch or schedule ran on the old optimizer/schedule state)
PPO_REFUSED = {
    "kl_coef": ({"kl_coef": 0.5}, r"kl_coef: 0\.05 -> 0\.5.*resume_allow_changes"),
    "reward": ({"reward": _heuristic}, r"reward_funcs: "),
    "initial_policy": ({"model": _other_policy}, r"model: "),
    "reference": ({"ref_model": _other_policy}, r"ref_model: None -> "),
    "temperature": ({"temperature": 0.7}, r"temperature: 1\.0 -> 0\.7"),
    "batch_size": ({"per_device_train_batch_size": 2, "allow": ["all"]}, r"per_device_train_batch_size: 4 -> 2.*No override"),
    "max_steps": ({"max_steps": 4, "allow": ["max_steps"]}, r"max_steps: 2 -> 4 \(the restored learning-rate schedule"),
    "gradient_accumulation": ({"gradient_accumulation_steps": 2}, r"gradient_accumulation_steps: 1 -> 2"),
    "num_ppo_epochs": ({"num_ppo_epochs": 2}, r"num_ppo_epochs: 1 -> 2"),
    "seed": ({"seed": 1, "allow": ["all"]}, r"seed: 0 -> 1"),
}


@pytest.mark.parametrize("case", sorted(PPO_REFUSED))
def test_ppo_refuses_a_resume_with_changed_settings(tiny_paths, run_copy, tmp_path, case):
    overrides, words = PPO_REFUSED[case]
    overrides = dict(overrides)
    kwargs = {}
    if "reward" in overrides:
        kwargs["reward"] = overrides.pop("reward")()
    if "model" in overrides:
        kwargs["model"] = overrides.pop("model")(tiny_paths, tmp_path)
    if "allow" in overrides:
        overrides["resume_allow_changes"] = overrides.pop("allow")
    if "ref_model" in overrides:
        kwargs["ref_model"] = overrides.pop("ref_model")(tiny_paths, tmp_path)
    trainer = _ppo(tiny_paths, run_copy, **kwargs, **overrides)
    with pytest.raises(ValueError, match=words):
        trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 0  # refused before any step


def test_ppo_refuses_a_changed_world_size(tiny_paths, run_copy):
    """A checkpoint of 2 processes resumed by 1 (the manifest says world_size 2): the global batch, data position and
    per-process RNG states do not fit; no override accepts it."""
    from trl_extras.utils.resume import MANIFEST_FILE

    path = run_copy / "checkpoint-2" / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest["fingerprint"]["world_size"] = 2
    path.write_text(json.dumps(manifest))
    trainer = _ppo(tiny_paths, run_copy, max_steps=2, resume_allow_changes=["all"])
    with pytest.raises(ValueError, match=r"world_size: 2 -> 1 \(the global batch.*No override"):
        trainer.train(resume_from_checkpoint=True)


def test_ppo_override_accepts_kl_coef_and_uses_the_new_beta(tiny_paths, run_copy, capsys):
    trainer = _ppo(tiny_paths, run_copy, max_steps=2, kl_coef=0.5, resume_allow_changes=["kl_coef"])
    trainer.train(resume_from_checkpoint=str(run_copy / "checkpoint-1"))
    assert trainer.state.global_step == 2
    assert trainer.kl_ctl.value == 0.5  # before: the checkpoint's 0.05 silently won
    out = capsys.readouterr().out
    assert "resuming from checkpoint" in out and "checkpoint-1 at step 1" in out and "kl_coef" in out


def test_ppo_resume_says_which_checkpoint_and_step(tiny_paths, run_copy, capsys):
    trainer = _ppo(tiny_paths, run_copy, max_steps=2)
    trainer.train(resume_from_checkpoint=True)
    lines = [line for line in capsys.readouterr().out.splitlines() if "resuming from checkpoint" in line]
    assert len(lines) == 1 and lines[0].endswith("checkpoint-2 at step 2"), lines


# ---------------------------------------------------------------------------------------------------------------
# lineage: resume_from_checkpoint=True continues the current branch
# ---------------------------------------------------------------------------------------------------------------
class _StopAt:
    def __init__(self, step, error=False):
        self.step, self.error = step, error

    def __call__(self):
        from transformers import TrainerCallback

        outer = self

        class Stop(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step >= outer.step:
                    if outer.error:
                        raise KeyboardInterrupt("crashed before saving")
                    control.should_training_stop = True
                return control

        return Stop()


@pytest.mark.parametrize("branch", ["saved_a_checkpoint", "crashed_before_saving"])
def test_resume_true_continues_the_current_branch_not_a_stale_later_checkpoint(tiny_paths, tmp_path, branch):
    out = tmp_path / "run"
    _ppo(tiny_paths, out, max_steps=4).train()  # run A: checkpoints 1..4
    crashed = branch == "crashed_before_saving"
    # run B branches at checkpoint-1: it saves checkpoint-2 and -3 and stops, or crashes in its first step (step 2)
    b = _ppo(tiny_paths, out, max_steps=4, callbacks=[_StopAt(2 if crashed else 3, error=crashed)()])
    if crashed:
        with pytest.raises(KeyboardInterrupt):
            b.train(resume_from_checkpoint=str(out / "checkpoint-1"))
    else:
        b.train(resume_from_checkpoint=str(out / "checkpoint-1"))  # writes checkpoint-2, -3 of B
    assert (out / "checkpoint-4").exists()  # A's stale later checkpoint is still there
    from trl_extras.trainers.ppo import latest_complete_checkpoint

    expected = "checkpoint-1" if crashed else "checkpoint-3"
    assert Path(latest_complete_checkpoint(str(out))).name == expected


# ---------------------------------------------------------------------------------------------------------------
# completeness by content, at all five places
# ---------------------------------------------------------------------------------------------------------------
def _flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_ppo_same_size_corruption_is_refused_and_skipped(tiny_paths, run_copy):
    from trl_extras.trainers.ppo import checkpoint_problem, latest_complete_checkpoint

    _flip_one_byte(run_copy / "checkpoint-2" / "model.safetensors")
    assert "model.safetensors is corrupted" in checkpoint_problem(str(run_copy / "checkpoint-2"))
    with pytest.warns(UserWarning, match=r"checkpoint-2: model.safetensors is corrupted"):
        assert latest_complete_checkpoint(str(run_copy)).endswith("checkpoint-1")
    with pytest.raises(ValueError, match=r"model.safetensors is corrupted"):
        _ppo(tiny_paths, run_copy).train(resume_from_checkpoint=str(run_copy / "checkpoint-2"))


def _saved_dir(root: Path, kind: str) -> Path:
    """A saved directory of each place, marked complete the way that place marks it."""
    from trl_extras.utils.resume import write_manifest

    d = root / kind
    (d / "model").mkdir(parents=True)
    (d / "model" / "model.safetensors").write_bytes(os.urandom(4096))
    (d / "result.json").write_text(json.dumps({"model": str(d / "model")}))
    (d / "metrics.json").write_text("{}")
    write_manifest(d, kind)
    return d


def _cem_round_complete(d: Path) -> bool:
    from trl_extras.utils.resume import verify

    return verify(d, "cem_round") is None


def _pipeline_stage_complete(d: Path) -> bool:
    from trl_extras.pipeline.stages import _finished_stage

    return _finished_stage(d, "sft", hashes=True) is not None


def _iterate_step_complete(d: Path) -> bool:
    from trl_extras.refresh.iterate import _done

    return _done(d) is not None


def _ensemble_member_complete(d: Path) -> bool:
    from trl_extras.rewards.ensemble.training import MEMBER_KIND
    from trl_extras.utils.resume import verify

    return verify(d, MEMBER_KIND) is None


def _ppo_checkpoint_complete(d: Path) -> bool:
    from trl_extras.trainers.ppo import checkpoint_problem

    return checkpoint_problem(str(d)) is None


PLACES = {
    "ppo_checkpoint": _ppo_checkpoint_complete,
    "cem_round": _cem_round_complete,
    "pipeline_stage": _pipeline_stage_complete,
    "iterate_step": _iterate_step_complete,
    "ensemble_member": _ensemble_member_complete,
}


@pytest.mark.parametrize("kind", sorted(PLACES))
def test_every_place_detects_a_same_size_corruption(tmp_path, kind):
    d = _saved_dir(tmp_path, kind)
    assert PLACES[kind](d)
    _flip_one_byte(d / "model" / "model.safetensors")  # same size, other bytes
    assert not PLACES[kind](d)


# ---------------------------------------------------------------------------------------------------------------
# one writer per output directory
# ---------------------------------------------------------------------------------------------------------------
_HOLD = ("import sys, time; sys.path.insert(0, sys.argv[2]); from trl_extras.utils.resume import OutputDirLock; "
         "l = OutputDirLock(sys.argv[1], 'holder').acquire(); print('held', flush=True); time.sleep(600)")  # fmt: skip


def _holder(directory: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(directory), str(ROOT)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _start_ppo(tiny_paths, d):
    _ppo(tiny_paths, d, max_steps=1).train()


def _start_cem(tiny_paths, d):
    _cem(tiny_paths, d, _gold(), num_rounds=1).train()


def _start_ensemble(tiny_paths, d):
    from trl import RewardConfig

    from trl_extras.rewards.ensemble import train_reward_ensemble
    from trl_extras.testbed import clean_pairs

    args = RewardConfig(output_dir=str(d / "runs"), use_cpu=True, report_to="none", save_strategy="no", max_steps=1)
    train_reward_ensemble(tiny_paths["reward"], clean_pairs(8, seed=0), args=args, k=2, output_dir=d, progress=False)


def _start_iterate(tiny_paths, d):
    from trl_extras.refresh.iterate import IterateConfig, run_iterate

    run_iterate(IterateConfig(output_dir=str(d), policy_model=tiny_paths["policy"], reward_model=tiny_paths["reward"],
                              rounds=1, num_pairs=1, ppo_max_steps=1, use_cpu=True))  # fmt: skip


def _start_pipeline(tiny_paths, d):
    from trl_extras.pipeline.config import PipelineConfig
    from trl_extras.pipeline.stages import run_pipeline

    run_pipeline(PipelineConfig(output_dir=str(d), stages=["sft"], use_cpu=True), progress=False)


STARTS = {"ppo": _start_ppo, "cem": _start_cem, "ensemble": _start_ensemble, "iterate": _start_iterate,
          "pipeline": _start_pipeline}  # fmt: skip


@pytest.mark.parametrize("place", sorted(STARTS))
def test_a_second_writer_is_refused_while_the_first_runs(tiny_paths, tmp_path, place):
    d = tmp_path / "out"
    holder = _holder(d)
    try:
        start = time.perf_counter()
        with pytest.raises(RuntimeError, match=r"in use by another holder \(pid \d+"):
            STARTS[place](tiny_paths, d)
        assert time.perf_counter() - start < 60  # refused before any work
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_left_by_kill_9_is_taken_over(tmp_path):
    from trl_extras.utils.resume import LOCK_FILE, OutputDirLock

    d = tmp_path / "out"
    holder = _holder(d)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (d / LOCK_FILE).exists()  # left behind
    with pytest.warns(UserWarning, match=r"stale lock.*process \d+ is gone"):
        lock = OutputDirLock(d, "second").acquire()
    assert json.loads((d / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (d / LOCK_FILE).exists()
    # a pid reused by another process (start time differs) is stale too
    (d / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": __import__("socket").gethostname(), "start_time": "0"}))
    with pytest.warns(UserWarning, match=r"now belongs to another process"):
        OutputDirLock(d, "third").acquire().release()


# ---------------------------------------------------------------------------------------------------------------
# writability before work, a full disk names the file and the disk and keeps the previous checkpoint
# ---------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _read_only(path: Path):
    """Make ``path`` read-only for this process: chmod for a normal user; root ignores modes, so for root the
    immutable attribute (``chattr +i``), or skip where the file system or the container does not allow it."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield
        finally:
            path.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
        pytest.skip("cannot make a directory read-only for root here (no chattr +i)")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)


def test_a_read_only_output_dir_fails_before_any_step(tiny_paths, tmp_path):
    """Before: PPO trained every step and crashed at the first save, losing all of it."""
    out = tmp_path / "ro"
    out.mkdir()
    trainer = _ppo(tiny_paths, out, max_steps=1)
    with _read_only(out):
        with pytest.raises(PermissionError, match=r"output_dir .*ro is not writable.*nothing was trained"):
            trainer.train()
    assert trainer.state.global_step == 0


def test_a_full_disk_names_the_checkpoint_and_the_disk_and_keeps_the_previous_one(tiny_paths, tmp_path, monkeypatch):
    import torch

    from trl_extras.trainers.ppo import checkpoint_problem, latest_complete_checkpoint

    real_save = torch.save

    def full_disk_at_step_2(obj, f, *args, **kwargs):
        if "checkpoint-2" in str(f):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4096 vs 4036")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk_at_step_2)
    out = tmp_path / "run"
    with pytest.raises(OSError, match=r"checkpoint .*checkpoint-2.*inline_container.*GiB free.*kept"):
        _ppo(tiny_paths, out, max_steps=2).train()
    assert not (out / "checkpoint-2").exists()  # the unfinished one is gone ...
    assert checkpoint_problem(str(out / "checkpoint-1")) is None  # ... the previous one is complete
    assert latest_complete_checkpoint(str(out)).endswith("checkpoint-1")


def test_cem_a_full_disk_names_the_round_and_the_disk_and_keeps_the_generations(tiny_paths, tmp_path, monkeypatch):
    import errno

    import trl_extras.utils.atomic as atomic

    def no_space(tmp_dir, final_dir):
        raise OSError(errno.ENOSPC, "No space left on device", str(final_dir))

    monkeypatch.setattr(atomic, "publish_dir", no_space)
    out = tmp_path / "cem"
    trainer = _cem(tiny_paths, out, _gold(), num_rounds=1)
    monkeypatch.setattr(type(trainer), "_save_dataset", staticmethod(lambda ds, path: ds.save_to_disk(str(path))))
    with pytest.raises(OSError, match=r"round 0 model .*model.tmp.*No space left.*GiB free.*generations .*kept"):
        trainer.train()
    assert (out / "round_0" / "generations").exists() and not (out / "round_0" / "model.tmp").exists()


# ---------------------------------------------------------------------------------------------------------------
# real processes: kill -9 at named points with the DEFAULT num_ppo_epochs, SIGTERM stops at a safe point
# ---------------------------------------------------------------------------------------------------------------
def _run(args: list[str], kill_at: str | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    from trl_extras.utils.atomic import KILL_ENV

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(KILL_ENV, None)
    if kill_at:
        env[KILL_ENV] = kill_at
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env=env)  # fmt: skip


@pytest.fixture(scope="module")
def ppo_default_epochs_reference(tiny_paths, tmp_path_factory):
    """The uninterrupted 6-step run with PPOConfig's default num_ppo_epochs (4): two rollout batches, checkpoints
    inside the first batch's epochs (steps 1-3) and at its end (step 4)."""
    tmp = tmp_path_factory.mktemp("ref")
    full = _run(["ppo", tiny_paths["policy"], tiny_paths["reward"], str(tmp / "ref"), "6", "0", str(tmp / "ref.json"),
                 "default"])  # fmt: skip
    assert full.returncode == 0, full.stderr[-3000:]
    return json.loads((tmp / "ref.json").read_text())


# kill points: inside the first rollout batch's epochs (while writing the PPO part of a checkpoint, before its
# manifest, after an optimizer step before its checkpoint) and in the second batch
KILL_POINTS = ["ppo_checkpoint_extras:2", "ppo_checkpoint_manifest:3", "ppo_step_end:2", "ppo_step_end:5"]


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", KILL_POINTS)
def test_ppo_killed_at_default_num_ppo_epochs_resumes_exactly(tiny_paths, tmp_path, ppo_default_epochs_reference,
                                                              kill_at):  # fmt: skip
    from trl_extras.trainers.ppo import PPOConfig

    assert PPOConfig(output_dir=str(tmp_path)).num_ppo_epochs == 4  # the default this test is about
    run = tmp_path / "run"
    args = ["ppo", tiny_paths["policy"], tiny_paths["reward"], str(run), "6"]
    killed = _run([*args, "0", str(tmp_path / "x.json"), "default"], kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = _run([*args, "1", str(tmp_path / "r.json"), "default"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["global_step"] == 6
    a = ppo_default_epochs_reference
    assert (a["policy"], a["value"]) == (result["policy"], result["value"])  # identical to the uninterrupted run
    assert "[ppo] resuming from checkpoint" in resumed.stdout


_SIGNAL_RUN = """
import sys, warnings
sys.path.insert(0, sys.argv[1])
from datasets import Dataset
from trl_extras import PPOConfig, PPOTrainer

def reward(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]

args = PPOConfig(output_dir=sys.argv[2], use_cpu=True, bf16=False, report_to="none", save_strategy="steps",
                 save_steps=1000, gradient_checkpointing=False, disable_tqdm=True, logging_steps=1,
                 per_device_train_batch_size=4, num_mini_batches=1, max_steps=500, max_completion_length=4, seed=0)
trainer = PPOTrainer(sys.argv[3], reward_funcs=reward, args=args, value_model=sys.argv[4],
                     train_dataset=Dataset.from_dict({"prompt": ["1 2 >"] * 16}))
trainer.train()
print("returned at step", trainer.state.global_step, flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_stops_at_a_safe_point_with_a_complete_checkpoint(tiny_paths, tmp_path, sig):
    from trl_extras.trainers.ppo import checkpoint_problem

    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _SIGNAL_RUN, str(ROOT), str(out), tiny_paths["policy"],
                             tiny_paths["reward"]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)  # fmt: skip
    lines = []
    for line in proc.stdout:  # training is under way once the first step is logged
        lines.append(line)
        if "'loss'" in line:
            break
    proc.send_signal(getattr(signal, sig))
    rest, _ = proc.communicate(timeout=600)
    text = "".join(lines) + rest
    assert proc.returncode == 0, text[-3000:]
    assert f"stopped by {sig}" in text and "returned at step" in text
    step = int(text.split("returned at step")[1].split()[0])
    assert 0 < step < 500
    assert checkpoint_problem(str(out / f"checkpoint-{step}")) is None  # a final, complete checkpoint


_WORKER = """
import faulthandler, os, signal, sys
faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test dumps the stacks of a worker that hangs
from datasets import Dataset
from trl_extras import PPOConfig, PPOTrainer

def reward(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]

out, policy, value = sys.argv[1:4]
args = PPOConfig(output_dir=out, use_cpu=True, bf16=False, report_to="none", save_strategy="steps", save_steps=1000,
                 gradient_checkpointing=False, disable_tqdm=True, logging_steps=1, per_device_train_batch_size=2,
                 num_mini_batches=1, max_steps=500, max_completion_length=4, seed=0)
trainer = PPOTrainer(policy, reward_funcs=reward, args=args, value_model=value,
                     train_dataset=Dataset.from_dict({"prompt": ["1 2 >"] * 16}))
print("worker pid", os.getpid(), flush=True)
trainer.train()
print("worker returned at step", trainer.state.global_step, flush=True)
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_kill_9_of_the_launchers_process_group_stops_the_workers_at_a_safe_point(tiny_paths, tmp_path):
    """``kill -9 -<pgid>`` of ``accelerate launch``: the workers (own sessions) used to train on and write
    checkpoints; now the kernel signals them when their parent dies (``utils.resume.exit_with_parent``) and they stop
    together after a step, with a complete final checkpoint."""
    from helpers import _free_port

    from trl_extras.trainers.ppo import checkpoint_problem

    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    if launcher is None:
        pytest.skip("the `accelerate` launcher is not installed")
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    out, log = tmp_path / "run", tmp_path / "log.txt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [launcher, "launch", "--config_file", str(ROOT / "recipes" / "accelerate" / "cpu_2proc.yaml"),
           "--main_process_port", str(_free_port()), str(script), str(out), tiny_paths["policy"], tiny_paths["reward"]]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.time() + 300
    while "'loss'" not in log.read_text() and time.time() < deadline and proc.poll() is None:
        time.sleep(1)
    text = log.read_text()
    assert "'loss'" in text, text[-3000:]
    workers = [int(line.split()[-1]) for line in text.splitlines() if line.startswith("worker pid")]
    assert len(workers) == 2
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher's whole group (the workers are not in it)
    proc.wait()
    def running(pid):  # an exited worker may stay a zombie (its new parent, pid 1, need not reap it)
        try:
            return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
        except OSError:
            return False

    deadline = time.time() + 180
    while any(running(pid) for pid in workers) and time.time() < deadline:
        time.sleep(1)
    alive = [pid for pid in workers if running(pid)]
    for pid in alive:  # a hanging worker: dump its stacks into the log
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGUSR1)
    time.sleep(2 if alive else 0)
    for pid in alive:  # never leave them running, whatever the outcome
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    text = log.read_text()
    assert not alive, f"workers still running: {alive}\n{text[-6000:]}"
    assert "stopped by the launcher's exit" in text and "stopping now" not in text, text[-3000:]
    steps = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert steps and 0 < steps[-1] < 500
    assert checkpoint_problem(str(out / f"checkpoint-{steps[-1]}")) is None  # the final checkpoint is complete
