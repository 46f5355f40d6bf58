"""The reward contract (``trl_extras.rewards.source``): one protocol every reward kind implements, used by every
consumer. Issue 21 items 1 and 2: a LoRA reward-model folder gives PPO a LoRA value model (not a fully trainable
one), every module of every reward is placed on the training device (PPO and CEM), names come from the reward's
folder and must be distinct, and rewards are validated in float32."""

import json
import logging
from pathlib import Path

import pytest
import torch
from helpers import cpu_config

from trl_extras.testbed import TestbedConfig, prompt_dataset

LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])


def _python_reward(prompts, completions, **kwargs):
    return [float(len(c)) / 10.0 for c in completions]


def _save_lora_reward_model(base_path, tokenizer_path, out, seed=0):
    """A LoRA reward-model folder as ``TwoStageRewardTrainer.save_model`` writes it (``PeftModel.save_pretrained``
    + tokenizer): SEQ_CLS adapter on a *causal-LM* base (no score head in the base: the head lives in the adapter),
    non-identity LoRA weights and head so that its scores differ from the base's."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    base = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=1)
    model = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", init_lora_weights=False, **LORA))
    with torch.no_grad():
        model.base_model.model.score.modules_to_save["default"].weight.normal_(0, 0.5)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_path).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def rewards_on_disk(tiny_paths, tmp_path_factory):
    """``{"adapter", "adapter_b", "full", "ensemble"}`` paths: two LoRA RMs on one base, the tiny full RM, and a
    saved 2-member LoRA-layout ensemble on the tiny RM."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trl_extras.rewards.ensemble import RewardEnsemble

    root = tmp_path_factory.mktemp("rewards")
    paths = {
        "adapter": _save_lora_reward_model(tiny_paths["policy"], tiny_paths["tokenizer"], root / "rm_a", seed=1),
        "adapter_b": _save_lora_reward_model(tiny_paths["policy"], tiny_paths["tokenizer"], root / "rm_b", seed=2),
        "full": tiny_paths["reward"],
    }
    base = AutoModelForSequenceClassification.from_pretrained(tiny_paths["reward"], num_labels=1)
    torch.manual_seed(0)
    cfg = dict(task_type="SEQ_CLS", init_lora_weights=False, **LORA)
    peft_model = get_peft_model(base, LoraConfig(**cfg), adapter_name="member_0")
    peft_model.add_adapter("member_1", LoraConfig(**cfg))
    ensemble = RewardEnsemble(peft_model, AutoTokenizer.from_pretrained(tiny_paths["tokenizer"]), penalty="mean")
    paths["ensemble"] = ensemble.save_pretrained(root / "my_ensemble", base_model_path=tiny_paths["reward"])
    return paths


def _ppo_args(tmp_path, **overrides):
    from trl_extras.trainers.ppo import PPOConfig

    defaults = dict(
        per_device_train_batch_size=2, gradient_accumulation_steps=1, num_mini_batches=1, num_ppo_epochs=1,
        max_steps=1, max_completion_length=4, learning_rate=1e-3, seed=0,
    )
    return cpu_config(PPOConfig, tmp_path / "ppo", **{**defaults, **overrides})


def _prompts(n=4):
    return prompt_dataset("train", TestbedConfig(num_train_prompts=n, num_holdout_prompts=2, seed=0))


def _reward_spec(kind, paths):
    if kind == "ensemble":  # an instance (loaded from its directory): PPO's value-model init reads its first member
        from trl_extras.rewards.ensemble import RewardEnsemble

        return RewardEnsemble.from_pretrained(paths["ensemble"])
    return _python_reward if kind == "python" else paths[kind]


