"""One CLI vocabulary (issue 21, items 2 and 4): every command that takes rewards takes ``--reward_funcs`` (model
paths, LoRA adapter folders, RewardEnsemble folders, ``module:function`` from the working directory, the testbed's
``gold`` / ``heuristic``) and ``--reward_weights``; old flags warn with the new spelling; the testbed stands in only
when asked for; ``testbed:smollm2`` names the offline model; ``--help`` starts with a description and an example;
runs end with a human summary and full metrics files; model cards name local models and files; reports give n.

The commands run in-process through ``trl_extras.cli.main``; where a run would train, the consumer of the rewards
(the trainer, callback or evaluator) is replaced by a recorder that stops the run, so a case costs a parse and the
loading of tiny models."""

from __future__ import annotations

import importlib
import json
import sys
import uuid
import warnings

import pytest

from trl_extras.cli import COMMANDS, main

CPU = ["--use_cpu", "true", "--bf16", "false", "--report_to", "none"]


class Captured(Exception):
    """Raised by a recorder in place of a trainer: the command got this far with these arguments."""

    def __init__(self, args, kwargs):
        super().__init__("captured")
        self.args, self.kwargs = args, kwargs


def _record(monkeypatch, module: str, name: str):
    def recorder(*args, **kwargs):
        raise Captured(args, kwargs)

    monkeypatch.setattr(importlib.import_module(module), name, recorder)


def _run(argv) -> Captured:
    with pytest.raises(Captured) as caught:
        main(list(map(str, argv)))
    return caught.value


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A reward function in a module of the working directory (not on sys.path): ``<name>:length_reward``."""
    name = f"myreward_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        "def length_reward(prompts, completions, **kwargs):\n    return [float(len(c)) for c in completions]\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    yield name
    sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def reward_dirs(tiny_paths, tmp_path_factory):
    """A RewardEnsemble folder and a LoRA adapter folder of the tiny reward model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trl_extras.rewards.ensemble import RewardEnsemble
    from trl_extras.testbed import TinyModelSpec, build_sequence_classifier

    root = tmp_path_factory.mktemp("rewards")
    tok = AutoTokenizer.from_pretrained(tiny_paths["reward"])
    spec = TinyModelSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    ensemble = RewardEnsemble([build_sequence_classifier(tok, spec, seed=s) for s in (1, 2)], tok)
    ensemble.calibrate(["3 1 >", "2 5 >", "9 4 >", "7 7 >"], [" 1 3", " 5 2", " 4 9", " 7"])
    ensemble_dir = ensemble.save_pretrained(root / "ensemble")
    base = AutoModelForSequenceClassification.from_pretrained(tiny_paths["reward"], num_labels=1)
    lora = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["q_proj", "v_proj"]))
    lora.save_pretrained(root / "adapter")
    tok.save_pretrained(root / "adapter")
    return {"ensemble": str(ensemble_dir), "adapter": str(root / "adapter")}


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["3 1 >", "2 5 >", "9 4 >", "7 7 >"]))
    return str(path)


# command -> (module and name of the reward consumer, how to find the reward(s) in its call, argv before the reward)
def _consumers(tiny_paths, prompts_file, out):
    policy = tiny_paths["policy"]
    return {
        "ppo": ("trl_extras.trainers.ppo", "PPOTrainer", lambda c: c.kwargs["reward_funcs"],
                ["--model_name_or_path", policy, "--testbed_num_train_prompts", 8, "--testbed_num_eval_prompts", 0,
                 "--output_dir", out, *CPU]),
        "cem": ("trl_extras.trainers.cem", "CEMTrainer", lambda c: c.args[1],
                ["--model_name_or_path", policy, "--output_dir", out, *CPU]),
        "grpo-exact-kl": ("trl_extras.trainers.exact_kl_grpo", "ExactKLGRPOTrainer", lambda c: c.kwargs["reward_funcs"],
                          ["--model_name_or_path", policy, "--num_train_prompts", 8, "--output_dir", out, *CPU]),
        "sft-reward-es": ("trl_extras.callbacks.reward_early_stopping", "RewardEarlyStoppingCallback",
                          lambda c: c.args[0],
                          ["--model_name_or_path", policy, "--num_train_examples", 8, "--num_eval_examples", 4,
                           "--output_dir", out, *CPU]),
        "sbs": ("trl_extras.evaluation.side_by_side", "side_by_side", lambda c: c.args[3],
                ["--model_a", policy, "--model_b", policy, "--prompts_file", prompts_file]),
        "synth-pairs": ("trl_extras.evaluation.synthetic_pairs", "synthesize_preference_pairs", lambda c: c.args[1],
                        ["--policy", policy, "--prompts_file", prompts_file, "--output_dir", out, *CPU]),
    }


