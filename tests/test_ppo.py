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
    from trl_extras.trainers.ppo import PPOConfig

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
def test_token_value_model_matches_reward_model_at_last_token(tiny_paths):
    from transformers import AutoModelForSequenceClassification

    from trl_extras.trainers.ppo.trainer import TokenValueModel

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
    # a rollout every num_mini_batches * num_ppo_epochs = 4 steps: one rollout in 4 steps, whose metrics are logged
    # at each of the 4 steps that train on it
    assert len(_history(trainer, "reward")) == 4 and len(set(_history(trainer, "reward"))) == 1
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


def test_kl_early_stop_skips_the_rest_of_the_rollout_batch(tiny_paths, tmp_path):
    from transformers import TrainerCallback

    seen_prompts = []

    def reward(prompts, completions, **kwargs):
        seen_prompts.append(list(prompts))
        return _length_reward(prompts, completions)

    class Snapshots(TrainerCallback):
        def __init__(self):
            self.params = []

        def on_step_end(self, args, state, control, model=None, **kwargs):
            self.params.append(torch.cat([p.detach().flatten().clone() for p in model.parameters()]))

    snaps = Snapshots()
    # 2 minibatches x 2 epochs = 4 optimizer steps per rollout batch, 2 rollout batches; the target is always
    # exceeded, so each batch trains one minibatch and its 3 remaining steps are no-ops
    trainer = _trainer(tiny_paths, tmp_path, reward_funcs=reward, max_steps=8, num_mini_batches=2, num_ppo_epochs=2,
                       kl_early_stop_target=-1.0, callbacks=[snaps], lr_scheduler_type="constant")
    before = torch.cat([p.detach().flatten().clone() for p in trainer.model.parameters()])
    trainer.train()
    assert trainer.state.global_step == 8
    assert len(_history(trainer, "policy/early_stop")) == 2
    assert len(seen_prompts) == 2  # one rollout per rollout batch, no re-sampling
    assert seen_prompts[0] != seen_prompts[1]  # the second is the NEXT rollout batch, not the same prompts again
    moved = [not torch.equal(a, b) for a, b in zip([before] + snaps.params[:-1], snaps.params)]
    assert moved == [True, False, False, False, True, False, False, False]


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
    assert resumed._schedule.step == 2 * resumed.args.gradient_accumulation_steps  # and the place in the rollout cycle

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
    from trl_extras.trainers.ppo import PPOConfig, PPOTrainer

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

    from trl_extras.scripts.ppo import PPOScriptArguments
    from trl_extras.scripts.utils import parse_args
    from trl_extras.trainers.ppo import PPOConfig

    recipe = Path(__file__).parent.parent / "recipes" / "ppo_qlora.yaml"
    script_args, args, model_args = parse_args(
        [PPOScriptArguments, PPOConfig, ModelConfig], ["--config", str(recipe), "--use_cpu", "true", "--bf16", "false"],
        "ppo",
    )
    assert model_args.load_in_4bit and model_args.use_peft and model_args.lora_r == 16
    assert args.kl_estimator == "exact" and script_args.reward_funcs


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

    from trl_extras.modeling import generation as rollout

    monkeypatch.setattr(rollout, "_warned_truncation", False)
    seen = []

    def reward(prompts, completions, **kwargs):
        seen.extend(prompts)
        return _length_reward(prompts, completions)

    trainer = _trainer(tiny_paths, tmp_path, reward_funcs=reward, max_prompt_length=4, max_steps=2,
                       num_ppo_epochs=1, num_mini_batches=1)
    with caplog.at_level(logging.WARNING, logger="trl_extras.modeling.generation"):
        trainer.train()
    assert sum("truncated from the left" in r.message for r in caplog.records) == 1
    assert trainer.state.global_step == 2 and len(seen) == 8