# ---------------------------------------------------------------------------------------------------------------
# Item 1: PPO's value model for each reward kind, with and without peft_config
# ---------------------------------------------------------------------------------------------------------------
def _value_counts(trainer):
    value = trainer.accelerator.unwrap_model(trainer.value_model)
    params = list(value.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


@pytest.fixture(scope="module")
def value_model_runs(tiny_paths, rewards_on_disk, tmp_path_factory):
    """One 1-step PPO run with a checkpoint per (reward kind, peft): trainable counts, checkpoint bytes, logs."""
    from peft import LoraConfig

    from trl_extras.trainers.ppo import PPOTrainer
    from trl_extras.trainers.ppo.checkpoint import VALUE_STATE_FILE

    runs = {}
    for kind in ("python", "adapter", "full", "ensemble"):
        for peft in (False, True):
            tmp = tmp_path_factory.mktemp(f"ppo_{kind}_{int(peft)}")
            trainer = PPOTrainer(
                tiny_paths["policy"], reward_funcs=_reward_spec(kind, rewards_on_disk),
                args=_ppo_args(tmp, save_strategy="steps", save_steps=1), train_dataset=_prompts(),
                peft_config=LoraConfig(**LORA) if peft else None,
            )
            trainable, total = _value_counts(trainer)
            trainer.train()
            checkpoint = Path(trainer.args.output_dir) / "checkpoint-1"
            runs[kind, peft] = dict(
                trainable=trainable, total=total,
                value_bytes=(checkpoint / VALUE_STATE_FILE).stat().st_size,
                checkpoint_bytes=sum(f.stat().st_size for f in checkpoint.rglob("*") if f.is_file()),
                keys=set().union(*[e.keys() for e in trainer.state.log_history]),
            )
    for key, run in sorted(runs.items()):  # the numbers for the closing note (pytest -s shows them)
        print("value model", key, {k: v for k, v in run.items() if k != "keys"})
    return runs


@pytest.mark.parametrize("kind", ["adapter", "full", "ensemble"])
def test_value_model_with_peft_is_lora_like_python_reward(value_model_runs, kind):
    """With peft_config the value model gets its own LoRA (+ the score head as modules_to_save): the same trainable
    count and checkpoint size for every reward kind as with a Python reward (old code: an adapter-folder RM gave a
    value model with ~all parameters trainable, and a checkpoint the size of the full model)."""
    run, python = value_model_runs[kind, True], value_model_runs["python", True]
    assert run["trainable"] == python["trainable"] < run["total"] / 5
    assert run["value_bytes"] <= python["value_bytes"] * 1.05
    assert run["checkpoint_bytes"] <= python["checkpoint_bytes"] * 1.05


@pytest.mark.parametrize("kind", ["python", "adapter", "full", "ensemble"])
def test_value_model_without_peft_is_fully_trainable_plain_model(value_model_runs, kind):
    """Without peft_config the value model is fine-tuned in full, as a plain model (no adapter layers left over
    from the reward: the reward's adapter was merged into the copy)."""
    run = value_model_runs[kind, False]
    assert run["trainable"] == run["total"] == value_model_runs["python", False]["total"]
    assert run["value_bytes"] <= value_model_runs["python", False]["value_bytes"] * 1.05


def test_value_model_from_adapter_rm_starts_from_the_reward(tiny_paths, rewards_on_disk, tmp_path, capfd):
    """The value model initialised from a LoRA RM folder computes the reward model's score at the last token: the
    adapter is merged into the backbone and the head is the adapter's head (not a random one); building it prints
    none of peft's double-wrap warnings nor a false "MISSING" load report."""
    import warnings

    from peft import LoraConfig

    from trl_extras.trainers.ppo import PPOTrainer

    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = PPOTrainer(tiny_paths["policy"], reward_funcs=rewards_on_disk["adapter"], args=_ppo_args(tmp_path),
                             train_dataset=_prompts(), peft_config=LoraConfig(**LORA))  # fmt: skip
    noise = "\n".join(str(w.message) for w in caught) + capfd.readouterr().err
    for text in ("second time", "multiple adapters", "MISSING", "LOAD REPORT", "was renamed"):
        assert text not in noise, text
    from trl_extras.rewards.source import load_reward
    reward = load_reward(rewards_on_disk["adapter"])
    ids = torch.randint(5, 20, (2, 6))
    mask = torch.ones_like(ids)
    value = trainer.accelerator.unwrap_model(trainer.value_model)
    with torch.no_grad():
        expected = reward.model(input_ids=ids, attention_mask=mask).logits[:, 0]
        torch.testing.assert_close(value(ids, mask)[:, -1], expected, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Item 5: an adapter-folder RM loads without a false "MISSING" report, and keeps a true one
# ---------------------------------------------------------------------------------------------------------------
def test_adapter_reward_loads_head_from_adapter_without_missing_report(rewards_on_disk, capfd):
    from safetensors.torch import load_file

    from trl_extras.rewards.source import load_reward

    reward = load_reward(rewards_on_disk["adapter"])
    err = capfd.readouterr().err
    assert "MISSING" not in err and "LOAD REPORT" not in err
    saved = load_file(str(Path(rewards_on_disk["adapter"]) / "adapter_model.safetensors"))
    head = [v for k, v in saved.items() if k.endswith("score.weight")]
    assert len(head) == 1
    merged, _ = reward.value_init_model()
    torch.testing.assert_close(merged.score.weight, head[0])  # the head really came from the adapter


def test_adapter_without_head_keeps_the_missing_warning(tiny_paths, rewards_on_disk, tmp_path, caplog):
    import shutil

    from safetensors.torch import load_file, save_file

    from trl_extras.rewards.source import load_reward

    folder = tmp_path / "no_head"
    shutil.copytree(rewards_on_disk["adapter"], folder)
    weights = load_file(str(folder / "adapter_model.safetensors"))
    save_file({k: v for k, v in weights.items() if "score" not in k}, str(folder / "adapter_model.safetensors"))
    config = json.loads((folder / "adapter_config.json").read_text())  # an adapter trained without SEQ_CLS
    config.update(task_type=None, modules_to_save=None)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING, logger="trl_extras.rewards.source"):
        load_reward(str(folder))
    assert "score.weight" in caplog.text and "MISSING" in caplog.text


# ---------------------------------------------------------------------------------------------------------------
# Placement: every module of every reward on the accelerator's device, for each kind, in PPO and CEM
# ---------------------------------------------------------------------------------------------------------------
def _reward_instances(kind, paths, tiny_paths):
    """``(reward_funcs, modules we expect to be placed)``; instances built here so that the expected modules are
    known without asking the contract (for paths, the contract's ``modules()`` is all there is to ask)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trl_extras.rewards.ensemble import RewardEnsemble

    tok = AutoTokenizer.from_pretrained(tiny_paths["tokenizer"])
    if kind == "ensemble_instance":
        members = [AutoModelForSequenceClassification.from_pretrained(tiny_paths["reward"], num_labels=1) for _ in "ab"]
        return RewardEnsemble(members, tok, penalty="mean"), members
    if kind == "ensemble_dir":
        return paths["ensemble"], None
    if kind == "peft_instance":
        from peft import PeftModel

        base = AutoModelForSequenceClassification.from_pretrained(tiny_paths["policy"], num_labels=1)
        model = PeftModel.from_pretrained(base, paths["adapter"])
        return model, [model]
    if kind == "model_instance":
        model = AutoModelForSequenceClassification.from_pretrained(tiny_paths["reward"], num_labels=1)
        return model, [model]
    return paths[kind], None  # "adapter", "full": loaded inside


class _ToRecorder:
    """Records ``nn.Module.to`` calls: ``{id(module): [device, ...]}``."""

    def __init__(self, monkeypatch):
        self.calls = {}
        original = torch.nn.Module.to
        recorder = self

        def to(module, *args, **kwargs):
            device = kwargs.get("device", args[0] if args else None)
            if isinstance(device, (str, torch.device)):
                recorder.calls.setdefault(id(module), []).append(torch.device(device))
            return original(module, *args, **kwargs)

        monkeypatch.setattr(torch.nn.Module, "to", to)

    def placed_on(self, module, device) -> bool:
        target = torch.device(device)
        return any(d.type == target.type and (d.index or 0) == (target.index or 0) for d in self.calls.get(id(module), []))


PLACEMENT_KINDS = ["adapter", "full", "ensemble_dir", "ensemble_instance", "peft_instance", "model_instance"]


@pytest.mark.parametrize("consumer", ["ppo", "cem"])
@pytest.mark.parametrize("kind", PLACEMENT_KINDS)
def test_every_reward_module_is_placed_on_the_training_device(tiny_paths, rewards_on_disk, tmp_path, monkeypatch,
                                                              consumer, kind):  # fmt: skip
    """On CPU every tensor is on the one device already, so `.device` alone proves nothing: `.to(device)` calls
    are recorded and every reward module must have received one for the trainer's device (old code: CEM never
    moved a RewardEnsemble's members). With CUDA (run on the device machine) the parameters' device is checked too."""
    from trl_extras import CEMTrainer
    from trl_extras.trainers.cem import CEMConfig
    from trl_extras.trainers.ppo import PPOTrainer

    recorder = _ToRecorder(monkeypatch)
    reward, expected = _reward_instances(kind, rewards_on_disk, tiny_paths)
    if consumer == "ppo":
        trainer = PPOTrainer(tiny_paths["policy"], reward_funcs=reward, args=_ppo_args(tmp_path), train_dataset=_prompts())
        device, functions = trainer.accelerator.device, trainer.reward_functions
    else:
        args = cpu_config(CEMConfig, tmp_path / "cem", num_rounds=1, num_generations=2, max_completion_length=4,
                          per_device_train_batch_size=2, num_train_epochs=1, seed=0)  # fmt: skip
        trainer = CEMTrainer(tiny_paths["policy"], reward, args, train_dataset=_prompts(2))
        device, functions = args.device, trainer.reward_funcs
    modules = functions.modules()
    if expected is None:
        expected = modules
    assert len(expected) == {"ensemble_instance": 2}.get(kind, 1)
    for module in expected:
        assert recorder.placed_on(module, device), f"{kind}: {type(module).__name__} was never moved to {device}"
        assert all(p.device.type == torch.device(device).type for p in module.parameters())
    assert {id(m) for m in expected} <= {id(m) for m in modules}  # the contract sees them all


# ---------------------------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------------------------
def test_two_lora_rms_on_one_base_get_their_folder_names(rewards_on_disk):
    from trl_extras.rewards.functions import RewardFunctions

    rewards = RewardFunctions([rewards_on_disk["adapter"], rewards_on_disk["adapter_b"], rewards_on_disk["ensemble"]])
    assert rewards.names == ["rm_a", "rm_b", "my_ensemble"]  # old: the base model's path, twice


def test_duplicate_reward_names_are_an_error(rewards_on_disk):
    from trl_extras.rewards.functions import RewardFunctions

    with pytest.raises(ValueError, match="named 'rm_a'"):
        RewardFunctions([rewards_on_disk["adapter"], rewards_on_disk["adapter"]])
    with pytest.raises(ValueError, match="named '_python_reward'"):
        RewardFunctions([_python_reward, _python_reward])
    named = RewardFunctions([_python_reward, _python_reward], reward_names=["length_a", "length_b"])
    assert named.names == ["length_a", "length_b"]


def test_ppo_metrics_key_uses_the_folder_name(value_model_runs):
    keys = value_model_runs["adapter", True]["keys"]
    assert "rewards/rm_a/mean" in keys
    assert not any(k.startswith("rewards/policy") for k in keys)  # not the adapter's base model


def test_exact_kl_grpo_takes_an_adapter_folder_by_name(tiny_paths, rewards_on_disk, tmp_path):
    from trl_extras.rewards.source import RewardSource
    from trl_extras.trainers.exact_kl_grpo import ExactKLGRPOConfig, ExactKLGRPOTrainer

    args = cpu_config(ExactKLGRPOConfig, tmp_path / "grpo", per_device_train_batch_size=2, num_generations=2,
                      max_completion_length=4, max_steps=1, beta=0.0)  # fmt: skip
    trainer = ExactKLGRPOTrainer(tiny_paths["policy"], [rewards_on_disk["adapter"], rewards_on_disk["ensemble"]],
                                 args, train_dataset=_prompts())  # fmt: skip
    assert trainer.reward_func_names == ["rm_a", "my_ensemble"]
    assert all(isinstance(f, RewardSource) for f in trainer.reward_funcs)
    trainer.train()  # GRPO calls the sources with its convention and logs them by name
    keys = set().union(*[e.keys() for e in trainer.state.log_history])
    assert {"rewards/rm_a/mean", "rewards/my_ensemble/mean"} <= keys


# ---------------------------------------------------------------------------------------------------------------
# Reward values in float32
# ---------------------------------------------------------------------------------------------------------------
def test_reward_finite_in_float64_but_inf_in_float32_is_an_error():
    from trl_extras.rewards.functions import RewardFunctions

    def huge(prompts, completions, **kw):
        return [0.0, 1e39]

    with pytest.raises(ValueError, match=r"'huge'.*completion 1.*float32"):
        RewardFunctions([huge])(["p", "q"], ["a", "b"])


def test_overflowing_weighted_sum_is_an_error():
    from trl_extras.rewards.functions import RewardFunctions

    def big(prompts, completions, **kw):
        return [3e38, 1.0]

    def big_too(prompts, completions, **kw):
        return [3e38, 1.0]

    rewards = RewardFunctions([big, big_too], reward_weights=[1.0, 1.0])
    with pytest.raises(ValueError, match=r"weighted sum of rewards for completion 0 overflows float32.*big="):
        rewards(["p", "q"], ["a", "b"])


@pytest.mark.parametrize("weight", [float("nan"), float("inf"), 1e39])
def test_non_finite_reward_weight_is_an_error(weight):
    from trl_extras.rewards.functions import RewardFunctions

    with pytest.raises(ValueError, match=r"reward_weights: the weight of reward '_python_reward'"):
        RewardFunctions([_python_reward], reward_weights=[weight])


def test_ppo_refuses_a_nan_reward_weight(tiny_paths, tmp_path):
    from trl_extras.trainers.ppo import PPOTrainer

    with pytest.raises(ValueError, match="reward_weights"):
        PPOTrainer(tiny_paths["policy"], reward_funcs=_python_reward, args=_ppo_args(tmp_path, reward_weights=[float("nan")]),
                   train_dataset=_prompts())  # fmt: skip


def test_ppo_reward_names_rename_and_duplicates_fail(tiny_paths, rewards_on_disk, tmp_path):
    from trl_extras.trainers.ppo import PPOTrainer

    with pytest.raises(ValueError, match="named '_python_reward'"):
        PPOTrainer(tiny_paths["policy"], reward_funcs=[_python_reward, _python_reward], args=_ppo_args(tmp_path),
                   train_dataset=_prompts())  # fmt: skip
    trainer = PPOTrainer(
        tiny_paths["policy"], reward_funcs=[_python_reward, rewards_on_disk["adapter"]], train_dataset=_prompts(),
        args=_ppo_args(tmp_path, reward_names=["length", "my_rm"]),
    )
    assert trainer.reward_functions.names == ["length", "my_rm"]


def test_refresh_callback_finds_the_ensemble_behind_the_contract(tiny_paths, rewards_on_disk, tmp_path):
    """RewardRefreshCallback refreshes the ensemble a trainer scores with, also when the trainer holds it as a
    reward source (PPO: an ensemble instance; the contract wraps it), and the source's modules are the ones saved."""
    from trl_extras.callbacks.reward_refresh import find_trainer_reward
    from trl_extras.rewards.ensemble import RewardEnsemble
    from trl_extras.trainers.ppo import PPOTrainer

    ensemble = RewardEnsemble.from_pretrained(rewards_on_disk["ensemble"])
    trainer = PPOTrainer(tiny_paths["policy"], reward_funcs=[_python_reward, ensemble], args=_ppo_args(tmp_path),
                         train_dataset=_prompts())  # fmt: skip
    found, tokenizer = find_trainer_reward(trainer)
    assert found is ensemble and tokenizer is ensemble.processing_class
    assert len(found.modules()) == 1  # LoRA layout: the one PeftModel holding both adapters (old `.models`: none)


def test_quantized_adapter_rm_falls_back_to_policy_value_init(tiny_paths, rewards_on_disk, tmp_path, caplog):
    """A LoRA RM on a 4-bit base cannot be merged exactly: by default the value model starts from the policy (warned),
    with value_model_init='reward' it is a clear error. (The 4-bit flag is set by hand: only the decision is tested.)"""
    from trl_extras.rewards.source import ValueInitUnavailable, load_reward
    from trl_extras.trainers.ppo import PPOTrainer

    reward = load_reward(rewards_on_disk["adapter"])
    reward.model.get_base_model().is_loaded_in_4bit = True
    with caplog.at_level(logging.WARNING):
        trainer = PPOTrainer(tiny_paths["policy"], reward_funcs=reward, args=_ppo_args(tmp_path), train_dataset=_prompts())
    assert "Value model initialised from the policy" in caplog.text
    value = trainer.accelerator.unwrap_model(trainer.value_model)
    assert all(float(p.detach().abs().sum()) == 0 for p in value._head(value.model).parameters())  # policy init: zero head
    with pytest.raises(ValueInitUnavailable, match="value_model_init='policy'"):
        PPOTrainer(tiny_paths["policy"], reward_funcs=reward, args=_ppo_args(tmp_path, value_model_init="reward"),
                   train_dataset=_prompts())  # fmt: skip


def test_measure_policy_places_ensemble_members(tiny_paths, monkeypatch):
    """measure_policy (RewardMeasureCallback's and RewardEarlyStoppingCallback's path) moves every reward module to
    the policy's device, ensemble members included (old: only a scorer's `.model`)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from trl_extras.evaluation.measure import measure_policy
    from trl_extras.rewards.ensemble import RewardEnsemble

    tok = AutoTokenizer.from_pretrained(tiny_paths["tokenizer"], padding_side="left")
    members = [AutoModelForSequenceClassification.from_pretrained(tiny_paths["reward"], num_labels=1) for _ in "ab"]
    policy = AutoModelForCausalLM.from_pretrained(tiny_paths["policy"])
    recorder = _ToRecorder(monkeypatch)
    m = measure_policy(policy, tok, _prompts(2)["prompt"], {"ens": RewardEnsemble(members, tok, penalty="mean")},
                       max_new_tokens=3)  # fmt: skip
    assert len(m.rewards["ens"]) == 2
    device = next(policy.parameters()).device
    assert all(recorder.placed_on(member, device) for member in members)


def test_a_weighted_sum_for_single_reward_consumers_places_and_scores_every_part(tiny_paths):
    """sbs / sft-reward-es take one reward: several become one WeightedReward source. Its reward models are placed
    through the contract (the callable it replaced hid them from place()) and it returns the weighted sum."""
    from trl_extras.rewards.functions import RewardFunctions, WeightedReward
    from trl_extras.rewards.scoring import RewardModelScorer
    from trl_extras.scripts.utils import weighted_reward

    scorer = RewardModelScorer(tiny_paths["reward"])
    ones = lambda prompts, completions, **k: [1.0] * len(prompts)  # noqa: E731
    combined = weighted_reward([scorer, ones], [2.0, 0.5])
    assert isinstance(combined, WeightedReward) and combined.modules() == [scorer.model]
    prompts, completions = ["1 2 >", "3 1 >"], [" 1 2", " 1 3"]
    expected = [2.0 * r + 0.5 for r in scorer(prompts, completions)]
    assert combined(prompts, completions) == pytest.approx(expected, abs=1e-5)
    assert weighted_reward([ones]) is ones  # alone and unweighted: the reward itself
    combined.place("meta")
    assert all(p.device.type == "meta" for p in scorer.model.parameters())
    assert RewardFunctions([combined]).modules() == [scorer.model]


def test_a_tracked_reward_may_not_share_a_name_with_an_optimized_one(tiny_paths, tmp_path):
    """Both log as rewards/<name>/mean: a shared name would mix two rewards in one curve. The same reward optimized
    and tracked (the testbed recipe's gold) is fine."""
    from test_ppo import _trainer

    def gold(prompts, completions, **kwargs):
        return [0.0] * len(prompts)

    def other(prompts, completions, **kwargs):
        return [1.0] * len(prompts)

    other.__name__ = "gold"
    with pytest.raises(ValueError, match="both named 'gold' but are different rewards"):
        _trainer(tiny_paths, tmp_path, reward_funcs=gold, log_reward_funcs=[other])
    _trainer(tiny_paths, tmp_path, reward_funcs=gold, log_reward_funcs=[gold])