def _as_list(reward):
    return list(reward) if isinstance(reward, (list, tuple)) else [reward]


KINDS = ["gold", "import", "model", "adapter", "ensemble"]
CASES = [(c, k) for c in ("ppo", "cem", "grpo-exact-kl", "sft-reward-es", "sbs", "synth-pairs") for k in KINDS
         if (c, k) != ("ppo", "gold")]  # ppo took `--reward_funcs gold` before: covered by test_ppo's recipe run


@pytest.mark.parametrize("command,kind", CASES)
def test_every_command_takes_every_reward_kind(command, kind, tiny_paths, reward_dirs, user_module, prompts_file,
                                               tmp_path, monkeypatch):  # fmt: skip
    from trl_extras.rewards.ensemble import RewardEnsemble
    from trl_extras.rewards.source import load_reward
    from trl_extras.testbed import gold_reward_fn

    module, name, pick, argv = _consumers(tiny_paths, prompts_file, tmp_path / "out")[command]
    spec = {"gold": "gold", "import": f"{user_module}:length_reward", "model": tiny_paths["reward"],
            **reward_dirs}[kind]  # fmt: skip
    _record(monkeypatch, module, name)
    (reward,) = _as_list(pick(_run([command, *argv, "--reward_funcs", spec])))
    if kind == "gold":
        assert reward is gold_reward_fn
    elif kind == "import":
        assert reward.__name__ == "length_reward" and reward([""], ["abc"]) == [3.0]
    elif kind == "ensemble":  # the folder reaches the consumer, whose reward contract loads it as the ensemble
        assert isinstance(load_reward(reward).ensemble, RewardEnsemble)
    else:  # a path reaches the consumer as the path (the contract scores it as RewardTrainer trained it)
        assert reward == spec


@pytest.mark.parametrize("command", ["ppo", "cem", "grpo-exact-kl", "sft-reward-es", "sbs", "synth-pairs"])
def test_reward_weights_sum_several_rewards(command, tiny_paths, user_module, prompts_file, tmp_path, monkeypatch):
    module, name, pick, argv = _consumers(tiny_paths, prompts_file, tmp_path / "out")[command]
    _record(monkeypatch, module, name)
    captured = _run([command, *argv, "--reward_funcs", "gold", f"{user_module}:length_reward",
                     "--reward_weights", "1.0", "0.5"])  # fmt: skip
    rewards = _as_list(pick(captured))
    weights = None
    if command in ("ppo", "cem", "grpo-exact-kl"):  # the trainer's config carries them
        config = captured.kwargs.get("args") or captured.args[2]
        weights = config.reward_weights
    elif command == "sft-reward-es":
        weights = captured.kwargs["reward_weights"]
    if weights is not None:
        assert len(rewards) == 2 and list(weights) == [1.0, 0.5]
    else:  # one weighted callable: 1.0 * gold + 0.5 * len
        (reward,) = rewards
        assert reward(["3 1 >"], [" 1 3"]) == [pytest.approx(1.0 + 0.5 * 4)]


def test_reward_weights_count_is_checked(tiny_paths, prompts_file, tmp_path):
    with pytest.raises(ValueError, match="--reward_weights: 1 weight"):
        main(["sbs", "--model_a", tiny_paths["policy"], "--model_b", tiny_paths["policy"], "--prompts_file",
              prompts_file, "--reward_funcs", "gold", "heuristic", "--reward_weights", "1.0"])  # fmt: skip