# ---------------------------------------------------------------------------------------------------------------
# issue 10: the exact KL's direct gradient, autocast-consistent old log-probs, loss aggregation
# ---------------------------------------------------------------------------------------------------------------
def _bandit_kl(tiny_paths, tmp_path, estimator, steps=30):
    """One-token bandit: one prompt, max_completion_length=1, reward 0, policy perturbed from the reference, beta=1:
    the only force on the policy is the KL penalty. Returns the exact KL at the first and last rollout."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from trl_extras.trainers.ppo import PPOTrainer

    ref = AutoModelForCausalLM.from_pretrained(tiny_paths["policy"])
    policy = AutoModelForCausalLM.from_pretrained(tiny_paths["policy"])
    with torch.no_grad():
        policy.lm_head.weight.add_(0.3 * torch.randn(policy.lm_head.weight.shape, generator=torch.Generator().manual_seed(0)))
    prompt = _data(n=8)["prompt"][0]
    trainer = PPOTrainer(
        policy, reward_funcs=lambda prompts, completions, **kw: [0.0] * len(prompts), ref_model=ref,
        args=_args(tmp_path, output_dir=str(tmp_path / estimator), kl_estimator=estimator, kl_coef=1.0,
                   learning_rate=1e-2, max_steps=steps, max_completion_length=1, per_device_train_batch_size=16,
                   num_mini_batches=1, num_ppo_epochs=1, lr_scheduler_type="constant"),
        train_dataset=Dataset.from_dict({"prompt": [prompt] * 16}),
    )
    trainer.train()
    kl = _history(trainer, "kl/exact")
    return kl[0], kl[-1]


@pytest.mark.slow
def test_exact_kl_moves_a_one_token_bandit_towards_the_reference(tiny_paths, tmp_path):
    k1_before, k1_after = _bandit_kl(tiny_paths, tmp_path, "k1")
    exact_before, exact_after = _bandit_kl(tiny_paths, tmp_path, "exact")
    print(f"bandit KL: k1 {k1_before:.3f} -> {k1_after:.3f}; exact {exact_before:.3f} -> {exact_after:.3f}")
    assert exact_before == pytest.approx(k1_before, rel=1e-6) and exact_before > 0.5
    assert k1_after < 0.9 * k1_before
    # the state term alone gives every token the same advantage (whitened to 0): only the direct term moves it
    assert exact_after < 0.7 * exact_before


def test_first_update_ratio_is_exactly_one_under_bf16_autocast(tiny_paths, tmp_path, monkeypatch):
    """fp32 weights + bf16=True (CPU autocast): the rollout's old log-probs and the update's new ones come from the
    same autocast, chunks and kernel, so the first update's log-ratio is exactly 0."""
    from trl_extras.core import ppo as core_ppo
    from trl_extras.trainers.ppo import trainer as ppo_module

    seen = []

    def recording_policy_loss(logprobs, old_logprobs, advantages, cliprange):
        seen.append((logprobs.detach() - old_logprobs).clone())
        return core_ppo.policy_loss(logprobs, old_logprobs, advantages, cliprange)

    monkeypatch.setattr(ppo_module, "policy_loss", recording_policy_loss)
    trainer = _trainer(tiny_paths, tmp_path, bf16=True, max_steps=1, num_ppo_epochs=1, num_mini_batches=1,
                       per_device_train_batch_size=8)
    trainer._single_pass_enabled = False  # the rollout's own pass, compared with the update's (else old = new)
    assert trainer.accelerator.mixed_precision == "bf16"
    trainer.train()
    mask = trainer._rollout_batch.completion_mask
    assert len(seen) == 1 and mask.sum() > 0
    assert seen[0][mask.bool()].abs().max().item() == 0.0
    assert _history(trainer, "policy/approx_kl")[0] == 0.0


def _one_update(policy_path, tmp_path, loss_type, per_device, ga):
    trainer = _trainer({"policy": policy_path}, tmp_path, max_steps=1, num_mini_batches=1, num_ppo_epochs=1,
                       per_device_train_batch_size=per_device, gradient_accumulation_steps=ga, loss_type=loss_type,
                       optim="sgd", max_grad_norm=0.0, learning_rate=1e-2, lr_scheduler_type="constant",
                       output_dir=str(tmp_path / f"{loss_type}-{ga}"))
    params = list(trainer.model.parameters()) + list(trainer.value_model.parameters())
    before = [p.detach().clone() for p in params]
    trainer.train()
    lengths = trainer._rollout_batch.completion_mask.sum(1)
    return torch.cat([(p.detach() - b).flatten() for p, b in zip(params, before)]), lengths


