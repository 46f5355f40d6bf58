"""Issue 22 item 1: never train on, nor save, a non-finite state (``trl_extras.utils.finite``).

The NaN is injected by the test itself at a chosen optimizer step (a monkeypatched loss function or a callback
that breaks a weight), never by timing and never through an environment hook in production code.
"""

from __future__ import annotations

import pytest
import torch
from helpers import cpu_config

from trl_extras.utils.finite import NonFiniteError, check_finite_state

NAN = float("nan")
INF = float("inf")
CPU = dict(use_cpu=True, bf16=False, report_to="none")


# ------------------------------------------------------------------------------------------ every config float
def _ppo(**kw):
    from trl_extras.trainers.ppo import PPOConfig

    return PPOConfig("/tmp/unused", **CPU, **kw)


def _cem(**kw):
    from trl_extras.trainers.cem import CEMConfig

    return CEMConfig("/tmp/unused", **CPU, num_generations=4, elite_top_k=1, **kw)


def _grpo(**kw):
    from trl_extras.trainers.exact_kl_grpo import ExactKLGRPOConfig

    return ExactKLGRPOConfig("/tmp/unused", **CPU, **{"beta": 0.0, **kw})


def _two_stage(**kw):
    from trl_extras.rewards.two_stage import TwoStageRewardConfig

    return TwoStageRewardConfig("/tmp/unused", **CPU, **kw)


def _ensemble(**kw):
    from datasets import Dataset
    from trl import RewardConfig

    from trl_extras.rewards.ensemble import train_reward_ensemble

    pairs = Dataset.from_list([{"prompt": "1 >", "chosen": " 1", "rejected": " 2"}])
    return train_reward_ensemble("unused-model", pairs, args=RewardConfig("/tmp/unused", **CPU, **kw))


# (config factory, field, value): each was accepted before (nan > 0 is False, nan < 0 is False: every range check
# lets NaN through), then trained with clipping silently off or a NaN coefficient in the loss.
CONFIG_FLOATS = [
    ("ppo", _ppo, "max_grad_norm", NAN),
    ("ppo", _ppo, "max_grad_norm", INF),
    ("ppo", _ppo, "adam_epsilon", NAN),
    ("ppo", _ppo, "weight_decay", NAN),
    ("ppo", _ppo, "adam_beta2", NAN),
    ("ppo", _ppo, "num_train_epochs", INF),
    ("cem", _cem, "max_grad_norm", NAN),
    ("cem", _cem, "weight_decay", INF),
    ("cem", _cem, "adam_beta1", NAN),
    ("grpo", _grpo, "exact_kl_coef", NAN),
    ("grpo", _grpo, "max_grad_norm", NAN),
    ("grpo", _grpo, "epsilon", NAN),
    ("grpo", _grpo, "temperature", NAN),
    ("grpo", _grpo, "learning_rate", INF),
    ("two_stage", _two_stage, "pretrain_learning_rate", NAN),
    ("two_stage", _two_stage, "pretrain_num_train_epochs", INF),
    ("two_stage", _two_stage, "max_grad_norm", NAN),
    ("two_stage", _two_stage, "learning_rate", NAN),
    ("ensemble", _ensemble, "max_grad_norm", NAN),
    ("ensemble", _ensemble, "learning_rate", INF),
]


@pytest.mark.parametrize(("kind", "make", "name", "value"), CONFIG_FLOATS,
                         ids=[f"{c[0]}-{c[2]}={c[3]}" for c in CONFIG_FLOATS])  # fmt: skip
def test_non_finite_config_float_is_refused_naming_the_field(kind, make, name, value):
    with pytest.raises(ValueError, match=rf"{name} must be a finite number, got {value}"):
        make(**{name: value})


def test_nonfinite_action_is_checked():
    with pytest.raises(ValueError, match=r"nonfinite_action must be one of \('error', 'skip'\), got 'ignore'"):
        _ppo(nonfinite_action="ignore")


# ------------------------------------------------------------------------------------------ pure helpers
def test_check_finite_state_names_the_broken_tensor():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    assert check_finite_state(model) == []
    with torch.no_grad():
        model[1].bias[0] = NAN
    assert check_finite_state({"value_model": model}) == ["value_model.1.bias"]


# ------------------------------------------------------------------------------------------ PPO end to end
def _ppo_trainer(tiny_paths, out, reward=None, callbacks=None, **overrides):
    from trl_extras.testbed import prompt_dataset
    from trl_extras.trainers.ppo import PPOConfig, PPOTrainer

    settings = dict(save_strategy="steps", save_steps=1, save_total_limit=1, max_steps=4, per_device_train_batch_size=4,
                    num_mini_batches=1, num_ppo_epochs=1, max_completion_length=4, learning_rate=1e-3)  # fmt: skip
    settings.update(overrides)
    args = cpu_config(PPOConfig, out, **settings)
    reward = reward or (lambda prompts, completions, **k: [float(len(c)) for c in completions])
    return PPOTrainer(tiny_paths["policy"], reward_funcs=reward, args=args,
                      train_dataset=prompt_dataset("train").select(range(16)), callbacks=callbacks)  # fmt: skip


