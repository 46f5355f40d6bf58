"""PPOTrainer on tiny models: the Trainer loop (callbacks, evaluate, stop, resume), data and reward handling, KL
estimators, value-model initialisation and warm-up, LoRA reference, A2C, and advantage-normalization invariance."""

import math

import pytest
import torch
from helpers import cpu_config

from trl_extras.testbed import TestbedConfig, gold_reward_fn, prompt_dataset


def _length_reward(prompts, completions, **kwargs):
    """A reward with spread on a random tiny policy (gold is ~0 there): the completion length."""
    text = [c if isinstance(c, str) else c[0]["content"] for c in completions]
    return [float(len(t)) / 10.0 for t in text]


def _data(n=32, conversational=False, split="train"):
    cfg = TestbedConfig(num_train_prompts=n, num_holdout_prompts=16, seed=0)
    return prompt_dataset(split, cfg, conversational=conversational)


def _args(tmp_path, **overrides):
    from trl_extras.trainers.ppo_config import PPOConfig

    defaults = dict(
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        num_mini_batches=2,
        num_ppo_epochs=2,
        max_steps=2,
        max_completion_length=8,
        learning_rate=1e-3,
        seed=0,
    )
    return cpu_config(PPOConfig, tmp_path / "out", **{**defaults, **overrides})


def _trainer(tiny_paths, tmp_path, reward_funcs=None, dataset=None, **kw):
    from trl_extras.trainers.ppo import PPOTrainer

    trainer_kw = {k: kw.pop(k) for k in list(kw) if k in (
        "eval_dataset", "callbacks", "peft_config", "value_model", "log_reward_funcs", "processing_class",
    )}
    return PPOTrainer(
        tiny_paths["policy"],
        reward_funcs=reward_funcs if reward_funcs is not None else _length_reward,
        args=_args(tmp_path, **kw),
        train_dataset=dataset if dataset is not None else _data(),
        **trainer_kw,
    )


def _history(trainer, key):
    return [h[key] for h in trainer.state.log_history if key in h]


# ---------------------------------------------------------------------------------------------------------------
# pure helpers
# ---------------------------------------------------------------------------------------------------------------
def test_scores_to_token_rewards_puts_score_on_last_valid_token():
    from trl_extras.trainers.ppo import scores_to_token_rewards

    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    kl = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 10
    out = scores_to_token_rewards(torch.tensor([1.0, 2.0, 3.0]), kl, mask, kl_coef=0.5)
    expected = -0.5 * kl * mask
    expected[0, 2] += 1.0
    expected[1, 0] += 2.0  # the empty row gets nothing
    torch.testing.assert_close(out, expected)


def test_adaptive_kl_controller_moves_towards_target():
    from trl_extras.trainers.ppo import AdaptiveKLController

    ctl = AdaptiveKLController(0.1, target=1.0, horizon=100)
    assert math.isclose(ctl.update(2.0, 10), 0.1 * (1 + 0.2 * 10 / 100))  # error clipped at +0.2
    ctl = AdaptiveKLController(0.1, target=1.0, horizon=100)
    assert math.isclose(ctl.update(0.95, 10), 0.1 * (1 - 0.05 * 10 / 100))


def test_running_moments_match_brute_force():
    from trl_extras.trainers.ppo import RunningMoments

    g = torch.Generator().manual_seed(0)
    chunks = [torch.randn(n, generator=g) * 3 + 1 for n in (5, 1, 17, 8)]
    rm = RunningMoments()
    for c in chunks:
        rm.update(c)
    allx = torch.cat(chunks).double()
    assert math.isclose(rm.mean, allx.mean().item(), rel_tol=1e-9)
    assert math.isclose(rm.std, allx.std(unbiased=False).item(), rel_tol=1e-9)


