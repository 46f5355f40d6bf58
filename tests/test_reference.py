"""The reference of a PEFT policy is the initial policy (issue 10, item 4): one resolver for PPO and exact-KL GRPO.

A ``PeftModel`` whose LoRA is already trained (here: ``init_lora_weights=False``, so every ``lora_B`` is non-zero)
must be its own reference at the start (exact KL 0 at the first rollout), through a frozen ``"ref"`` copy of the
adapter that is never trained or saved; a fresh zero LoRA keeps the cheap adapter-disabled reference.
"""

import pytest
import torch
from helpers import cpu_config
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_extras.modeling import (
    REFERENCE_ADAPTER,
    adapter_is_identity,
    is_peft_model,
    reference_adapter_hidden,
    reference_context,
    resolve_reference,
)


def _lora(path, trained: bool):
    model = AutoModelForCausalLM.from_pretrained(path)
    torch.manual_seed(0)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM",
                     init_lora_weights=not trained)
    peft_model = get_peft_model(model, cfg)
    if trained:  # a visible effect, like an SFT'd adapter
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5)
    return peft_model


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_is_peft_model(tiny_paths):
    assert is_peft_model(_lora(tiny_paths["policy"], trained=False))
    assert not is_peft_model(AutoModelForCausalLM.from_pretrained(tiny_paths["policy"]))
    assert not is_peft_model(object())


def test_adapter_identity_detection(tiny_paths):
    assert adapter_is_identity(_lora(tiny_paths["policy"], trained=False))
    assert not adapter_is_identity(_lora(tiny_paths["policy"], trained=True))
    dora = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_paths["policy"]),
                          LoraConfig(r=4, target_modules=["q_proj"], use_dora=True))
    assert not adapter_is_identity(dora)  # a magnitude vector may be trained: not known to be the identity


def test_reference_adapter_is_a_frozen_unsaved_copy(tiny_paths, tmp_path):
    model = _lora(tiny_paths["policy"], trained=True)
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    initial = _logits(model, ids)
    trainable_before = _trainable(model)
    assert resolve_reference(model) is None
    assert REFERENCE_ADAPTER in model.peft_config and model.active_adapter == "default"
    assert _trainable(model) == trainable_before  # "ref" is frozen, not counted
    assert all(not p.requires_grad for n, p in model.named_parameters() if ".ref." in n)
    # the policy trains on; the reference stays the policy as given
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".default." in n:
                p.add_(0.3)
    with reference_context(model):
        torch.testing.assert_close(_logits(model, ids), initial)
    assert not torch.allclose(_logits(model, ids), initial)
    # requires_grad is exactly as before the block, also for a frozen policy (PPO's value warm-up)
    model.requires_grad_(False)
    with reference_context(model):
        pass
    assert _trainable(model) == 0
    # save_pretrained is PEFT's own (no instance attribute shadows it) and saves every adapter; the trainers save
    # through reference_adapter_hidden, which writes the user's adapter only and puts "ref" back
    assert "save_pretrained" not in vars(model)
    model.save_pretrained(tmp_path / "all")
    assert (tmp_path / "all" / REFERENCE_ADAPTER / "adapter_model.safetensors").exists()
    with reference_adapter_hidden(model):
        model.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "adapter_model.safetensors").exists()
    assert not (tmp_path / "saved" / REFERENCE_ADAPTER).exists()
    assert REFERENCE_ADAPTER in model.peft_config and model.active_adapter == "default"


def test_fresh_adapter_reference_is_the_disabled_base(tiny_paths):
    model = _lora(tiny_paths["policy"], trained=False)
    assert resolve_reference(model) is None
    assert REFERENCE_ADAPTER not in model.peft_config  # no copy: base == initial policy
    ids = torch.tensor([[1, 5, 6, 7]])
    base = AutoModelForCausalLM.from_pretrained(tiny_paths["policy"])
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    with reference_context(model):
        torch.testing.assert_close(_logits(model, ids), _logits(base, ids))


def test_plain_policy_reference_is_a_frozen_copy(tiny_paths):
    model = AutoModelForCausalLM.from_pretrained(tiny_paths["policy"])
    ref = resolve_reference(model, make_copy=lambda: AutoModelForCausalLM.from_pretrained(tiny_paths["policy"]))
    assert ref is not model and not ref.training and not any(p.requires_grad for p in ref.parameters())
    with pytest.raises(ValueError, match="make_copy"):
        resolve_reference(model)
    with pytest.raises(ValueError, match="PeftModel"):
        with reference_context(model):
            pass


def _ppo(policy, tiny_paths, tmp_path, **kw):
    from datasets import Dataset

    from trl_extras import PPOConfig, PPOTrainer

    args = cpu_config(
        PPOConfig, tmp_path, per_device_train_batch_size=4, num_mini_batches=1, num_ppo_epochs=1, max_steps=1,
        max_completion_length=6, learning_rate=1e-3, seed=0, value_model_init="policy", **kw,
    )
    return PPOTrainer(
        policy, lambda completions, **k: [float(len(c)) for c in completions], args=args,
        train_dataset=Dataset.from_dict({"prompt": ["3 1 >", "9 8 7 >", "5 >", "2 4 6 >"]}),
        processing_class=AutoTokenizer.from_pretrained(tiny_paths["policy"]),
    )


