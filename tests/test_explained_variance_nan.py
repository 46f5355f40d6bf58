"""`value/explained_variance` is NaN (undefined), not 1.0 or a -1e8-scale number, when the returns have zero variance
(CleanRL's ``np.nan if var_y == 0``); the PPO trainer logs it without tripping the non-finite guard."""

import math

import pytest
import torch
from test_core_masked import _FakeAccelerator

from trl_extras.core.ppo import explained_variance


def test_all_equal_returns_give_nan_whatever_the_values():
    returns = torch.zeros(2, 4)
    mask = torch.ones(2, 4)
    assert math.isnan(explained_variance(returns, returns, mask).item())  # old code: 1.0 (0 / clamped 0)
    values = torch.randn(2, 4)
    assert math.isnan(explained_variance(values, returns, mask).item())  # old code: about -1e8
    constant = torch.full((2, 4), 3.7)  # equal float32 returns: the float64 two-pass variance is exactly 0
    assert math.isnan(explained_variance(values, constant, mask).item())


def test_single_valid_token_gives_nan():
    returns, values = torch.tensor([[2.0, 5.0, -1.0]]), torch.tensor([[1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 0, 0]])
    assert math.isnan(explained_variance(values, returns, mask).item())


def test_masked_rows_do_not_count():
    returns = torch.tensor([[1.0, 1.0, 1.0], [9.0, -4.0, 7.0]])
    values = torch.tensor([[0.0, 2.0, 1.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [0, 0, 0]])  # the second row is padding: the valid returns are all equal
    assert math.isnan(explained_variance(values, returns, mask).item())
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])  # one varying valid token: defined again, closed form
    valid_r, valid_v = torch.tensor([1.0, 1.0, 1.0, 9.0]), torch.tensor([0.0, 2.0, 1.0, 0.0])
    expected = 1 - (valid_r - valid_v).var(unbiased=False) / valid_r.var(unbiased=False)
    assert explained_variance(values, returns, mask).item() == pytest.approx(expected.item(), rel=1e-5)


def test_global_variance_decides_not_the_local_one():
    # this process's returns are constant, the other process's are not: the global ratio is defined
    returns, mask = torch.ones(2, 3), torch.ones(2, 3)
    values = 0.5 * returns
    other_returns, other_values = torch.tensor([[0.0, 2.0, 4.0]]), torch.tensor([[0.0, 1.0, 2.0]])
    other_mask = torch.ones(1, 3)
    acc = _TwoProcesses([(other_returns, other_mask), (other_returns - other_values, other_mask)])
    ev = explained_variance(values, returns, mask, accelerator=acc)
    all_r = torch.cat([returns.flatten(), other_returns.flatten()])
    all_v = torch.cat([values.flatten(), other_values.flatten()])
    expected = 1 - (all_r - all_v).var(unbiased=False) / all_r.var(unbiased=False)
    assert ev.item() == pytest.approx(expected.item(), rel=1e-5)
    # both processes constant and equal: undefined globally too
    same = torch.ones(1, 3)
    acc = _TwoProcesses([(same, other_mask), (same - 0.5, other_mask)])
    assert math.isnan(explained_variance(values, returns, mask, accelerator=acc).item())


class _TwoProcesses:
    """Two processes simulated for ``masked_moments`` (two reduces per variance): the i-th variance adds the other
    process's shard ``shards[i]`` (test_core_masked's fake accelerator, one shard per variance)."""

    num_processes = 2

    def __init__(self, shards):
        self.shards, self.calls = shards, 0

    def reduce(self, t, reduction="sum"):
        if self.calls % 2 == 0:
            self.fake = _FakeAccelerator(*self.shards[self.calls // 2])
        self.calls += 1
        return self.fake.reduce(t, reduction)


def test_window_keeps_defined_entries_and_nan_when_none():
    from trl_extras.trainers.ppo.trainer import _window_reduce

    nan = float("nan")
    assert _window_reduce("value/explained_variance", [0.5, nan, 0.25]) == pytest.approx(0.375)
    assert math.isnan(_window_reduce("value/explained_variance", [nan, nan]))
    assert math.isnan(_window_reduce("loss/value", [1.0, nan]))  # other metrics keep a NaN visible


def test_ppo_with_constant_returns_logs_nan_and_trains(tiny_paths, tmp_path):
    """Every reward 0, no KL penalty, lambda = 1: every return is 0. The metric is NaN and training goes on (the
    non-finite guard is about losses and gradients, not metrics)."""
    from test_ppo import _history, _trainer

    def zero_reward(prompts, completions, **kwargs):
        return [0.0] * len(completions)

    trainer = _trainer(tiny_paths, tmp_path, reward_funcs=zero_reward, max_steps=2, kl_coef=0.0, lam=1.0,
                       num_ppo_epochs=1, num_mini_batches=2)
    trainer.train()
    assert trainer.state.global_step == 2
    logged = _history(trainer, "value/explained_variance")
    assert logged and all(math.isnan(v) for v in logged)  # old code: 1.0 or about -1e8
    assert all(math.isfinite(v) for v in _history(trainer, "loss/value"))