def _inject_nan_value_loss(monkeypatch, holder: dict, at_global_step: int):
    """The test hook: PPO's value loss is NaN while the trainer computes optimizer step ``at_global_step + 1``."""
    import trl_extras.trainers.ppo.trainer as ppo_trainer

    real = ppo_trainer.value_loss

    def value_loss(*args, **kwargs):
        losses, clipped = real(*args, **kwargs)
        if holder["trainer"].state.global_step == at_global_step:
            losses = losses * NAN
        return losses, clipped

    monkeypatch.setattr(ppo_trainer, "value_loss", value_loss)


def _checkpoints(out) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-"))


def _finite_checkpoint(path) -> bool:
    from safetensors.torch import load_file

    for name in ("model.safetensors", "value_model.safetensors"):
        state = load_file(str(path / name))
        if not all(bool(torch.isfinite(t).all()) for t in state.values()):
            return False
    return True


def test_ppo_nan_loss_at_step_k_stops_keeps_the_good_checkpoint_and_resumes_from_it(tiny_paths, tmp_path, monkeypatch):
    out = tmp_path / "ppo"
    holder = {}
    _inject_nan_value_loss(monkeypatch, holder, at_global_step=2)
    trainer = holder["trainer"] = _ppo_trainer(tiny_paths, out)
    with pytest.raises(NonFiniteError, match=r"optimizer step 3: loss term\(s\) value"):
        trainer.train()
    assert _checkpoints(out) == ["checkpoint-2"]  # the good one is kept, nothing written after it
    assert _finite_checkpoint(out / "checkpoint-2")
    monkeypatch.undo()

    resumed = _ppo_trainer(tiny_paths, out)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 4
    assert _checkpoints(out) == ["checkpoint-4"] and _finite_checkpoint(out / "checkpoint-4")


def test_ppo_nan_loss_with_skip_drops_that_step_only(tiny_paths, tmp_path, monkeypatch):
    from transformers import TrainerCallback

    class Snapshot(TrainerCallback):
        """Weights before and after optimizer step 3 (the poisoned one)."""

        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == 2:
                self.before = [p.detach().clone() for p in trainer.policy.parameters()]

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                self.after = [p.detach().clone() for p in trainer.policy.parameters()]

    snapshot = Snapshot()
    holder = {}
    _inject_nan_value_loss(monkeypatch, holder, at_global_step=2)
    trainer = holder["trainer"] = _ppo_trainer(tiny_paths, tmp_path / "ppo", callbacks=[snapshot],
                                               nonfinite_action="skip", save_strategy="no")  # fmt: skip
    trainer.train()
    assert trainer.state.global_step == 4
    assert all(torch.equal(a, b) for a, b in zip(snapshot.before, snapshot.after))  # step 3 changed nothing
    assert check_finite_state(trainer.nonfinite_models()) == []
    skipped = [h["nonfinite/skipped_steps"] for h in trainer.state.log_history if "nonfinite/skipped_steps" in h]
    assert skipped == [1.0]