# old flag -> (command, argv with the old flag, the reward kind it must resolve to)
DEPRECATED = {
    "ppo --reward_model_path": ("ppo", ["--reward_model_path", "MODEL"], "model"),
    "cem --reward_model": ("cem", ["--reward_model", "MODEL"], "model"),
    "cem --reward": ("cem", ["--reward", "gold"], "gold"),
    "cem --reward_ensemble": ("cem", ["--reward_model", "ENSEMBLE", "--reward_ensemble", "true"], "ensemble"),
    "grpo-exact-kl --reward_model": ("grpo-exact-kl", ["--reward_model", "MODEL"], "model"),
    "grpo-exact-kl --reward": ("grpo-exact-kl", ["--reward", "heuristic"], "heuristic"),
    "sft-reward-es --judge": ("sft-reward-es", ["--judge", "gold"], "gold"),
    "sft-reward-es --reward_model": ("sft-reward-es", ["--reward_model", "MODEL"], "model"),
    "sbs --judge": ("sbs", ["--judge", "gold"], "gold"),
    "sbs --reward_model": ("sbs", ["--reward_model", "MODEL"], "model"),
    "synth-pairs --judge": ("synth-pairs", ["--judge", "heuristic"], "heuristic"),
}


@pytest.mark.parametrize("case", list(DEPRECATED))
def test_old_reward_flags_work_with_a_deprecation_naming_the_new_one(case, tiny_paths, reward_dirs, prompts_file,
                                                                     tmp_path, monkeypatch):  # fmt: skip
    from trl_extras.rewards.ensemble import RewardEnsemble
    from trl_extras.rewards.source import load_reward
    from trl_extras.testbed import gold_reward_fn, heuristic_reward_fn

    command, old, kind = DEPRECATED[case]
    old = [{"MODEL": tiny_paths["reward"], "ENSEMBLE": reward_dirs["ensemble"]}.get(a, a) for a in old]
    module, name, pick, argv = _consumers(tiny_paths, prompts_file, tmp_path / "out")[command]
    _record(monkeypatch, module, name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (reward,) = _as_list(pick(_run([command, *argv, *old])))
    messages = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert any(case.split()[1] in m and "deprecated" in m and "--reward_funcs" in m for m in messages), messages
    expected = {"gold": gold_reward_fn, "heuristic": heuristic_reward_fn}.get(kind)
    if expected is not None:
        assert reward is expected
    elif kind == "ensemble":  # the folder reaches the consumer, whose reward contract loads it as the ensemble
        assert isinstance(load_reward(reward).ensemble, RewardEnsemble)
    else:
        assert reward == tiny_paths["reward"]


def test_iterate_takes_reward_funcs_and_warns_on_reward_model(tiny_paths, tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(importlib.import_module("trl_extras.refresh.iterate"), "run_iterate",
                        lambda config: seen.setdefault("config", config))  # fmt: skip
    assert main(["iterate", "--reward_funcs", tiny_paths["reward"], "--output_dir", str(tmp_path)]) == 0
    assert seen.pop("config").reward_model == tiny_paths["reward"]
    with pytest.warns(FutureWarning, match="--reward_model is deprecated; use --reward_funcs"):
        main(["iterate", "--reward_model", tiny_paths["reward"], "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="ONE reward model"):
        main(["iterate", "--reward_funcs", "gold", "--output_dir", str(tmp_path)])


def test_cem_takes_resume_from_checkpoint_like_every_other_command(tiny_paths, prompts_file, tmp_path, monkeypatch):
    module, name, _, argv = _consumers(tiny_paths, prompts_file, tmp_path / "out")["cem"]
    _record(monkeypatch, module, name)
    assert _run(["cem", *argv, "--reward_funcs", "gold", "--resume_from_checkpoint", "false"]).args[2].resume is False
    assert _run(["cem", *argv, "--reward_funcs", "gold"]).args[2].resume is True
    with pytest.warns(FutureWarning, match="--resume_from_checkpoint false"):
        _run(["cem", *argv, "--reward_funcs", "gold", "--resume", "false"])


# ---------------------------------------------------------------------------------------------------------------
# module:function from the working directory; one import helper
# ---------------------------------------------------------------------------------------------------------------
def test_import_path_resolves_from_the_working_directory(user_module, tmp_path):
    from trl_extras.pipeline.stages import import_object as old_home
    from trl_extras.utils.imports import import_object

    assert old_home is import_object  # re-exported where refresh and users imported it from
    fn = import_object(f"{user_module}:length_reward", "--gold_reward")
    assert fn(["p"], ["ab"]) == [2.0]
    with pytest.raises(ValueError, match=r"--gold_reward 'nosuchmod_x:fn'.*current directory.*PYTHONPATH"):
        import_object("nosuchmod_x:fn", "--gold_reward")
    with pytest.raises(ValueError, match="has no attribute 'missing'"):
        import_object(f"{user_module}:missing", "--gold_reward")


def test_pipeline_gold_reward_from_the_working_directory(user_module, tmp_path):
    from trl_extras.pipeline.config import PipelineConfig
    from trl_extras.pipeline.stages import Context

    ctx = Context(config=PipelineConfig(output_dir=str(tmp_path), gold_reward=f"{user_module}:length_reward"), data={})
    assert ctx.gold(["p"], ["abc"]).total.tolist() == [3.0]


# ---------------------------------------------------------------------------------------------------------------
# the testbed stands in only when asked for
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture
def pairs_file(tmp_path):
    from trl_extras.testbed import clean_pairs

    path = tmp_path / "pairs.jsonl"
    clean_pairs(12, seed=5).to_json(path)
    return str(path)


def test_reward_two_stage_with_own_data_needs_stage1_pairs(tiny_paths, pairs_file, tmp_path, monkeypatch):
    """Before: stage 1 pretrained on 3000 testbed digit-sorting pairs without a word."""
    _record(monkeypatch, "trl_extras.rewards.two_stage", "TwoStageRewardTrainer")
    argv = ["reward-two-stage", "--model_name_or_path", tiny_paths["reward"], "--dataset_name", pairs_file,
            "--dataset_test_split", "", "--output_dir", str(tmp_path / "rm"), *CPU]  # fmt: skip
    with pytest.raises(ValueError, match="--pretrain_dataset_name is required with your own data"):
        main([str(a) for a in argv])
    captured = _run([*argv, "--pretrain_dataset_name", pairs_file])
    assert len(captured.kwargs["pretrain_dataset"]) == 12  # the user's pairs, not 3000 testbed ones
    captured = _run([*argv, "--pretrain_dataset_name", "testbed", "--testbed_dirty_pairs", 20])
    assert len(captured.kwargs["pretrain_dataset"]) == 20  # named: the testbed's


@pytest.mark.parametrize("command,argv,flag", [
    ("cem", ["--model_name_or_path", "POLICY", "--dataset_name", "PROMPTS"], "--reward_funcs"),
    ("cem", ["--dataset_name", "PROMPTS", "--reward_funcs", "REWARD"], "--model_name_or_path"),
    ("grpo-exact-kl", ["--model_name_or_path", "POLICY", "--dataset_name", "PROMPTS"], "--reward_funcs"),
    ("grpo-exact-kl", ["--dataset_name", "PROMPTS", "--reward_funcs", "REWARD"], "--model_name_or_path"),
    ("ppo", ["--dataset_name", "PROMPTS", "--reward_funcs", "REWARD"], "--model_name_or_path"),
    ("reward-filter", ["--dataset_name", "PAIRS"], "--model_name_or_path"),
    ("reward-ensemble", ["--dataset_name", "PAIRS"], "--model_name_or_path"),
    ("sft-reward-es", ["--model_name_or_path", "POLICY", "--dataset_name", "PROMPTS", "--eval_prompts_file",
                       "PROMPTS"], "--reward_funcs"),
    ("sft-reward-es", ["--model_name_or_path", "POLICY", "--dataset_name", "PROMPTS", "--reward_funcs", "REWARD"],
     "--eval_prompts_file"),
    ("sft-reward-es", ["--dataset_name", "PROMPTS", "--eval_prompts_file", "PROMPTS", "--reward_funcs", "REWARD"],
     "--model_name_or_path"),
    ("sbs", ["--model_a", "POLICY", "--model_b", "POLICY", "--reward_funcs", "REWARD"], "--prompts_file"),
    ("sbs", ["--model_a", "POLICY", "--prompts_file", "PROMPTS", "--reward_funcs", "REWARD"], "--model_b"),
    ("synth-pairs", ["--policy", "POLICY", "--reward_funcs", "REWARD"], "--prompts_file"),
    ("synth-pairs", ["--prompts_file", "PROMPTS", "--reward_funcs", "REWARD"], "--policy"),
    ("synth-pairs", ["--policy", "POLICY", "--prompts_file", "PROMPTS", "--reward_funcs", "REWARD",
                     "--two_stage_dpo", "true"], "--real_pairs_file"),
])  # fmt: skip
def test_own_data_without_a_reward_or_model_is_an_error_naming_the_flag(command, argv, flag, tiny_paths, prompts_file,
                                                                        pairs_file, tmp_path, monkeypatch):  # fmt: skip
    """Before: cem on the user's prompts optimised the testbed heuristic, the others used the testbed's policy,
    prompts or heuristic for what was missing."""
    for module, name in [("trl_extras.trainers.ppo", "PPOTrainer"), ("trl_extras.trainers.cem", "CEMTrainer"),
                         ("trl_extras.trainers.exact_kl_grpo", "ExactKLGRPOTrainer"),
                         ("trl_extras.evaluation.side_by_side", "side_by_side"),
                         ("trl_extras.evaluation.synthetic_pairs", "synthesize_preference_pairs"),
                         ("trl_extras.callbacks.reward_early_stopping", "RewardEarlyStoppingCallback"),
                         ("trl_extras.rewards.filtering", "train_with_easy_pair_filtering"),
                         ("trl_extras.rewards.ensemble", "train_reward_ensemble")]:  # fmt: skip
        _record(monkeypatch, module, name)
    values = {"POLICY": tiny_paths["policy"], "PROMPTS": prompts_file, "PAIRS": pairs_file,
              "REWARD": tiny_paths["reward"]}  # fmt: skip
    argv = [values.get(a, a) for a in argv]
    extra = [] if command == "sbs" else ["--output_dir", str(tmp_path / "out"), *CPU]
    with pytest.raises(ValueError, match=f"{flag} is required with your own data"):
        main([command, *argv, *extra])


def test_pipeline_on_own_data_needs_sft_reward_and_has_no_testbed_gold(tiny_paths, prompts_file, tmp_path):
    """Before: the testbed heuristic picked the user's SFT checkpoint and the testbed gold scored their answers."""
    from trl_extras.pipeline.config import PipelineConfig

    def config(**kw):
        data = dict(prompt_dataset=prompts_file, eval_prompt_dataset=prompts_file, sft_dataset="my/sft",
                    dirty_pairs_dataset="my/dirty", clean_pairs_dataset="my/clean", real_pairs_dataset=None)  # fmt: skip
        return PipelineConfig(output_dir=str(tmp_path), **{"policy_model": tiny_paths["policy"], **data, **kw})

    with pytest.raises(ValueError, match="sft_reward is required with your own data"):
        config().check_models()
    # before: the testbed's dirty and clean pairs trained the reward model of the user's task without a word
    partial = PipelineConfig(output_dir=str(tmp_path), policy_model="x", prompt_dataset=prompts_file, sft_reward=None)
    with pytest.raises(ValueError, match=r"name every dataset: \['eval_prompt_dataset', 'sft_dataset', "
                                         r"'dirty_pairs_dataset', 'clean_pairs_dataset', 'real_pairs_dataset'\] unset"):
        partial.check_models()
    from trl_extras.pipeline.data import pipeline_datasets

    with pytest.raises(ValueError, match="name every dataset"):
        pipeline_datasets(partial)
    assert PipelineConfig(output_dir=str(tmp_path)).clean_pairs_dataset == "testbed"  # nothing given: the testbed
    ok = config(sft_reward=None)
    ok.check_models()
    assert ok.sft_reward is None and ok.gold_reward is None
    with pytest.raises(ValueError, match="policy_model .* is required with your own data"):
        config(policy_model=None, sft_reward=None).check_models()


@pytest.mark.parametrize("task,module", [("sort_digits", "trl_extras.testbed"), ("arithmetic", "trl_extras.testbed.arithmetic")])
def test_pipeline_testbed_rewards_follow_the_task(task, module, tmp_path, monkeypatch):
    """Before: the default gold was the sort-digits gold whatever the task."""
    from trl_extras.pipeline.config import PipelineConfig

    monkeypatch.setattr("trl_extras.testbed.names.testbed_model_path", lambda name, progress=True: name)
    cfg = PipelineConfig(output_dir=str(tmp_path), task=task, policy_model="out/sft")
    cfg.check_models()
    assert (cfg.gold_reward, cfg.sft_reward) == (f"{module}:gold_reward_fn", f"{module}:heuristic_reward_fn")


def test_pipeline_reward_names_resolve_with_the_task(tmp_path):
    from trl_extras.pipeline.config import PipelineConfig
    from trl_extras.pipeline.stages import Context
    from trl_extras.testbed import arithmetic

    ctx = Context(config=PipelineConfig(output_dir=str(tmp_path), task="arithmetic", gold_reward="gold"), data={})
    assert ctx.gold.funcs[0].__wrapped__ is arithmetic.gold_reward_fn  # a FunctionReward of the reward contract
    assert ctx.reward("heuristic", "sft_reward") is arithmetic.heuristic_reward_fn


def test_iterate_on_own_prompts_needs_a_judge(tiny_paths, prompts_file, tmp_path):
    from trl_extras.refresh.iterate import IterateConfig, Iteration

    with pytest.raises(ValueError, match="judge is required with your own prompt_dataset"):
        Iteration(IterateConfig(output_dir=str(tmp_path), prompt_dataset=prompts_file,
                                policy_model=tiny_paths["policy"], reward_model=tiny_paths["reward"]))  # fmt: skip
    assert IterateConfig(output_dir=str(tmp_path)).judge == "trl_extras.testbed:gold_reward_fn"  # testbed: as before
    from trl_extras.testbed import heuristic_reward_fn

    judge = Iteration(IterateConfig(output_dir=str(tmp_path), judge="heuristic")).judge()
    assert judge.rewards.funcs[0].__wrapped__ is heuristic_reward_fn  # a FunctionReward of the reward contract


# ---------------------------------------------------------------------------------------------------------------
# testbed:smollm2 and friends
# ---------------------------------------------------------------------------------------------------------------
def test_testbed_model_names(monkeypatch, tiny_paths, prompts_file, tmp_path):
    from trl_extras.scripts.utils import resolve_model_name

    monkeypatch.setattr("trl_extras.testbed.smollm2.smollm2_path", lambda progress=False: "/cache/smollm2-x")
    monkeypatch.setattr("trl_extras.testbed.policy.build_sft_policy", lambda progress=True: "/cache/sft-x")
    assert resolve_model_name("testbed:smollm2", "--model_name_or_path") == "/cache/smollm2-x"
    assert resolve_model_name("testbed:tiny", "--model_name_or_path") == "/cache/sft-x"
    assert resolve_model_name("testbed", "--model_name_or_path") == "/cache/sft-x"
    with pytest.raises(ValueError, match="Unknown testbed model 'testbed:llama'"):
        resolve_model_name("testbed:llama", "--model_name_or_path")
    _record(monkeypatch, "trl_extras.evaluation.side_by_side", "side_by_side")
    captured = _run(["sbs", "--model_a", "testbed:smollm2", "--model_b", tiny_paths["policy"], "--prompts_file",
                     prompts_file, "--reward_funcs", "gold"])  # fmt: skip
    assert captured.args[0] == "/cache/smollm2-x"
    from trl_extras.pipeline.config import PipelineConfig

    cfg = PipelineConfig(output_dir=str(tmp_path), policy_model="testbed:smollm2", task="arithmetic")
    cfg.check_models()
    assert cfg.policy_model == "/cache/smollm2-x"


# ---------------------------------------------------------------------------------------------------------------
# --help
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_starts_with_a_description_and_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"usage: trl-extras {command} [--config recipe.yaml] [--flag value ...]"
    head = "\n".join(lines[:30])
    assert f"``trl-extras {command}``:" in head  # the description paragraph
    assert any(line.strip().startswith(f"trl-extras {command}") for line in lines[:30]), head  # an example command


@pytest.mark.parametrize("command,words", [("ppo", "latest checkpoint-N under output_dir"),
                                           ("cem", "'false' starts over")])
def test_resume_help_says_what_it_does_here(command, words, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert words in out[out.index("--resume_from_checkpoint RESUME"):][:400]


# ---------------------------------------------------------------------------------------------------------------
# the ending: summary, metrics file, model card
# ---------------------------------------------------------------------------------------------------------------
def test_ppo_run_ends_with_a_summary_full_metrics_and_a_local_model_card(tiny_paths, prompts_file, tmp_path, capsys):
    out = tmp_path / "ppo"
    rc = main([str(a) for a in ["ppo", "--model_name_or_path", tiny_paths["policy"], "--dataset_name", prompts_file,
               "--dataset_test_split", "", "--reward_funcs", "gold", "--max_steps", 1,
               "--per_device_train_batch_size", 4, "--max_completion_length", 4, "--output_dir", out,
               "--logging_steps", 1, "--save_strategy", "no", "--disable_tqdm", "true", *CPU]])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert '{\n  "global_step"' not in printed
    assert "Final: reward" in printed and f"Model saved to {out}" in printed
    assert f"Metrics saved to {out / 'ppo_metrics.json'}" in printed
    metrics = json.loads((out / "ppo_metrics.json").read_text())
    assert metrics["global_step"] == 1 and "reward" in metrics["final_metrics"] and "kl/exact" in metrics["final_metrics"]
    card = (out / "README.md").read_text()
    assert "huggingface.co/None" not in card and "[None]" not in card
    assert f"the local model `{tiny_paths['policy']}`" in card and f"the local data file `{prompts_file}`" in card
    assert "huggingface.co/datasets/" not in card
    assert "## PPO settings" in card and "| `kl_coef` |" in card and "## Final metrics" in card


def test_summary_lines_and_final_metrics():
    from trl_extras.scripts.utils import final_metrics, summary_lines

    history = [{"loss": 1.0, "reward": 0.2, "step": 1}, {"reward": 0.5, "kl/exact": 0.01, "step": 2},
               {"rewards/gold_reward/mean": 0.7, "eval_loss": 0.3, "step": 2}]  # fmt: skip
    metrics = final_metrics(history)
    assert metrics == {"loss": 1.0, "reward": 0.5, "kl/exact": 0.01, "rewards/gold_reward/mean": 0.7, "eval_loss": 0.3}
    lines = summary_lines(metrics, "out/x", "out/x/m.json")
    assert lines[0].startswith("Final: reward 0.5 (reward), KL 0.01 (kl/exact), gold 0.7")
    assert lines[1:] == ["Model saved to out/x", "Metrics saved to out/x/m.json"]


def test_model_card_names_local_base_and_data(tmp_path):
    from trl_extras.scripts.model_card import localize_card

    trl_text = ("This model is a fine-tuned version of [None](https://huggingface.co/None).\n"
                "It has been trained using [TRL](https://github.com/huggingface/trl).\n")  # fmt: skip
    data = tmp_path / "d.jsonl"
    data.write_text("{}\n")
    text = localize_card(trl_text, "/models/sft", str(data))
    assert text.startswith(f"This model is a fine-tuned version of the local model `/models/sft` on the local data "
                           f"file `{data}`.")  # fmt: skip
    hub = "This model is a fine-tuned version of [org/base](https://huggingface.co/org/base).\n"
    assert localize_card(hub, None, "org/data") == hub  # Hub names stay links


# ---------------------------------------------------------------------------------------------------------------
# reports: every rate with its n (and a CI where it is a proportion)
# ---------------------------------------------------------------------------------------------------------------
def test_report_rates_carry_n_and_ci(tmp_path):
    from trl_extras.pipeline.report import write_report

    results = {"reward": {"accuracies": {"two-stage": {"num_pairs": 2.0, "accuracy": 1.0, "gold_accuracy": 1.0,
                                                       "num_gold_pairs": 2.0, "num_hard_pairs": 1.0,
                                                       "hard_quartile_gold_accuracy": 1.0, "gold_ece": 0.2}}}}  # fmt: skip
    text = write_report(results, tmp_path).read_text()
    row = next(line for line in text.splitlines() if line.startswith("| two-stage"))
    assert "1.000 (n=2, 95% CI [0.342, 1.000])" in row  # 2 pairs: a wide interval
    assert "1.000 (n=1, 95% CI [0.207, 1.000])" in row and "0.200 (n=2)" in row


def test_report_win_rates_carry_n_ties_and_ci(tmp_path):
    from trl_extras.pipeline.report import write_report

    row = {"stage": "ppo", "method": "ppo", "gold": 0.5, "kl_to_sft": 0.1, "length": 3.0, "win_rate": 0.75, "win_rate_ci": [0.3, 0.95],
           "p_value": 0.6, "wins": 3, "losses": 1, "ties": 2}  # fmt: skip
    text = write_report({"evaluate": {"table": [row], "judge": "gold", "num_prompts": 6}}, tmp_path).read_text()
    assert "| PPO | sampled | 0.750 (n=4, 95% CI [0.300, 0.950]) | 2 | 6.0e-01 |" in text


def test_reward_two_stage_ends_with_summary_and_final_metrics(tiny_paths, tmp_path, capsys):
    out = tmp_path / "rm"
    rc = main(["reward-two-stage", "--model_name_or_path", tiny_paths["reward"], "--output_dir", str(out),
               "--testbed_clean_pairs", "8", "--testbed_dirty_pairs", "8", "--testbed_eval_pairs", "8",
               "--max_steps", "1", "--pretrain_max_steps", "1", "--per_device_train_batch_size", "4",
               "--logging_steps", "1", "--save_strategy", "no", "--disable_tqdm", "true", *CPU])  # fmt: skip
    assert rc == 0
    metrics = json.loads((out / "reward_metrics.json").read_text())
    assert "eval_accuracy" in metrics["final_eval"] and any(k.endswith("train_loss") for k in metrics["final_metrics"])
    printed = capsys.readouterr().out
    assert "Final: " in printed and "eval accuracy" in printed and f"Metrics saved to {out / 'reward_metrics.json'}" in printed
    assert printed.count(f"Model saved to {out}") == 1


def test_a_recipe_may_give_one_reward_as_a_scalar(tiny_paths, prompts_file, tmp_path, monkeypatch):
    from trl_extras.testbed import heuristic_reward_fn

    module, name, pick, argv = _consumers(tiny_paths, prompts_file, tmp_path / "out")["cem"]
    _record(monkeypatch, module, name)
    recipe = tmp_path / "cem.yaml"
    recipe.write_text("reward_funcs: heuristic\nreward_weights: [2.0]\n")
    captured = _run(["cem", "--config", recipe, *argv])
    assert pick(captured) is heuristic_reward_fn and captured.args[2].reward_weights == [2.0]