def test_token_value_model_matches_reward_model_at_last_token(tiny_paths):
    from transformers import AutoModelForSequenceClassification

    from trl_extras.trainers.ppo import TokenValueModel

    rm = AutoModelForSequenceClassification.from_pretrained(tiny_paths["reward"], num_labels=1).eval()
    ids = torch.randint(5, 20, (2, 7))
    mask = torch.ones_like(ids)
    values = TokenValueModel(rm)(ids, mask)
    assert values.shape == (2, 7)
    torch.testing.assert_close(values[:, -1], rm(input_ids=ids, attention_mask=mask).logits[:, 0], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# the Trainer loop
# ---------------------------------------------------------------------------------------------------------------
def test_ppo_steps_log_metrics_and_evaluate(tiny_paths, tmp_path):
    trainer = _trainer(
        tiny_paths, tmp_path, reward_funcs=[_length_reward, tiny_paths["reward"]], eval_dataset=_data(split="holdout"),
        log_reward_funcs=[gold_reward_fn], max_steps=4, per_device_eval_batch_size=8,
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.global_step == 4
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    logged = {k for h in trainer.state.log_history for k in h}
    for key in (
        "reward", "penalized_reward", "kl/exact", "kl/coef", "entropy", "policy/clipfrac", "policy/approx_kl",
        "loss/policy", "loss/value", "value/explained_variance", "completions/mean_length",
        "completions/eos_rate", "rewards/_length_reward/mean", "rewards/reward/mean", "rewards/gold_reward/mean",
    ):
        assert key in logged, key
    # a rollout every num_mini_batches * num_ppo_epochs = 4 steps: one rollout in 4 steps
    assert len(_history(trainer, "reward")) == 1
    metrics = trainer.evaluate()
    assert "eval_reward" in metrics and "eval_rewards/gold_reward/mean" in metrics
    assert math.isfinite(metrics["eval_reward"])


def test_callback_can_stop_training(tiny_paths, tmp_path):
    from transformers import TrainerCallback

    class StopAfter(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= 2:
                control.should_training_stop = True

    trainer = _trainer(tiny_paths, tmp_path, callbacks=[StopAfter()], max_steps=10)
    trainer.train()
    assert trainer.state.global_step == 2


def test_kl_budget_stops_training(tiny_paths, tmp_path):
    # the first rollout has KL 0 (policy == reference); the budget trips on the second rollout
    trainer = _trainer(tiny_paths, tmp_path, max_steps=12, num_ppo_epochs=1, num_mini_batches=1, kl_budget=1e-9,
                       learning_rate=1e-2)
    trainer.train()
    assert trainer.state.global_step < 12
    assert _history(trainer, "kl/budget_stop")


def test_kl_early_stop_resamples(tiny_paths, tmp_path):
    trainer = _trainer(tiny_paths, tmp_path, max_steps=4, num_mini_batches=2, num_ppo_epochs=2,
                       kl_early_stop_target=-1.0)  # always exceeded: every minibatch triggers a fresh rollout
    trainer.train()
    assert _history(trainer, "policy/early_stop")
    assert len(_history(trainer, "reward")) == 4  # a rollout at every step instead of one per 4 steps


def test_checkpoint_and_resume(tiny_paths, tmp_path):
    from safetensors.torch import load_file

    trainer = _trainer(tiny_paths, tmp_path, max_steps=4, save_strategy="steps", save_steps=2, kl_coef=0.1,
                       adaptive_kl=True, target_kl=0.01, kl_horizon=100, num_mini_batches=1, num_ppo_epochs=1)
    trainer.train()
    ckpt = tmp_path / "out" / "checkpoint-2"
    assert (ckpt / "value_model.safetensors").is_file() and (ckpt / "ppo_state.json").is_file()
    assert (tmp_path / "out" / "README.md").is_file() or (ckpt / "README.md").is_file()  # model card

    resumed = _trainer(tiny_paths, tmp_path, max_steps=4, save_strategy="steps", save_steps=2, kl_coef=0.1,
                       adaptive_kl=True, target_kl=0.01, kl_horizon=100, num_mini_batches=1, num_ppo_epochs=1)
    resumed._load_from_checkpoint(str(ckpt))
    saved = load_file(str(ckpt / "value_model.safetensors"))
    value = dict(resumed.accelerator.unwrap_model(resumed.value_model).named_parameters())
    for name, tensor in saved.items():
        torch.testing.assert_close(value[name].detach().cpu(), tensor)
    resumed._load_ppo_state(str(ckpt))
    assert resumed.kl_ctl.value != 0.1  # the adaptive coefficient came back
    assert resumed._step == 2 * resumed.args.gradient_accumulation_steps  # and the place in the rollout cycle

    # the Trainer's resume path restores the PPO state too (on every backend: DeepSpeed skips _load_from_checkpoint)
    again = _trainer(tiny_paths, tmp_path, max_steps=4, save_strategy="steps", save_steps=2, kl_coef=0.1,
                     adaptive_kl=True, target_kl=0.01, kl_horizon=100, num_mini_batches=1, num_ppo_epochs=1)
    restored = []
    load = again._load_ppo_state
    again._load_ppo_state = lambda path: (load(path), restored.append(again.kl_ctl.value))
    again.train(resume_from_checkpoint=str(ckpt))
    assert again.state.global_step == 4
    assert restored == [resumed.kl_ctl.value]


# ---------------------------------------------------------------------------------------------------------------
# data, rewards, bad input
# ---------------------------------------------------------------------------------------------------------------
def test_conversational_prompts(tiny_paths, tmp_path):
    seen = []

    def reward(prompts, completions, **kwargs):
        seen.append((prompts[0], completions[0]))
        return _length_reward(prompts, completions)

    trainer = _trainer(tiny_paths, tmp_path, reward_funcs=reward, dataset=_data(conversational=True), max_steps=1)
    trainer.train()
    prompt, completion = seen[0]
    assert isinstance(prompt, list) and prompt[0]["role"] == "user"
    assert completion[0]["role"] == "assistant"


def test_conversational_without_chat_template_fails_at_construction(tiny_paths, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_paths["policy"])
    tok.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        _trainer(tiny_paths, tmp_path, dataset=_data(conversational=True), processing_class=tok)


def test_empty_prompt_and_missing_column(tiny_paths, tmp_path):
    from datasets import Dataset

    with pytest.raises(ValueError, match="empty prompt"):
        _trainer(tiny_paths, tmp_path, dataset=Dataset.from_dict({"prompt": ["1 2 >", "  "]}))
    with pytest.raises(ValueError, match="`prompt` column"):
        _trainer(tiny_paths, tmp_path, dataset=Dataset.from_dict({"text": ["1 2 >"]}))


def test_tokenizer_without_pad_uses_eos(tiny_paths, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_paths["policy"])
    tok.pad_token = None
    trainer = _trainer(tiny_paths, tmp_path, processing_class=tok, max_steps=1)
    assert tok.pad_token_id == tok.eos_token_id
    trainer.train()


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda prompts, completions, **kw: None, "returned None"),
        (lambda prompts, completions, **kw: [float("nan")] * len(prompts), "finite"),
        (lambda prompts, completions, **kw: [1.0], "returned 1 values"),
    ],
)
def test_bad_reward_function_names_itself(tiny_paths, tmp_path, bad, match):
    def broken_reward(prompts, completions, **kwargs):
        return bad(prompts, completions)

    trainer = _trainer(tiny_paths, tmp_path, reward_funcs=broken_reward, max_steps=1)
    with pytest.raises(ValueError, match=f"broken_reward.*{match}|{match}.*broken_reward"):
        trainer.train()


