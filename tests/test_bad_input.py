"""The bad-input battery: one row per case (input -> words the error must contain). Every error names the field,
file or column and says what is expected, and is raised at construction or argument parsing -- before models load
where possible -- never a trace from deep inside torch/datasets/transformers, never a silent run.

Rows marked ``# was unclear`` or ``# was silent`` are the cases issue 11 found; the others were already clear and
are kept here so they stay that way.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest

from trl_extras.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
CPU_FLAGS = ("--use_cpu", "true", "--bf16", "false", "--report_to", "none")  # TRL configs default to bf16
CPU = dict(use_cpu=True, bf16=False, report_to="none", save_strategy="no", gradient_checkpointing=False)


class Env:
    """What rows need: a scratch directory, the tiny models, and a PPO checkpoint to damage."""

    def __init__(self, tmp: Path, tiny: dict, checkpoint_factory):
        self.tmp, self.tiny, self._checkpoint_factory = tmp, tiny, checkpoint_factory

    def file(self, name: str, rows: list[dict] | None = None, text: str | None = None) -> str:
        path = self.tmp / name
        path.write_text(text if text is not None else "".join(json.dumps(r) + "\n" for r in rows))
        return str(path)

    def checkpoint(self, damage):
        trainer, source = self._checkpoint_factory()
        copy = self.tmp / "checkpoint-1"
        shutil.copytree(source, copy)
        damage(copy)
        return trainer, str(copy)


def cli(*argv: str):
    """Run a subcommand in-process; a non-zero exit becomes ValueError(stderr) so rows compare messages alike."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = cli_main(list(argv))
        except SystemExit as exit_:
            code = exit_.code
    if code not in (0, None):
        raise ValueError(err.getvalue())


PAIR = {"prompt": "3 1 >", "chosen": " 1 3", "rejected": " 3 1"}


def pairs(*rows):
    from datasets import Dataset

    return Dataset.from_list([{**PAIR, **r} for r in rows] or [PAIR])


def _ppo_config(env, **kw):
    from trl_extras.trainers.ppo import PPOConfig

    return PPOConfig(output_dir=str(env.tmp / "ppo"), **CPU, **kw)


def _cem_config(env, **kw):
    from trl_extras.trainers.cem import CEMConfig

    values = dict(num_generations=4, elite_top_k=1)
    values.update(kw)
    return CEMConfig(output_dir=str(env.tmp / "cem"), **CPU, **values)


def _two_stage(env, **datasets):
    from trl_extras.rewards.two_stage import TwoStageRewardConfig, TwoStageRewardTrainer

    kw = {"train_dataset": pairs(), "pretrain_dataset": pairs(), **datasets}
    return TwoStageRewardTrainer(env.tiny["reward"], args=TwoStageRewardConfig(str(env.tmp / "rm"), **CPU), **kw)


def _ensemble_train(env, dataset, **kw):
    from trl import RewardConfig

    from trl_extras.rewards.ensemble import train_reward_ensemble

    return train_reward_ensemble(env.tiny["policy"], dataset, args=RewardConfig(str(env.tmp / "ens"), **CPU), **kw)


def _ensemble(env, n=2, **kw):
    from trl_extras.rewards.ensemble import RewardEnsemble

    return RewardEnsemble([env.tiny["reward"]] * n, **kw)


def _rewards(fn, n=2):
    from trl_extras.rewards.functions import RewardFunctions

    return RewardFunctions(fn)(["1 2 >"] * n, [" 1 2"] * n)


def _cem_trainer(env, **kw):
    from datasets import Dataset

    from trl_extras.trainers.cem import CEMTrainer

    data = kw.pop("train_dataset", Dataset.from_dict({"prompt": ["1 2 >"]}))
    return CEMTrainer(env.tiny["policy"], reward_funcs=lambda prompts, completions, **k: [0.0] * len(prompts),
                      args=_cem_config(env, **kw), train_dataset=data)  # fmt: skip


def _pipeline(env, **kw):
    from trl_extras.pipeline.config import PipelineConfig

    return PipelineConfig(output_dir=str(env.tmp / "pipe"), **kw)


def _yaml(env, text: str) -> str:
    return env.file("recipe.yaml", text=text)