def test_ppo_trained_adapter_first_rollout_kl_is_zero(tiny_paths, tmp_path):
    from trl_extras.modeling.lm import trunk_hidden_states

    policy = _lora(tiny_paths["policy"], trained=True)
    trainer = _ppo(policy, tiny_paths, tmp_path)  # default value model: constructs (base_layer names merged)
    # the value backbone starts from the policy as given (adapter merged), not from the bare base
    value = trainer.accelerator.unwrap_model(trainer.value_model)
    ids, mask = torch.tensor([[1, 5, 6, 7]]), torch.ones(1, 4, dtype=torch.long)
    with torch.no_grad():
        v_hidden = trunk_hidden_states(value.model.model, ids, mask)
        p_hidden = trunk_hidden_states(policy.get_base_model().model, ids, mask)
    torch.testing.assert_close(v_hidden, p_hidden, atol=1e-5, rtol=1e-5)
    trainer.train()
    kl = [h["kl/exact"] for h in trainer.state.log_history if "kl/exact" in h]
    print(f"[PPO PeftModel with trained adapter] first-rollout exact KL = {kl[0]:.3g}")
    assert kl[0] == pytest.approx(0.0, abs=1e-6)
    trainer.save_model(str(tmp_path / "final"))
    assert (tmp_path / "final" / "adapter_model.safetensors").exists()
    assert not (tmp_path / "final" / REFERENCE_ADAPTER).exists()


def test_ppo_peft_config_with_nonzero_init_keeps_initial_policy(tiny_paths, tmp_path):
    """A fresh adapter that is not the identity (here random B) gets the "ref" copy too: KL starts at 0."""
    from trl_extras import PPOConfig, PPOTrainer  # noqa: F401

    cfg = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM", init_lora_weights=False)
    from datasets import Dataset

    args = cpu_config(PPOConfig, tmp_path, per_device_train_batch_size=4, num_mini_batches=1, num_ppo_epochs=1,
                      max_steps=1, max_completion_length=6, seed=0)
    trainer = PPOTrainer(tiny_paths["policy"], lambda completions, **k: [0.0] * len(completions), args=args,
                         train_dataset=Dataset.from_dict({"prompt": ["3 1 >", "5 >"] * 2}), peft_config=cfg)
    trainer.train()
    kl = [h["kl/exact"] for h in trainer.state.log_history if "kl/exact" in h]
    assert kl[0] == pytest.approx(0.0, abs=1e-6)


def test_exact_kl_grpo_trained_adapter_first_kl_is_zero(tiny_paths, tmp_path):
    from trl_extras.testbed import TestbedConfig, gold_reward_fn, prompt_dataset
    from trl_extras.trainers.exact_kl_grpo import ExactKLGRPOConfig, ExactKLGRPOTrainer

    policy = _lora(tiny_paths["policy"], trained=True)
    args = cpu_config(
        ExactKLGRPOConfig, tmp_path, per_device_train_batch_size=4, num_generations=2, max_completion_length=6,
        max_steps=1, learning_rate=1e-3, exact_kl_coef=0.5, seed=0,
    )
    trainer = ExactKLGRPOTrainer(
        model=policy, reward_funcs=gold_reward_fn, args=args,
        train_dataset=prompt_dataset("train", TestbedConfig(num_train_prompts=8, num_holdout_prompts=4)),
    )
    assert trainer._exact_kl_ref is None and REFERENCE_ADAPTER in policy.peft_config
    trainer.train()
    kl = [h["exact_kl"] for h in trainer.state.log_history if "exact_kl" in h]
    print(f"[ExactKLGRPO PeftModel with trained adapter] first logged exact KL = {kl[0]:.3g}")
    assert kl[0] == pytest.approx(0.0, abs=1e-6)


def test_cem_trained_adapter_keeps_its_initial_policy_as_reference(tiny_paths, tmp_path):
    """CEM's KL control uses the same resolver: the SFT rounds regularise towards the adapter as given."""
    from trl_extras import CEMTrainer
    from trl_extras.testbed import TestbedConfig, prompt_dataset
    from trl_extras.trainers.cem import CEMConfig

    policy = _lora(tiny_paths["policy"], trained=True)
    ids = torch.tensor([[1, 5, 6, 7]])
    initial = _logits(policy, ids)
    args = cpu_config(CEMConfig, tmp_path / "cem", num_rounds=1, num_generations=4, max_completion_length=6,
                      generation_chunk_size=16, per_device_train_batch_size=8, num_train_epochs=1,
                      learning_rate=1e-2, seed=0, kl_coef=0.1)
    trainer = CEMTrainer(policy, lambda completions, **k: [-abs(len(c) - 6) / 6 for c in completions], args,
                         train_dataset=prompt_dataset("train", TestbedConfig(num_train_prompts=4, num_holdout_prompts=2)),
                         processing_class=AutoTokenizer.from_pretrained(tiny_paths["policy"]))
    assert trainer.ref_model is None and REFERENCE_ADAPTER in policy.peft_config
    history = trainer.train()
    assert "kl_to_ref" in history[0]
    assert not torch.allclose(_logits(trainer.model, ids), initial)  # the policy moved ...
    with reference_context(trainer.model):
        torch.testing.assert_close(_logits(trainer.model, ids), initial)  # ... its reference did not
    saved = tmp_path / "cem" / "round_0" / "model"
    assert (saved / "adapter_model.safetensors").exists() and not (saved / REFERENCE_ADAPTER).exists()