def test_extra_columns_reach_reward_functions(tiny_paths, tmp_path):
    seen = {}

    def reward(prompts, completions, **kwargs):
        seen.update(kwargs)
        return _length_reward(prompts, completions)

    trainer = _trainer(tiny_paths, tmp_path, reward_funcs=reward, dataset=_data().add_column("tag", ["x"] * 32),
                       max_steps=1)
    trainer.train()
    assert seen["tag"] == ["x"] * 8 and "trainer_state" in seen and callable(seen["log_metric"])


# ---------------------------------------------------------------------------------------------------------------
# KL estimators, A2C, group normalization
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_estimators(tiny_paths, tmp_path, estimator):
    trainer = _trainer(tiny_paths, tmp_path, kl_estimator=estimator, max_steps=2, num_ppo_epochs=1,
                       num_mini_batches=1, learning_rate=1e-2)
    trainer.train()
    assert len(_history(trainer, f"kl/{estimator}")) == 2
    assert _history(trainer, "kl/exact")[-1] > 0  # after one update the policy moved away from the reference


def test_bad_config_values(tmp_path):
    with pytest.raises(ValueError, match="kl_estimator"):
        _args(tmp_path, kl_estimator="k4")
    with pytest.raises(ValueError, match="num_generations"):
        _args(tmp_path, advantage_normalization="group")
    with pytest.raises(ValueError, match="divisible"):
        _args(tmp_path, num_generations=3)


def test_a2c_config_runs_without_clipping(tiny_paths, tmp_path):
    from trl_extras.trainers.ppo import PPOTrainer
    from trl_extras.trainers.ppo_config import PPOConfig

    args = PPOConfig.a2c(output_dir=str(tmp_path / "a2c"), use_cpu=True, bf16=False, report_to="none",
                         save_strategy="no", per_device_train_batch_size=4, max_steps=2, max_completion_length=8,
                         disable_tqdm=True)
    assert (args.num_ppo_epochs, args.num_mini_batches, args.cliprange) == (1, 1, None)
    trainer = PPOTrainer(tiny_paths["policy"], _length_reward, args=args, train_dataset=_data())
    trainer.train()
    assert len(_history(trainer, "reward")) == 2  # a fresh rollout every update
    assert set(_history(trainer, "policy/clipfrac")) == {0.0}


