"""ExactKLGRPOTrainer: trains, adds exactly β·(aggregated exact KL), uses the adapter-disabled base under LoRA."""

from pathlib import Path

import pytest
import torch
from helpers import cpu_config

from trl_extras.modeling.lm import completion_token_stats


def _args(tmp_path, **kw):
    from trl_extras.trainers.exact_kl_grpo import ExactKLGRPOConfig

    defaults = dict(
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=6,
        max_steps=2,
        learning_rate=1e-2,
        temperature=0.9,
        exact_kl_coef=0.5,
        exact_kl_chunk_size=4,
        seed=0,
    )
    return cpu_config(ExactKLGRPOConfig, tmp_path, **{**defaults, **kw})


def _dataset(n=8):
    from trl_extras.testbed import TestbedConfig, prompt_dataset

    return prompt_dataset("train", TestbedConfig(num_train_prompts=n, num_holdout_prompts=4))


def _spread_reward(prompts, completions, **kwargs):
    """A reward with spread on a random tiny policy: the sum of the characters' codes mod 7. (The gold reward is 0 on
    every sample of a random policy unless chance says otherwise, so GRPO's advantages, loss and update were all 0
    and the policy-moved assertions failed depending on the RNG state the test started with.)"""
    return [sum(map(ord, c)) % 7 / 7 for c in completions]


def _trainer(tiny_paths, tmp_path, **kw):
    from trl_extras.trainers.exact_kl_grpo import ExactKLGRPOTrainer

    peft_config = kw.pop("peft_config", None)
    return ExactKLGRPOTrainer(
        model=tiny_paths["policy"],
        reward_funcs=_spread_reward,
        args=_args(tmp_path, **kw),
        train_dataset=_dataset(),
        peft_config=peft_config,
    )


def test_config_validation(tmp_path, tiny_paths):
    from trl import GRPOConfig

    from trl_extras.trainers.exact_kl_grpo import ExactKLGRPOTrainer

    with pytest.raises(ValueError, match="beta=0.0"):
        _trainer(tiny_paths, tmp_path, beta=0.1)
    with pytest.raises(ValueError, match="exact_kl_coef"):
        _args(tmp_path, exact_kl_coef=-1.0)
    with pytest.raises(ValueError, match="exact_kl_chunk_size"):
        _args(tmp_path, exact_kl_chunk_size=0)
    with pytest.raises(TypeError, match="ExactKLGRPOConfig"):
        ExactKLGRPOTrainer(
            tiny_paths["policy"],
            reward_funcs=lambda **k: [0.0],
            args=GRPOConfig(str(tmp_path), use_cpu=True, bf16=False),
        )


def test_trains_two_steps_and_logs_exact_kl(tiny_paths, tmp_path):
    trainer = _trainer(tiny_paths, tmp_path)
    assert trainer.ref_model is None  # GRPO's own reference is not loaded (beta=0)
    assert trainer._exact_kl_ref is not None
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    logged = [h for h in trainer.state.log_history if "exact_kl" in h]
    assert len(logged) == 2
    assert all(torch.isfinite(torch.tensor(h["exact_kl"])) and h["exact_kl"] >= -1e-6 for h in logged)
    assert logged[-1]["exact_kl"] > 0  # the policy moved away from its frozen reference
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert all(not p.requires_grad for p in trainer._exact_kl_ref.parameters())


def _prepared_batch(trainer):
    # GRPO's (private) generation + scoring path: fails loudly when TRL changes it
    batch = next(iter(trainer.get_train_dataloader()))
    return trainer._prepare_inputs(batch)


def _manual_term(trainer, ref, inputs):
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    T = inputs["completion_ids"].size(1)
    positions = torch.arange(ids.size(1)).expand_as(ids)  # GRPO's forward counts positions 0 … L−1 (one pass)
    stats = completion_token_stats(trainer.model, ref, ids, mask, T, temperature=trainer.temperature,
                                   position_ids=positions)  # fmt: skip
    m = inputs["completion_mask"].float()
    per_seq = (stats["exact_kl"] * m).sum(-1) / m.sum(-1).clamp(min=1)  # per-sequence mean ("grpo" aggregation)
    return stats["exact_kl"], m, per_seq


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo"])
def test_added_term_is_beta_times_exact_kl(tiny_paths, tmp_path, loss_type):
    trainer = _trainer(tiny_paths, tmp_path, loss_type=loss_type, exact_kl_coef=3.0)
    # make the policy differ from the reference so the KL is not zero
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    trainer.model.eval()  # mode "eval": no accumulation scaling, deterministic forward
    inputs = _prepared_batch(trainer)
    loss_with = trainer.compute_loss(trainer.model, inputs).item()
    trainer.exact_kl_coef = 0.0
    loss_without = trainer.compute_loss(trainer.model, inputs).item()
    kl, m, per_seq = _manual_term(trainer, trainer._exact_kl_ref, inputs)
    expected = per_seq.mean() if loss_type == "grpo" else (kl * m).sum() / m.sum()
    assert expected > 1e-4
    assert loss_with - loss_without == pytest.approx(3.0 * expected.item(), rel=1e-4, abs=1e-6)
    assert trainer._metrics["eval"]["exact_kl"][-1] == pytest.approx(((kl * m).sum() / m.sum()).item(), rel=1e-4)


def test_lora_uses_adapter_disabled_reference(tiny_paths, tmp_path):
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    trainer = _trainer(
        tiny_paths,
        tmp_path,
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
        exact_kl_coef=2.0,
        loss_type="grpo",  # per-sequence means, as `per_seq` below (lengths differ once the adapter moved)
    )
    assert trainer._exact_kl_ref is None and trainer.ref_model is None  # no second copy in memory
    assert "ref" not in trainer.model.peft_config  # a fresh (zero) LoRA: base == initial policy, no adapter copy
    with torch.no_grad():  # as after some training: the adapter moves, the reference stays the base
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    trainer.model.eval()
    inputs = _prepared_batch(trainer)
    loss_with = trainer.compute_loss(trainer.model, inputs).item()
    trainer.exact_kl_coef = 0.0
    loss_without = trainer.compute_loss(trainer.model, inputs).item()
    base = AutoModelForCausalLM.from_pretrained(tiny_paths["policy"]).eval()
    _, _, per_seq = _manual_term(trainer, base, inputs)  # reference = the base checkpoint itself
    assert per_seq.mean() > 1e-4
    assert loss_with - loss_without == pytest.approx(2.0 * per_seq.mean().item(), rel=1e-4, abs=1e-6)
    trainer.exact_kl_coef = 2.0
    trainer.model.train()
    trainer.train()
    assert any("exact_kl" in h for h in trainer.state.log_history)


def test_cli_runs_on_tiny_model(tiny_paths, tmp_path, capsys):
    from trl_extras.cli import main

    rc = main(
        [
            "grpo-exact-kl",
            "--config",
            str(Path(__file__).parents[1] / "recipes" / "grpo_exact_kl_testbed.yaml"),
            "--model_name_or_path",
            tiny_paths["policy"],
            "--output_dir",
            str(tmp_path / "out"),
            "--max_steps",
            "1",
            "--num_train_prompts",
            "8",
            "--per_device_train_batch_size",
            "4",
            "--num_generations",
            "2",
            "--max_completion_length",
            "4",
        ]
    )
    assert rc == 0
    assert "exact KL to the reference" in capsys.readouterr().out
    assert (tmp_path / "out" / "config.json").exists()
