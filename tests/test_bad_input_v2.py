"""Issue 22 item 4: input that did nothing, or the wrong thing, silently -- now a clear error before training.

One row per case (the neighbours of the cases the issue reports); every row trained silently, or failed with an
unclear error, before this change. Same conventions as ``tests/test_bad_input.py``.
"""

from __future__ import annotations

import json

import pytest
from test_bad_input import CPU, PAIR, Env, cli, pairs

LONG_PROMPT = "1 2 " * 80 + ">"  # 321 characters = tokens in the testbed's character tokenizer (+ BOS)


def _reward(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]


def _ppo(env, prompts, **kw):
    from datasets import Dataset

    from trl_extras.trainers.ppo import PPOConfig, PPOTrainer

    settings = dict(per_device_train_batch_size=4, num_mini_batches=1, max_completion_length=4)
    settings.update(kw)
    return PPOTrainer(env.tiny["policy"], reward_funcs=_reward, args=PPOConfig(str(env.tmp / "ppo"), **CPU, **settings),
                      train_dataset=Dataset.from_dict({"prompt": prompts}))  # fmt: skip


def _cem(env, prompts, **kw):
    from datasets import Dataset

    from trl_extras.trainers.cem import CEMConfig, CEMTrainer

    settings = dict(num_generations=4, elite_top_k=1, max_completion_length=4)
    settings.update(kw)
    return CEMTrainer(env.tiny["policy"], reward_funcs=_reward, args=CEMConfig(str(env.tmp / "cem"), **CPU, **settings),
                      train_dataset=Dataset.from_dict({"prompt": prompts}))  # fmt: skip


def _grpo(env, prompts, **kw):
    from datasets import Dataset

    from trl_extras.trainers.exact_kl_grpo import ExactKLGRPOConfig, ExactKLGRPOTrainer

    settings = dict(per_device_train_batch_size=4, num_generations=2, max_completion_length=4, beta=0.0)
    settings.update(kw)
    args = ExactKLGRPOConfig(str(env.tmp / "grpo"), **CPU, **settings)
    return ExactKLGRPOTrainer(env.tiny["policy"], reward_funcs=_reward, args=args,
                              train_dataset=Dataset.from_dict({"prompt": prompts}))  # fmt: skip


def _rewards(fn, n=2):
    from trl_extras.rewards.functions import RewardFunctions

    return RewardFunctions(fn)(["1 2 >"] * n, [" 1 2"] * n)


def _two_stage(env, data):
    from trl_extras.rewards.two_stage import TwoStageRewardConfig, TwoStageRewardTrainer

    return TwoStageRewardTrainer(env.tiny["reward"], args=TwoStageRewardConfig(str(env.tmp / "rm"), **CPU),
                                 train_dataset=data, pretrain_dataset=pairs())  # fmt: skip


def _ensemble_train(env, data):
    from trl import RewardConfig

    from trl_extras.rewards.ensemble import train_reward_ensemble

    return train_reward_ensemble(env.tiny["policy"], data, args=RewardConfig(str(env.tmp / "ens"), **CPU), k=2)


def _yaml(env, text: str) -> str:
    return env.file("recipe.yaml", text=text)


def _manifest(env, members):
    from trl_extras.rewards.ensemble import RewardEnsemble
    from trl_extras.rewards.ensemble.io import MANIFEST_FORMAT, MANIFEST_NAME

    directory = env.tmp / "ens_dir"
    directory.mkdir()
    (directory / MANIFEST_NAME).write_text(json.dumps({"format": MANIFEST_FORMAT, "layout": "separate",
                                                       "members": members, "allow_uncalibrated": True}))  # fmt: skip
    return RewardEnsemble.from_pretrained(directory, allow_uncalibrated=True)


# Two emoji the testbed's character tokenizer does not know: both become its unknown token.
EMOJI_A, EMOJI_B = " 1 \N{GRINNING FACE}", " 1 \N{SMILING FACE WITH OPEN MOUTH}"