def _truncate(name):
    def damage(path: Path):
        data = (path / name).read_bytes()
        (path / name).write_bytes(data[: len(data) // 2])

    return damage


CASES = [
    # ---------------------------------------------------------------- issue 11: unclear today
    ("ppo yaml kl_coef list", lambda e: cli("ppo", "--config", _yaml(e, "kl_coef: [1, 2]\n"), "--output_dir",
                                            str(e.tmp / "o")), r"kl_coef must be a number, got \[1, 2\]"),  # was unclear
    ("ppo missing reward model path", lambda e: cli("ppo", "--reward_model_path", str(e.tmp / "no_rm"), "--output_dir",
                                                    str(e.tmp / "o")), r"--reward_funcs: .*no_rm' does not exist"),  # was unclear (the deprecated flag folds into --reward_funcs)
    ("ppo missing policy path", lambda e: cli("ppo", "--model_name_or_path", str(e.tmp / "no_policy"), "--reward_funcs",
                                              "gold", "--output_dir", str(e.tmp / "o")), r"--model_name_or_path: .*no_policy' does not exist"),  # was unclear
    ("cem missing policy path", lambda e: cli("cem", "--model_name_or_path", "./no/such/policy", "--output_dir",
                                              str(e.tmp / "o"), *CPU_FLAGS), r"--model_name_or_path: './no/such/policy' does not exist"),  # was unclear
    ("reward model scorer missing path", lambda e: _rewards(str(e.tmp / "missing_rm")), r"reward model path: .*missing_rm' does not exist"),  # was unclear
    ("reward-two-stage pairs without chosen", lambda e: cli(
        "reward-two-stage", "--dataset_name", e.file("p.jsonl", [{"prompt": "1 >", "rejected": " 1"}]),
        "--model_name_or_path", e.tiny["reward"], "--output_dir", str(e.tmp / "o"), *CPU_FLAGS), r"p.jsonl.*lacks column\(s\) \['chosen'\]"),  # was unclear
    ("reward-filter pairs without chosen", lambda e: cli(
        "reward-filter", "--dataset_name", e.file("f.jsonl", [{"prompt": "1 >", "rejected": " 1"}]),
        "--model_name_or_path", e.tiny["reward"], "--output_dir", str(e.tmp / "o"), *CPU_FLAGS), r"f.jsonl.*lacks column\(s\) \['chosen'\]"),  # was unclear
    ("sbs empty prompts file", lambda e: cli("sbs", "--judge", "gold", "--prompts_file", e.file("empty.jsonl", text="")),
     r"--prompts_file .*empty.jsonl' is empty"),  # was unclear
    ("ppo max_completion_length 0", lambda e: _ppo_config(e, max_completion_length=0), r"max_completion_length must be in \[1"),  # was unclear
    ("cem max_completion_length 0", lambda e: _cem_config(e, max_completion_length=0), r"max_completion_length must be in \[1"),  # was unclear
    ("ppo per_device_train_batch_size 0", lambda e: _ppo_config(e, per_device_train_batch_size=0), r"per_device_train_batch_size must be in \[1"),  # was unclear
    ("cem per_device_train_batch_size 0", lambda e: _cem_config(e, per_device_train_batch_size=0), r"per_device_train_batch_size must be in \[1"),  # was unclear
    ("reward function returns strings", lambda e: _rewards(lambda prompts, completions, **k: ["good"] * len(prompts)),
     r"returned str 'good' for completion 0; rewards must be numbers"),  # was unclear
    ("reward function returns one string", lambda e: _rewards(lambda prompts, completions, **k: "0.5"), r"returned str '0.5'; expected a list of 2 floats"),  # was unclear
    ("resume truncated model.safetensors", lambda e: (lambda t, p: t.train(resume_from_checkpoint=p))(*e.checkpoint(_truncate("model.safetensors"))),
     r"checkpoint-1: model.safetensors is truncated"),  # was unclear
    ("resume garbage trainer_state.json", lambda e: (lambda t, p: t.train(resume_from_checkpoint=p))(
        *e.checkpoint(lambda c: (c / "trainer_state.json").write_text("{garbage"))), r"checkpoint-1: trainer_state.json is"),  # was unclear
    ("resume truncated optimizer.pt", lambda e: (lambda t, p: t.train(resume_from_checkpoint=p))(*e.checkpoint(_truncate("optimizer.pt"))),
     r"checkpoint-1: optimizer.pt is truncated"),  # was unclear
    ("resume truncated rng_state.pth", lambda e: (lambda t, p: t.train(resume_from_checkpoint=p))(*e.checkpoint(_truncate("rng_state.pth"))),
     r"checkpoint-1: rng_state.pth is truncated"),  # was unclear
    ("resume incomplete checkpoint", lambda e: (lambda t, p: t.train(resume_from_checkpoint=p))(
        *e.checkpoint(lambda c: (c / "resume_manifest.json").unlink())), r"checkpoint-1: no resume_manifest.json .*did not finish"),  # was unclear
    # ---------------------------------------------------------------- issue 11: silent today
    ("two-stage chosen == rejected", lambda e: _two_stage(e, train_dataset=pairs({"rejected": " 1 3"})),
     r"train_dataset: row 0 has identical chosen and rejected"),  # was silent
    ("two-stage empty chosen", lambda e: _two_stage(e, train_dataset=pairs({"chosen": " "})), r"train_dataset: row 0 has an empty 'chosen'"),  # was silent
    ("two-stage empty rejected in pretrain", lambda e: _two_stage(e, pretrain_dataset=pairs({"rejected": ""})),
     r"pretrain_dataset: row 0 has an empty 'rejected'"),  # was silent
    ("two-stage pretrain without rejected", lambda e: _two_stage(e, pretrain_dataset=pairs().remove_columns("rejected")),
     r"pretrain_dataset: .*lacks column\(s\) \['rejected'\]"),  # was silent
    ("ensemble chosen == rejected", lambda e: _ensemble_train(e, pairs({"rejected": " 1 3"})), r"train_dataset: row 0 has identical"),  # was silent
    ("ensemble empty chosen", lambda e: _ensemble_train(e, pairs({"chosen": ""})), r"train_dataset: row 0 has an empty 'chosen'"),  # was silent
    ("reward-ensemble cli identical pairs", lambda e: cli(
        "reward-ensemble", "--dataset_name", e.file("same.jsonl", [{**PAIR, "rejected": PAIR["chosen"]}]),
        "--model_name_or_path", e.tiny["policy"], "--output_dir", str(e.tmp / "o"), *CPU_FLAGS), r"same.jsonl.*identical chosen and rejected"),  # was silent
    ("reward-filter identical pairs before training", lambda e: cli(
        "reward-filter", "--dataset_name", e.file("same2.jsonl", [PAIR, {**PAIR, "rejected": PAIR["chosen"]}]),
        "--model_name_or_path", e.tiny["reward"], "--output_dir", str(e.tmp / "o"), *CPU_FLAGS), r"same2.jsonl.*row 1 has identical"),  # was silent
    ("sbs num_prompts 0", lambda e: cli("sbs", "--judge", "gold", "--num_prompts", "0"), r"--num_prompts must be an integer >= 1"),  # was silent
    ("ppo cliprange negative", lambda e: _ppo_config(e, cliprange=-0.2), r"cliprange must be in \(0"),  # was silent
    ("ppo gamma 2", lambda e: _ppo_config(e, gamma=2.0), r"gamma must be in \[0, 1\], got 2"),  # was silent
    ("ppo lam -1", lambda e: _ppo_config(e, lam=-1.0), r"lam must be in \[0, 1\], got -1"),  # was silent
    ("uncalibrated ensemble as reward", lambda e: _ensemble(e, penalty="variance")(["1 >"], [" 1"]),
     r"not calibrated.*allow_uncalibrated=True"),  # was silent (a warning)
    ("interrupted ensemble directory", lambda e: (
        (e.tmp / "ens_dir" / "member_0").mkdir(parents=True), (e.tmp / "ens_dir" / "member_0" / "member_complete.json").write_text("{}"),
        __import__("trl_extras.rewards.ensemble", fromlist=["x"]).RewardEnsemble.from_pretrained(e.tmp / "ens_dir")),
     r"No ensemble_manifest.json .*interrupted"),  # was silent (loaded uncalibrated)
    ("unknown flag", lambda e: cli("sbs", "--num_promts", "3"), r"unrecognized arguments.*--num_promts"),  # was a ValueError trace
    ("unknown recipe key", lambda e: cli("ppo", "--config", _yaml(e, "kl_coeff: 0.1\n")), r"kl_coeff"),
    ("pipeline stage settings changed", lambda e: _pipeline_mismatch(e), r"Stage 'sft'.*sft_max_steps: 4 -> 8.*--overwrite"),  # was silent
    ("cem rounds settings changed", lambda e: _cem_mismatch(e), r"num_generations: 2 -> 4.*--resume false"),  # was silent
    # ---------------------------------------------------------------- already clear (kept clear)
    ("cem yaml temperature string", lambda e: cli("cem", "--config", _yaml(e, "temperature: hot\n"), "--output_dir",
                                                  str(e.tmp / "o")), r"argument --temperature: invalid float value: 'hot'"),
    ("cem yaml num_generations list", lambda e: cli("cem", "--config", _yaml(e, "num_generations: [4, 8]\n"),
                                                    "--output_dir", str(e.tmp / "o")), r"num_generations must be an integer, got \[4, 8\]"),  # was unclear
    ("pipeline unknown stage", lambda e: _pipeline(e, stages=["sft", "magic"]), r"Unknown stages \['magic'\]"),
    ("pipeline cem_rounds 0", lambda e: _pipeline(e, cem_rounds=0), r"cem_rounds must be in \[1"),  # was silent (no CEM ran)
    ("pipeline drop_easiest 1", lambda e: _pipeline(e, drop_easiest=1.0), r"drop_easiest must be in \[0, 1\)"),  # was unclear (after the RM trained)
    ("pipeline yaml temperature list", lambda e: cli("pipeline", "--config", _yaml(e, "temperature: [1, 2]\n")),
     r"temperature must be a number, got \[1, 2\]"),  # was unclear
    ("pipeline ensemble_size 1", lambda e: _pipeline(e, ensemble_size=1), r"ensemble_size must be >= 2"),
    ("pipeline real data without policy", lambda e: _pipeline(e, prompt_dataset="x.jsonl").check_models(), r"policy_model"),
    ("cem num_generations 1", lambda e: _cem_config(e, num_generations=1, elite_top_k=None, elite_quantile=0.5), r"num_generations=1"),
    ("cem num_rounds 0", lambda e: _cem_config(e, num_rounds=0), r"num_rounds must be >= 1"),
    ("cem no elite rule", lambda e: _cem_config(e, elite_top_k=None), r"at least one elite rule"),
    ("cem top_k keeps all", lambda e: _cem_config(e, elite_top_k=4, dedupe=False), r"elite_top_k=4 keeps every one"),
    ("cem elite_quantile 1.5", lambda e: _cem_config(e, elite_quantile=1.5), r"elite_quantile must be in \[0, 1\]"),
    ("cem quantile end alone", lambda e: _cem_config(e, elite_quantile_end=0.9), r"elite_quantile_end needs elite_quantile"),
    ("cem temperature 0", lambda e: _cem_config(e, temperature=0.0), r"temperatures must be > 0"),
    ("cem sft_mix_ratio negative", lambda e: _cem_config(e, sft_mix_ratio=-0.1), r"sft_mix_ratio, kl_coef and entropy_coef must be >= 0"),
    ("cem prompts_per_round 0", lambda e: _cem_config(e, prompts_per_round=0), r"prompts_per_round must be"),
    ("cem dataset without prompt", lambda e: _cem_trainer(e, train_dataset=pairs().remove_columns("prompt")), r"'prompt' column"),
    ("cem sft mix without sft data", lambda e: _cem_trainer(e, sft_mix_ratio=0.5), r"sft_mix_ratio > 0 needs `sft_dataset`"),
    ("ppo kl_estimator", lambda e: _ppo_config(e, kl_estimator="k9"), r"kl_estimator must be one of"),
    ("ppo advantage_normalization", lambda e: _ppo_config(e, advantage_normalization="z"), r"advantage_normalization must be one of"),
    ("ppo value_model_init", lambda e: _ppo_config(e, value_model_init="x"), r"value_model_init must be"),
    ("ppo group norm with one generation", lambda e: _ppo_config(e, advantage_normalization="group", num_generations=1), r"needs num_generations >= 2"),
    ("ppo rollout not divisible", lambda e: _ppo_config(e, per_device_train_batch_size=3, num_generations=2, num_mini_batches=1), r"divisible by num_generations"),
    ("ppo adaptive kl without target", lambda e: _ppo_config(e, adaptive_kl=True, target_kl=0.0), r"adaptive_kl needs target_kl > 0"),
    ("ppo kl_coef negative", lambda e: _ppo_config(e, kl_coef=-1.0), r"kl_coef must be (>= 0|in \[0)"),
    ("ppo temperature 0", lambda e: _ppo_config(e, temperature=0.0), r"temperature must be (> 0|in \(0)"),
    ("ensemble unknown penalty", lambda e: _ensemble(e, penalty="max"), r"Unknown penalty 'max'"),
    ("ensemble negative coef", lambda e: _ensemble(e, coef=-1), r"coef must be >= 0"),
    ("ensemble one member", lambda e: _ensemble(e, n=1), r"at least 2 members"),
    ("ensemble batch_size 0", lambda e: _ensemble(e, batch_size=0), r"batch_size must be >= 1"),
    ("train ensemble k 1", lambda e: _ensemble_train(e, pairs(), k=1), r"k >= 2"),
    ("train ensemble duplicate seeds", lambda e: _ensemble_train(e, pairs(), k=2, seeds=[1, 1]), r"distinct seeds"),
    ("train ensemble lora_last_layers without peft", lambda e: _ensemble_train(e, pairs(), lora_last_layers=1), r"needs a `peft_config`"),
    ("train ensemble empty", lambda e: _ensemble_train(e, pairs().select([])), r"train_dataset is empty"),
    ("two-stage without pretrain data", lambda e: _two_stage(e, pretrain_dataset=None), r"needs `pretrain_dataset`"),
    ("two-stage pretrain lr 0", lambda e: __import__("trl_extras.rewards.two_stage", fromlist=["x"]).TwoStageRewardConfig(
        str(e.tmp / "r"), pretrain_learning_rate=0.0, **CPU), r"pretrain_learning_rate must be > 0"),
    ("sbs no judge", lambda e: cli("sbs"), r"--reward_funcs is required"),
    ("sbs unknown judge", lambda e: cli("sbs", "--judge", "oracle"), r"--judge must be one of"),
    ("sbs missing prompts file", lambda e: cli("sbs", "--judge", "gold", "--prompts_file", str(e.tmp / "nope.jsonl")), r"--prompts_file .*nope.jsonl' does not exist"),  # was unclear
    ("dataset unsupported file type", lambda e: __import__("trl_extras.utils.data", fromlist=["x"]).load_dataset_from_spec(
        e.file("d.txt", text="x")), r"Unsupported data file .*d.txt"),
    ("dataset missing train split", lambda e: __import__("trl_extras.utils.data", fromlist=["x"]).load_dataset_from_spec(
        e.file("s.jsonl", [PAIR]), split="validation"), r"has splits \['train'\], not 'validation'"),
    ("pipeline prompts without prompt column", lambda e: __import__("trl_extras.pipeline.data", fromlist=["x"]).pipeline_datasets(
        _pipeline(e, policy_model="x", prompt_dataset=e.file("t.jsonl", [{"text": "1 >"}]))), r"no 'prompt' column"),
    ("filter drop_easiest 1.5", lambda e: __import__("trl_extras.rewards.filtering", fromlist=["x"]).select_pairs(
        __import__("torch").zeros(4), drop_easiest=1.5), r"drop_easiest must be in \[0, 1\)"),
    ("filter duplicate ids", lambda e: __import__("trl_extras.rewards.filtering", fromlist=["x"]).ensure_id_column(
        pairs({"id": "a"}, {"id": "a"})), r"duplicate ids"),
    ("reward weights count", lambda e: __import__("trl_extras.rewards.functions", fromlist=["x"]).RewardFunctions(
        [len, len], reward_weights=[1.0]), r"1 reward weights for 2 reward functions"),
    ("reward function wrong count", lambda e: _rewards(lambda prompts, completions, **k: [1.0]), r"returned 1 values for 2 completions"),
    ("reward function NaN", lambda e: _rewards(lambda prompts, completions, **k: [float("nan")] * 2), r"rewards must be finite"),
    ("reward function None", lambda e: _rewards(lambda prompts, completions, **k: None), r"returned None"),
    ("reward of unsupported type", lambda e: _rewards(42), r"Unsupported reward function of type int"),
    ("prompts as one string", lambda e: __import__("trl_extras.evaluation._common", fromlist=["x"]).prompts_from("1 2 >"), r"not a single string"),
    ("gold margins missing column", lambda e: __import__("trl_extras.rewards.pairs", fromlist=["x"]).gold_margins(pairs()), r"column 'gold_chosen'"),
    ("calibration_error shapes", lambda e: __import__("trl_extras.rewards.metrics", fromlist=["x"]).calibration_error(
        __import__("torch").ones(3), __import__("torch").ones(2)), r"shape|same|length|size"),
    ("unknown command", lambda e: cli("no-such-command"), r"unknown command 'no-such-command'"),
]


def _pipeline_mismatch(env):
    from test_pipeline import micro_config

    from trl_extras.pipeline.stages import Context, run_pipeline, stage_settings

    config = micro_config(env.tmp, stages=["sft"])
    stage = env.tmp / "pipe" / "sft"
    stage.mkdir(parents=True)
    (stage / "result.json").write_text(json.dumps({"model": "m", "settings": stage_settings(Context(config, {}), "sft")}))
    from trl_extras.utils.resume import write_manifest

    write_manifest(stage, "pipeline_stage")  # the completion marker, written last
    run_pipeline(micro_config(env.tmp, stages=["sft"], sft_max_steps=8), progress=False)


def _cem_mismatch(env):
    first = _cem_trainer(env, num_generations=2)
    first._check_settings()
    (env.tmp / "cem" / "round_0").mkdir(parents=True)
    _cem_trainer(env, num_generations=4).train()


@pytest.fixture(scope="module")
def ppo_checkpoint(tmp_path_factory, tiny_paths):
    """One tiny PPO step saved as checkpoint-1 (built on first use)."""
    cache = {}

    def make():
        if not cache:
            from helpers import cpu_config

            from trl_extras.testbed import prompt_dataset
            from trl_extras.trainers.ppo import PPOConfig, PPOTrainer

            out = tmp_path_factory.mktemp("ppo_ckpt")
            args = cpu_config(PPOConfig, out, save_strategy="steps", save_steps=1, max_steps=1,
                              per_device_train_batch_size=4, num_mini_batches=1, max_completion_length=4)  # fmt: skip
            trainer = PPOTrainer(tiny_paths["policy"], reward_funcs=lambda prompts, completions, **k: [0.0] * len(prompts),
                                 args=args, train_dataset=prompt_dataset("train").select(range(8)))  # fmt: skip
            trainer.train()
            cache["value"] = (trainer, out / "checkpoint-1")
        return cache["value"]

    return make


def test_battery_has_at_least_58_rows():
    assert len(CASES) >= 58, len(CASES)
    assert len({name for name, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize(("name", "make", "words"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_error(name, make, words, tmp_path, tiny_paths, ppo_checkpoint):
    with pytest.raises((ValueError, TypeError, FileNotFoundError)) as err:
        make(Env(tmp_path, tiny_paths, ppo_checkpoint))
    assert err.match(words), f"{name}: {type(err.value).__name__}: {err.value}"
    assert "Traceback" not in str(err.value)


def test_local_single_split_jsonl_just_works(tmp_path, capsys):
    """`--dataset_name x.jsonl` without `--dataset_test_split ""`: train on it, evaluation skipped with a message."""
    from trl_extras.scripts.reward_two_stage import RewardScriptArguments, train_and_eval_datasets

    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(PAIR) + "\n")
    train, evaluation = train_and_eval_datasets(RewardScriptArguments(dataset_name=str(path)))
    assert len(train) == 1 and evaluation is None
    assert "not 'test'. Evaluation skipped" in capsys.readouterr().err
