"""Evaluation helpers against brute force."""

import math

import pytest
import torch

from trl_extras.rewards.metrics import calibration_error, hard_quartile_accuracy, pairwise_accuracy


def test_pairwise_accuracy_counts_ties_half_and_uses_gold_sign():
    m = torch.tensor([1.0, -2.0, 0.0, 3.0])
    assert pairwise_accuracy(m) == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    g = torch.tensor([-0.5, -1.0, 0.2, 0.0])  # last pair has no right answer
    assert pairwise_accuracy(m, g) == pytest.approx((0 + 1 + 0.5) / 3)


def test_hard_quartile_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(101, generator=gen)
    g = torch.randn(101, generator=gen)
    order = sorted(range(101), key=lambda i: abs(g[i].item()))
    hard = order[: math.ceil(0.25 * 101)]
    brute = sum((m[i] > 0) == (g[i] > 0) for i in hard) / len(hard)
    assert hard_quartile_accuracy(m, g) == pytest.approx(float(brute))
    # A model right exactly on the easy pairs scores 1 overall-easy but 0 on the hard quartile.
    m2 = torch.where(g.abs() > g.abs().quantile(0.5), g.sign(), -g.sign())
    assert hard_quartile_accuracy(m2, g) == 0.0


def test_calibration_error_brute_force_and_perfect():
    gen = torch.Generator().manual_seed(1)
    m = torch.randn(500, generator=gen) * 2
    p = torch.sigmoid(m)
    y = (torch.rand(500, generator=gen) < p).float()
    brute = 0.0
    for b in range(10):
        lo, hi = b / 10, (b + 1) / 10
        sel = [(pi, yi) for pi, yi in zip(p.tolist(), y.tolist()) if lo <= pi < hi or (b == 9 and pi == 1.0)]
        if sel:
            brute += len(sel) / 500 * abs(sum(s[0] for s in sel) / len(sel) - sum(s[1] for s in sel) / len(sel))
    assert calibration_error(m, y) == pytest.approx(brute, abs=1e-9)
    # Soft labels equal to the model's own probabilities: perfectly calibrated.
    assert calibration_error(m, p) == pytest.approx(0.0, abs=1e-6)
    # Overconfident model: large margins but labels at chance.
    assert calibration_error(torch.full((100,), 5.0), torch.full((100,), 0.5)) > 0.45


@pytest.mark.parametrize(
    "call",
    [
        lambda: pairwise_accuracy(torch.tensor([])),
        lambda: pairwise_accuracy(torch.tensor([float("nan")])),
        lambda: pairwise_accuracy(torch.ones(2, 2)),
        lambda: pairwise_accuracy(torch.ones(3), torch.ones(2)),
        lambda: pairwise_accuracy(torch.ones(3), torch.zeros(3)),
        lambda: hard_quartile_accuracy(torch.ones(3), torch.ones(3), fraction=0.0),
        lambda: calibration_error(torch.ones(3), torch.tensor([0.0, 1.0, 2.0])),
        lambda: calibration_error(torch.ones(3), torch.ones(3), n_bins=0),
    ],
)
def test_bad_input_raises(call):
    with pytest.raises(ValueError):
        call()