def test_ppo_never_writes_a_checkpoint_of_nan_weights_nor_rotates_out_the_good_one(tiny_paths, tmp_path):
    """A broken update (finite loss and gradients, weights NaN after the step): the checkpoint of that step is
    refused, the previous one stays (save_total_limit=1 used to rotate it out for the NaN one)."""
    from transformers import TrainerCallback

    class BreakWeights(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 2:
                with torch.no_grad():
                    next(trainer.policy.parameters()).view(-1)[0] = NAN

    out = tmp_path / "ppo"
    trainer = _ppo_trainer(tiny_paths, out, callbacks=[BreakWeights()])
    with pytest.raises(NonFiniteError, match=r"Not saving the checkpoint of step 2: policy\.model\.embed_tokens"):
        trainer.train()
    assert _checkpoints(out) == ["checkpoint-1"] and _finite_checkpoint(out / "checkpoint-1")


def test_ppo_overflowing_rewards_stop_at_the_value_loss(tiny_paths, tmp_path):
    """Rewards of 1e20 are finite floats, but the squared value error is inf: stopped at step 1, naming the term."""
    trainer = _ppo_trainer(tiny_paths, tmp_path / "ppo", reward=lambda prompts, completions, **k: [1e20] * len(prompts),
                           save_strategy="no", max_steps=2)  # fmt: skip
    with pytest.raises(NonFiniteError, match=r"optimizer step 1: loss term\(s\) value"):
        trainer.train()
    assert check_finite_state(trainer.nonfinite_models()) == []


# ------------------------------------------------------------------------------------------ the other trainers
def _poison(monkeypatch, cls, at_global_step: int):
    """The test hook for a TRL trainer: ``cls.compute_loss`` (the base the package's trainer calls) is NaN while
    optimizer step ``at_global_step + 1`` is computed."""
    real = cls.compute_loss

    def compute_loss(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        if self.model.training and self.state.global_step == at_global_step:
            return (result[0] * NAN, *result[1:]) if isinstance(result, tuple) else result * NAN
        return result

    monkeypatch.setattr(cls, "compute_loss", compute_loss)


def _run_cem(tiny_paths, out):
    from datasets import Dataset

    from trl_extras.trainers.cem import CEMConfig, CEMTrainer

    args = cpu_config(CEMConfig, out, num_rounds=1, num_generations=4, max_completion_length=4, elite_top_k=2,
                      max_steps=3, per_device_train_batch_size=1, plot=False, learning_rate=1e-3)  # fmt: skip
    CEMTrainer(tiny_paths["policy"], reward_funcs=lambda prompts, completions, **k: [float(len(c)) for c in completions],
               args=args, train_dataset=Dataset.from_dict({"prompt": ["1 2 >", "3 1 >"]})).train()  # fmt: skip


def _run_two_stage(tiny_paths, out):
    from trl_extras.rewards.two_stage import TwoStageRewardConfig, TwoStageRewardTrainer
    from trl_extras.testbed import clean_pairs, dirty_pairs

    args = cpu_config(TwoStageRewardConfig, out, per_device_train_batch_size=4, max_steps=2, pretrain_max_steps=3)
    TwoStageRewardTrainer(tiny_paths["reward"], args=args, train_dataset=clean_pairs().select(range(8)),
                          pretrain_dataset=dirty_pairs().select(range(16))).train()  # fmt: skip


def _run_ensemble(tiny_paths, out):
    from trl import RewardConfig

    from trl_extras.rewards.ensemble import train_reward_ensemble
    from trl_extras.testbed import clean_pairs

    args = cpu_config(RewardConfig, out, per_device_train_batch_size=4, max_steps=3)
    train_reward_ensemble(tiny_paths["policy"], clean_pairs().select(range(16)), args=args, k=2, calibration_size=None,
                          progress=False)  # fmt: skip


def _run_grpo(tiny_paths, out):
    from trl_extras.testbed import TestbedConfig, gold_reward_fn, prompt_dataset
    from trl_extras.trainers.exact_kl_grpo import ExactKLGRPOConfig, ExactKLGRPOTrainer

    args = cpu_config(ExactKLGRPOConfig, out, per_device_train_batch_size=4, num_generations=2, max_completion_length=4,
                      max_steps=3, exact_kl_coef=0.5, exact_kl_chunk_size=4)  # fmt: skip
    ExactKLGRPOTrainer(tiny_paths["policy"], reward_funcs=gold_reward_fn, args=args,
                       train_dataset=prompt_dataset("train", TestbedConfig(num_train_prompts=8, num_holdout_prompts=4)),
                       ).train()  # fmt: skip


def _sft():
    from trl import SFTTrainer

    return SFTTrainer


def _reward():
    from trl import RewardTrainer

    return RewardTrainer


def _grpo_cls():
    from trl import GRPOTrainer

    return GRPOTrainer


# (name, run, the TRL base whose loss is poisoned, words of the error): before, each trained on with NaN weights
OTHER_TRAINERS = [
    ("cem fine-tuning", _run_cem, _sft, r"optimizer step 2: loss term\(s\) nll"),
    ("two-stage reward model", _run_two_stage, _reward, r"optimizer step 2: the loss = nan"),
    ("reward ensemble member", _run_ensemble, _reward, r"optimizer step 2: the loss = nan"),
    ("exact-kl grpo", _run_grpo, _grpo_cls, r"optimizer step 2: loss term\(s\) grpo"),
]


@pytest.mark.parametrize(("name", "run", "base", "words"), OTHER_TRAINERS, ids=[c[0] for c in OTHER_TRAINERS])
def test_every_trainer_stops_on_a_nan_loss_naming_step_and_term(name, run, base, words, tiny_paths, tmp_path,
                                                               monkeypatch):  # fmt: skip
    _poison(monkeypatch, base(), at_global_step=1)
    with pytest.raises(NonFiniteError, match=words):
        run(tiny_paths, tmp_path / "out")


def test_cem_never_writes_a_round_model_of_nan_weights(tiny_paths, tmp_path):
    """A round whose fine-tuning ends with broken weights: its model (what a resume loads) is not written."""
    from datasets import Dataset
    from transformers import TrainerCallback

    from trl_extras.trainers.cem import CEMConfig, CEMTrainer

    class BreakWeights(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kw):
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] = NAN

    out = tmp_path / "cem"
    args = cpu_config(CEMConfig, out, num_rounds=1, num_generations=4, max_completion_length=4, elite_top_k=2,
                      max_steps=1, plot=False)  # fmt: skip
    trainer = CEMTrainer(tiny_paths["policy"], reward_funcs=lambda prompts, completions, **k: [0.0] * len(prompts),
                         args=args, train_dataset=Dataset.from_dict({"prompt": ["1 2 >", "3 1 >"]}),
                         callbacks=[BreakWeights()])  # fmt: skip
    with pytest.raises(NonFiniteError, match=r"CEM round 0: not saving the model, model\.model\.embed_tokens\.weight"):
        trainer.train()
    assert not (out / "round_0" / "model").exists() and not (out / "round_0" / "metrics.json").exists()