@pytest.mark.slow  # ~40 s: three trainings of the SFT policy (aggregate_loss itself is tested in test_core_ppo)
def test_dapo_loss_makes_gradient_accumulation_exact(sft_policy_path, tmp_path):
    """GA=2 over micro-batches of unequal token counts gives the GA=1 update with loss_type='dapo' (not 'bnpo')."""
    whole, lengths = _one_update(sft_policy_path, tmp_path, "dapo", 8, 1)
    accumulated, lengths2 = _one_update(sft_policy_path, tmp_path, "dapo", 4, 2)
    assert torch.equal(lengths, lengths2)  # the same rollout batch
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    assert lengths[perm[:4]].sum() != lengths[perm[4:]].sum()  # the two micro-batches differ in token count
    assert whole.abs().max() > 0
    torch.testing.assert_close(accumulated, whole, atol=1e-6, rtol=1e-4)
    # with one micro-batch on one process 'bnpo' is the same loss as 'dapo' (aggregate_loss tests this), so `whole`
    # is also the bnpo GA=1 update: bnpo's GA=2 update weighs the two micro-batches equally and differs
    bnpo_accumulated, _ = _one_update(sft_policy_path, tmp_path, "bnpo", 4, 2)
    assert not torch.allclose(bnpo_accumulated, whole, atol=1e-6, rtol=1e-4)


def test_batch_layout_uses_grpo_names(tmp_path, caplog):
    import logging

    # TRL GRPOConfig meanings: steps_per_generation micro-batches per process, generation_batch_size sequences
    args = _args(tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=2, num_mini_batches=3)
    assert (args.steps_per_generation, args.generation_batch_size, args.rollout_batch_size) == (6, 24, 24)
    args = _args(tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=2, num_mini_batches=None,
                 steps_per_generation=4)
    assert (args.num_mini_batches, args.generation_batch_size) == (2, 16)
    args = _args(tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=1, num_mini_batches=None,
                 generation_batch_size=12)
    assert (args.num_mini_batches, args.steps_per_generation) == (3, 3)
    assert _args(tmp_path, num_mini_batches=None).num_mini_batches == 1
    with pytest.raises(ValueError, match="not both"):
        _args(tmp_path, num_mini_batches=None, steps_per_generation=2, generation_batch_size=8)
    with pytest.raises(ValueError, match="multiple of gradient_accumulation_steps"):
        _args(tmp_path, num_mini_batches=None, gradient_accumulation_steps=2, steps_per_generation=3)
    with pytest.raises(ValueError, match="contradicts"):
        _args(tmp_path, num_mini_batches=2, steps_per_generation=1)
    with pytest.raises(ValueError, match="multiple of per_device_train_batch_size"):
        _args(tmp_path, num_mini_batches=None, generation_batch_size=6)
    with pytest.raises(ValueError, match="loss_type"):
        _args(tmp_path, loss_type="token_mean")
    assert _args(tmp_path).missing_eos_penalty is None and _args(tmp_path).loss_type == "dapo"
    with caplog.at_level(logging.WARNING, logger="trl_extras.trainers.ppo.config"):
        _args(tmp_path, disable_dropout=False)
    assert any("disable_dropout=False" in r.message for r in caplog.records)


def test_resume_inside_a_rollout_batch_logs_its_rollout_metrics(tiny_paths, tmp_path):
    """Each logged step carries the rollout it trains on (reward, kl/*, entropy...): a run resumed inside a rollout
    batch's epochs did not sample that batch, so its first logged steps had update metrics only (found by the
    examples' stop-and-resume run). The buffer file keeps what the rollout logged."""
    kw = dict(max_steps=4, save_strategy="steps", save_steps=1, num_mini_batches=2, num_ppo_epochs=2,
              logging_steps=1)  # a 4-step cycle: checkpoint-1 is inside the first batch
    first = _trainer(tiny_paths, tmp_path, **kw)
    first.train()
    uninterrupted = [h for h in first.state.log_history if "loss/policy" in h]
    resumed = _trainer(tiny_paths, tmp_path, **kw)
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-1"))
    after = [h for h in resumed.state.log_history if "loss/policy" in h and h["step"] > 1]
    assert after and all("reward" in h and "kl/exact" in h for h in after)
    assert after[0]["reward"] == pytest.approx(uninterrupted[1]["reward"])  # the batch's own rollout, not another
