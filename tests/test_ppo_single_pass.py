"""PPO's on-policy single pass (issue 23 item 6, "no redundant passes"): with one optimizer step of one
micro-batch per rollout batch, the rollout runs no policy/value statistics pass; the update's forward gives them
(old log-probs = new ones detached), and training is the same as with the rollout's own pass."""

from __future__ import annotations

import pytest
import torch

from tests.test_ppo import _history, _trainer

SINGLE = dict(max_steps=2, num_ppo_epochs=1, num_mini_batches=1, per_device_train_batch_size=8,
              gradient_accumulation_steps=1, lr_scheduler_type="constant")  # fmt: skip
COMPARED = ["reward", "kl/exact", "kl/coef", "entropy", "score", "penalized_reward", "advantages/mean",
            "value/explained_variance", "loss/policy", "loss/value", "policy/approx_kl", "policy/clipfrac",
            "policy/ratio_min", "policy/ratio_max"]  # fmt: skip


def _count_passes(trainer, monkeypatch):
    """Counts of the rollout's statistics pass (completion_token_stats) and of value-model forwards."""
    from trl_extras.modeling.lm import completion_token_stats as real
    from trl_extras.trainers.ppo import trainer as ppo_module

    counts = {"rollout_stats": 0, "value_forward": 0}

    def counting(*args, **kwargs):
        counts["rollout_stats"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(ppo_module, "completion_token_stats", counting)
    value = trainer.accelerator.unwrap_model(trainer.value_model)
    value.register_forward_hook(lambda *a: counts.__setitem__("value_forward", counts["value_forward"] + 1))
    return counts


def _params(trainer):
    value = trainer.accelerator.unwrap_model(trainer.value_model)
    return torch.cat([p.detach().flatten() for p in list(trainer.policy.parameters()) + list(value.parameters())])


@pytest.mark.parametrize("kl_estimator", ["exact", "k3"])
def test_single_pass_trains_like_the_rollout_pass_without_it(tiny_paths, tmp_path, monkeypatch, kl_estimator):
    runs = {}
    for single in (True, False):
        trainer = _trainer(tiny_paths, tmp_path / str(single), kl_estimator=kl_estimator, kl_coef=0.2, **SINGLE)
        trainer._single_pass_enabled = single
        counts = _count_passes(trainer, monkeypatch)
        before = _params(trainer)
        trainer.train()
        runs[single] = (trainer, counts, _params(trainer) - before)
    (one, one_counts, one_delta), (two, two_counts, two_delta) = runs[True], runs[False]
    # the passes: two rollouts; the two-pass run computes their statistics and values at rollout time too
    assert one_counts == {"rollout_stats": 0, "value_forward": 2}
    assert two_counts == {"rollout_stats": 2, "value_forward": 4}
    # the same training: the same metrics and the same parameter updates
    for key in COMPARED:
        a, b = _history(one, key), _history(two, key)
        assert len(a) == len(b) == 2, key
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6), key
    assert one_delta.abs().max() > 0
    torch.testing.assert_close(one_delta, two_delta, rtol=1e-4, atol=1e-6)
    # on-policy: ratio exactly 1, approx KL exactly 0, at every (first and only) update of a batch
    assert _history(one, "policy/approx_kl") == [0.0, 0.0]
    assert _history(one, "policy/ratio_min") == _history(one, "policy/ratio_max") == [1.0, 1.0]
    if kl_estimator == "k3":  # a sampled estimate is logged beside the exact KL, from the update's pass too
        assert _history(one, "kl/k3") == pytest.approx(_history(two, "kl/k3"), rel=1e-4, abs=1e-6)


OTHER_LAYOUTS = [dict(num_ppo_epochs=2), dict(num_mini_batches=2), dict(value_warmup_steps=1),
                 dict(gradient_accumulation_steps=2, per_device_train_batch_size=4)]  # fmt: skip


@pytest.mark.parametrize("layout", OTHER_LAYOUTS)
def test_other_layouts_keep_the_rollout_pass(tiny_paths, tmp_path, monkeypatch, layout):
    trainer = _trainer(tiny_paths, tmp_path, **{**SINGLE, "max_steps": 1, **layout})
    counts = _count_passes(trainer, monkeypatch)
    trainer.train()
    assert counts["rollout_stats"] == 1  # the update reuses (or, with GA, normalizes over) the rollout's statistics
    assert trainer._rollout_batch.is_complete