CASES = [
    # ---------------------------------------------------------------- a dataset smaller than one rollout batch (0 steps)
    ("ppo 3 prompts, batch 4", lambda e: _ppo(e, ["1 2 >"] * 3), r"has 3 prompts but one rollout batch needs 4"),
    ("ppo 8 prompts, gradient_accumulation_steps 3", lambda e: _ppo(e, ["1 2 >"] * 8, gradient_accumulation_steps=3),
     r"has 8 prompts but one rollout batch needs 12 \(.*gradient_accumulation_steps 3"),
    ("ppo 8 prompts, num_mini_batches 3", lambda e: _ppo(e, ["1 2 >"] * 8, num_mini_batches=3),
     r"has 8 prompts but one rollout batch needs 12 \(.*num_mini_batches 3"),
    ("ppo 1 prompt, 2 generations", lambda e: _ppo(e, ["1 2 >"], num_generations=2), r"has 1 prompts but one rollout batch needs 2"),
    ("grpo 5 prompts, gradient_accumulation_steps 3", lambda e: _grpo(e, ["1 2 >"] * 5, gradient_accumulation_steps=3),
     r"has 5 prompts but one rollout batch needs 6"),
    # ---------------------------------------------------------------- prompt + completion past max_position_embeddings
    ("ppo default max_prompt_length on a 256-position model", lambda e: _ppo(e, [LONG_PROMPT] * 4, max_completion_length=8),
     r"PPOTrainer: prompts of up to 322 tokens \(max_prompt_length=512\).*max_position_embeddings=256.*max_prompt_length <= 248"),
    ("ppo max_completion_length = positions", lambda e: _ppo(e, ["1 2 >"] * 4, max_completion_length=256),
     r"max_completion_length=256 leaves no room.*max_position_embeddings=256"),
    ("cem long prompts", lambda e: _cem(e, [LONG_PROMPT], max_completion_length=8), r"CEMTrainer: prompts of up to 322 tokens"),
    ("grpo long prompts", lambda e: _grpo(e, [LONG_PROMPT] * 2, max_completion_length=8), r"ExactKLGRPOTrainer: prompts of up to 322 tokens"),
    # ---------------------------------------------------------------- the wrong thing as a reward or a prompt
    ("causal LM as reward model", lambda e: _rewards(e.tiny["policy"]), r"is a LlamaForCausalLM checkpoint, not a reward model"),
    ("ppo cli causal LM as --reward_model_path", lambda e: cli("ppo", "--model_name_or_path", e.tiny["policy"], "--reward_model_path",
                                                                e.tiny["policy"], "--output_dir", str(e.tmp / "o"), "--use_cpu", "true",
                                                                "--bf16", "false", "--report_to", "none"), r"LlamaForCausalLM checkpoint, not a reward model"),
    ("reward function returns a dict", lambda e: _rewards(lambda prompts, completions, **k: {"a": 1.0, "b": 2.0}),
     r"returned dict .*expected a list of 2 floats"),
    ("ppo chat prompt without role", lambda e: _ppo(e, [[{"content": "1 2 >"}]] * 4), r"prompt at row 0: message 0 has no 'role'"),
    ("ppo chat prompt unknown role", lambda e: _ppo(e, [[{"role": "narrator", "content": "1 2 >"}]] * 4),
     r"message 0 has the unknown role 'narrator'"),
    ("ppo prompt column of ints", lambda e: _ppo(e, [1, 2, 3, 4]), r"prompt at row 0 is int 1; a prompt must be text"),
    ("cem prompt column of ints", lambda e: _cem(e, [1, 2]), r"prompt at row 0 is int 1"),
    ("cem chat prompt unknown role", lambda e: _cem(e, [[{"role": "human", "content": "1 2 >"}]]), r"unknown role 'human'"),
    ("grpo prompt column of ints", lambda e: _grpo(e, [1, 2, 3, 4]), r"prompt at row 0 is int 1"),
    # ---------------------------------------------------------------- pairs that differ as text only
    ("two-stage pairs identical after tokenization", lambda e: _two_stage(e, pairs({"chosen": EMOJI_A, "rejected": EMOJI_B})),
     r"train_dataset: row 0 has chosen .* tokenize identically"),
    ("ensemble pairs identical after tokenization", lambda e: _ensemble_train(e, pairs(PAIR, {"chosen": EMOJI_A, "rejected": EMOJI_B})),
     r"train_dataset: row 1 has chosen .* tokenize identically"),
    # ---------------------------------------------------------------- recipes
    ("yaml duplicate key", lambda e: cli("ppo", "--config", _yaml(e, "kl_coef: 0.1\nkl_coef: 0.2\n")), r"line 2: duplicate key 'kl_coef'"),
    ("yaml alias bomb", lambda e: cli("ppo", "--config", _yaml(e, "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a]\n"
                                                                  "c: [*b, *b, *b, *b]\n")), r"YAML aliases \(\*a\) are not supported"),
    ("yaml output_dir null", lambda e: cli("ppo", "--config", _yaml(e, "output_dir: null\n")), r"output_dir: null is not a directory"),
    ("yaml output_dir empty", lambda e: cli("ppo", "--config", _yaml(e, "output_dir: ''\n")), r"output_dir: '' is not a directory"),
    ("cli output_dir empty", lambda e: cli("cem", "--output_dir", "", "--use_cpu", "true", "--bf16", "false"), r"--output_dir '' is not a directory"),
    ("yaml env sets the crash-test hook", lambda e: cli("ppo", "--config", _yaml(e, "env:\n  TRL_EXTRAS_KILL_AT: cem_round_done:0\n")),
     r"TRL_EXTRAS_KILL_AT is the crash-test hook.*cannot set it"),
    ("yaml string for a list", lambda e: cli("ppo", "--config", _yaml(e, f"reward_model_path: {e.tmp / 'no_rm'}\n"),
                                             "--output_dir", str(e.tmp / "o")), r"--reward_(model_path|funcs): '.*no_rm' does not exist"),
    # ---------------------------------------------------------------- ensemble manifests pointing outside their directory
    ("ensemble manifest absolute member", lambda e: _manifest(e, [e.tiny["reward"], e.tiny["reward"]]),
     r"member path '/.*' is not a relative path inside the ensemble directory"),
    ("ensemble manifest .. member", lambda e: _manifest(e, ["../../tiny0/reward", "member_1"]), r"member path '\.\./\.\./tiny0/reward' is not"),
]