def test_group_normalization_with_several_generations(tiny_paths, tmp_path):
    seen = []

    def reward(prompts, completions, **kwargs):
        seen.append(list(prompts))
        return _length_reward(prompts, completions)

    trainer = _trainer(tiny_paths, tmp_path, reward_funcs=reward, num_generations=2,
                       advantage_normalization="group", max_steps=1)
    trainer.train()
    prompts = seen[0]
    assert all(prompts[i] == prompts[i + 1] for i in range(0, len(prompts), 2))  # groups are consecutive


# ---------------------------------------------------------------------------------------------------------------
# value model and reference
# ---------------------------------------------------------------------------------------------------------------
def test_value_model_copied_from_reward_model(tiny_paths, tmp_path):
    from transformers import AutoModelForSequenceClassification

    trainer = _trainer(tiny_paths, tmp_path, reward_funcs=tiny_paths["reward"])
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_paths["reward"], num_labels=1)
    value = trainer.accelerator.unwrap_model(trainer.value_model).model
    rm_state = rm.state_dict()
    for name, tensor in value.state_dict().items():
        torch.testing.assert_close(tensor, rm_state[name])
    # a copy, not the reward model itself
    reward_model = trainer.reward_functions.funcs[0].model
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(value.parameters(), reward_model.parameters()))


def test_value_model_from_policy_without_reward_model(tiny_paths, tmp_path):
    trainer = _trainer(tiny_paths, tmp_path)
    value = trainer.accelerator.unwrap_model(trainer.value_model)
    assert all(torch.count_nonzero(p) == 0 for p in value.model.score.parameters())  # fresh zero head
    ids = torch.randint(5, 20, (2, 6))
    assert torch.count_nonzero(value(ids, torch.ones_like(ids))) == 0


def test_value_warmup_freezes_policy(tiny_paths, tmp_path):
    trainer = _trainer(tiny_paths, tmp_path, value_warmup_steps=2, max_steps=2, learning_rate=1e-2)
    policy_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    value_before = {n: p.detach().clone() for n, p in trainer.value_model.named_parameters()}
    trainer.train()
    assert all(torch.equal(policy_before[n], p) for n, p in trainer.model.named_parameters())
    assert any(not torch.equal(value_before[n], p) for n, p in trainer.value_model.named_parameters())


def test_lora_policy_uses_adapter_disabled_reference(tiny_paths, tmp_path):
    from peft import LoraConfig

    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = _trainer(tiny_paths, tmp_path, peft_config=cfg, max_steps=3, num_ppo_epochs=1, num_mini_batches=1,
                       learning_rate=5e-2)
    assert trainer.ref_model is None
    base_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" not in n}
    trainer.train()
    kls = _history(trainer, "kl/exact")
    assert kls[0] == pytest.approx(0.0, abs=1e-6)  # LoRA starts as the identity: policy == reference
    assert kls[-1] > 0
    assert all(torch.equal(base_before[n], p) for n, p in trainer.model.named_parameters() if "lora_" not in n)
    # the value model got LoRA too (score head trained in full)
    value = trainer.accelerator.unwrap_model(trainer.value_model).model
    assert hasattr(value, "peft_config")


# ---------------------------------------------------------------------------------------------------------------
# advantage normalization makes the update invariant to affine reward rescaling
# ---------------------------------------------------------------------------------------------------------------
def _first_update(tiny_paths, tmp_path, scale, shift, normalization):
    def reward(prompts, completions, **kwargs):
        return [scale * r + shift for r in _length_reward(prompts, completions)]

    # V starts at 0 (fresh zero head), lambda = gamma = 1, no KL, no EOS penalty: every token's raw advantage is
    # the affine-transformed score, so batch whitening removes the transformation exactly. SGD keeps the step
    # proportional to the gradient (Adam would hide scale differences).
    trainer = _trainer(tiny_paths, tmp_path, reward_funcs=reward, max_steps=1, num_mini_batches=1, num_ppo_epochs=1,
                       per_device_train_batch_size=8, kl_coef=0.0, lam=1.0, gamma=1.0, missing_eos_penalty=None,
                       advantage_normalization=normalization, optim="sgd", max_grad_norm=0.0, learning_rate=1e-2,
                       lr_scheduler_type="constant", output_dir=str(tmp_path / f"{scale}-{shift}-{normalization}"))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    return torch.cat([(p.detach() - before[n]).flatten() for n, p in trainer.model.named_parameters()])