@pytest.mark.parametrize(("name", "make", "words"), CASES, ids=[c[0] for c in CASES])
def test_silent_or_wrong_input_gets_a_clear_error(name, make, words, tmp_path, tiny_paths):
    with pytest.raises((ValueError, TypeError)) as err:
        make(Env(tmp_path, tiny_paths, None))
    assert err.match(words), f"{name}: {type(err.value).__name__}: {err.value}"
    assert "Traceback" not in str(err.value)


def test_recipe_string_for_a_list_field_is_a_one_element_list(tmp_path):
    from trl import ModelConfig

    from trl_extras.scripts.ppo import PPOScriptArguments
    from trl_extras.scripts.utils import parse_args
    from trl_extras.trainers.ppo import PPOConfig

    recipe = tmp_path / "r.yaml"
    recipe.write_text("reward_model_path: out/rm\noutput_dir: out/ppo\n")
    script_args, config, _ = parse_args([PPOScriptArguments, PPOConfig, ModelConfig], ["--config", str(recipe)], "ppo")
    assert script_args.reward_model_path == ["out/rm"]  # not ['o', 'u', 't', '/', ...]


# ---------------------------------------------------------------------------------------------------- network
NO_NETWORK_SCRIPT = r"""
import socket, sys, traceback

calls = []


def refuse(name):
    def call(*args, **kwargs):
        calls.append(f"{name}{args[:2]!r}")
        raise OSError(f"network call refused by the test: {name}{args[:2]!r}")
    return call


socket.getaddrinfo = refuse("getaddrinfo")
socket.create_connection = refuse("create_connection")
socket.socket.connect = refuse("socket.connect")
socket.socket.connect_ex = refuse("socket.connect_ex")

import trl_extras.trainers.ppo  # noqa: E402
print("IMPORT_CALLS", calls, flush=True)

from datasets import Dataset  # noqa: E402
from trl_extras.trainers.ppo import PPOConfig, PPOTrainer  # noqa: E402

policy, out = sys.argv[1], sys.argv[2]
args = PPOConfig(out, use_cpu=True, bf16=False, report_to="none", save_strategy="no", max_steps=1,
                 per_device_train_batch_size=2, num_ppo_epochs=1, max_completion_length=4, disable_tqdm=True)
trainer = PPOTrainer(policy, reward_funcs=lambda prompts, completions, **k: [0.0] * len(prompts), args=args,
                     train_dataset=Dataset.from_dict({"prompt": ["1 2 >", "3 1 >"]}))
trainer.train()
print("TRAIN_CALLS", calls, flush=True)
"""


def test_import_and_local_training_make_no_network_call(tiny_paths, tmp_path):
    """Without offline variables (a user's plain environment): importing the PPO trainer and training on local
    models connects to nothing and resolves no host name."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    # CI too: TRL's telemetry stays silent when CI is set, which would hide its ping from this test
    env = {k: v for k, v in os.environ.items()
           if not k.endswith("_OFFLINE") and k not in ("HF_HUB_DISABLE_TELEMETRY", "CI")}  # fmt: skip
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", NO_NETWORK_SCRIPT, tiny_paths["policy"], str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert "IMPORT_CALLS []" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TRAIN_CALLS []" in proc.stdout, proc.stdout[-3000:]