def test_batch_normalized_update_invariant_to_affine_reward_rescaling(tiny_paths, tmp_path):
    base = _first_update(tiny_paths, tmp_path, 1.0, 0.0, "batch")
    rescaled = _first_update(tiny_paths, tmp_path, 100.0, 50.0, "batch")
    assert base.abs().max() > 0
    torch.testing.assert_close(rescaled, base, atol=1e-6, rtol=1e-3)
    raw = _first_update(tiny_paths, tmp_path, 1.0, 0.0, "none")
    raw_rescaled = _first_update(tiny_paths, tmp_path, 100.0, 50.0, "none")
    assert not torch.allclose(raw_rescaled, raw, atol=1e-6, rtol=1e-3)
    assert raw_rescaled.norm() > 10 * raw.norm()


# ---------------------------------------------------------------------------------------------------------------
# CLI and recipes
# ---------------------------------------------------------------------------------------------------------------
def test_cli_runs_testbed_recipe_with_reward_model(tiny_paths, tmp_path):
    import json
    from pathlib import Path

    from trl_extras.cli import main

    recipe = Path(__file__).parent.parent / "recipes" / "ppo_testbed.yaml"
    out = tmp_path / "cli"
    rc = main([
        "ppo", "--config", str(recipe), "--model_name_or_path", tiny_paths["policy"],
        "--reward_model_path", tiny_paths["reward"], "--reward_funcs", "gold", "--value_model_init", "reward",
        "--testbed_num_train_prompts", "32", "--testbed_num_eval_prompts", "8", "--max_steps", "1",
        "--per_device_train_batch_size", "4", "--max_completion_length", "6", "--eval_strategy", "no",
        "--per_device_eval_batch_size", "8", "--output_dir", str(out), "--disable_tqdm", "true",
    ])
    assert rc == 0
    metrics = json.loads((out / "ppo_metrics.json").read_text())
    assert metrics["global_step"] == 1 and "eval_reward" in metrics["final_eval"]
    assert (out / "config.json").is_file()


def test_qlora_recipe_parses():
    from pathlib import Path

    from trl import ModelConfig

    from trl_extras.cli_utils import parse_args
    from trl_extras.trainers.ppo_cli import PPOScriptArguments
    from trl_extras.trainers.ppo_config import PPOConfig

    recipe = Path(__file__).parent.parent / "recipes" / "ppo_qlora.yaml"
    script_args, args, model_args = parse_args(
        [PPOScriptArguments, PPOConfig, ModelConfig], ["--config", str(recipe), "--use_cpu", "true", "--bf16", "false"],
        "ppo",
    )
    assert model_args.load_in_4bit and model_args.use_peft and model_args.lora_r == 16
    assert args.kl_estimator == "exact" and script_args.reward_model_path


def test_reward_ensemble_reward_logs_std_and_initialises_value(tiny_paths, tmp_path):
    from trl_extras.rewards.ensemble import RewardEnsemble

    ensemble = RewardEnsemble([tiny_paths["reward"], tiny_paths["reward"]], penalty="std", coef=0.5,
                              allow_uncalibrated=True)  # fmt: skip
    trainer = _trainer(tiny_paths, tmp_path, reward_funcs=ensemble, max_steps=1)
    value = trainer.accelerator.unwrap_model(trainer.value_model).model
    member = ensemble.models[0].state_dict()
    for name, tensor in value.state_dict().items():
        torch.testing.assert_close(tensor, member[name])
    trainer.train()
    assert _history(trainer, "ensemble/std")

    # an ensemble loaded under DeepSpeed ZeRO-3 (partitioned parameters carry `ds_id`) cannot score: refused clearly
    next(ensemble.models[0].parameters()).ds_id = 0
    with pytest.raises(NotImplementedError, match="ZeRO-3"):
        trainer._place_reward_models()


def test_long_prompts_truncated_from_the_left_with_one_warning(tiny_paths, tmp_path, caplog, monkeypatch):
    import logging

    from trl_extras.core import rollout

    monkeypatch.setattr(rollout, "_warned_truncation", False)
    seen = []

    def reward(prompts, completions, **kwargs):
        seen.extend(prompts)
        return _length_reward(prompts, completions)

    trainer = _trainer(tiny_paths, tmp_path, reward_funcs=reward, max_prompt_length=4, max_steps=2,
                       num_ppo_epochs=1, num_mini_batches=1)
    with caplog.at_level(logging.WARNING, logger="trl_extras.core.rollout"):
        trainer.train()
    assert sum("truncated from the left" in r.message for r in caplog.records) == 1
    assert trainer.state.global_step == 2 and len(seen) == 8
