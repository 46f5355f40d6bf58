"""Pure ensemble math against brute-force loops."""

import math

import pytest
import torch

from trl_extras.core.ensemble import EnsembleStats, ensemble_stats, penalize, standardize_members


def _brute_stats(members):
    k, n = members.shape
    mean, var = [], []
    for j in range(n):
        column = [float(members[i, j]) for i in range(k)]
        m = sum(column) / k
        mean.append(m)
        var.append(sum((x - m) ** 2 for x in column) / k)  # ddof=0
    return torch.tensor(mean), torch.tensor(var), torch.tensor([math.sqrt(v) for v in var])


@pytest.mark.parametrize("k,n", [(2, 1), (4, 7), (5, 33)])
def test_stats_match_brute_force(k, n):
    members = torch.randn(k, n, generator=torch.Generator().manual_seed(k * n)) * 3 + 1
    mean, var, std = ensemble_stats(members)
    bm, bv, bs = _brute_stats(members)
    torch.testing.assert_close(mean, bm)
    torch.testing.assert_close(var, bv)
    torch.testing.assert_close(std, bs)
    # population variance, not the unbiased one
    torch.testing.assert_close(var, members.var(dim=0, unbiased=False))


def test_penalties_match_brute_force():
    members = torch.randn(4, 9, generator=torch.Generator().manual_seed(0))
    bm, bv, bs = _brute_stats(members)
    torch.testing.assert_close(penalize(members, "variance", 0.5), bm - 0.5 * bv)
    torch.testing.assert_close(penalize(members, "std", 0.3), bm - 0.3 * bs)
    torch.testing.assert_close(penalize(members, "mean"), bm)
    brute_min = torch.tensor([min(float(members[i, j]) for i in range(4)) for j in range(9)])
    torch.testing.assert_close(penalize(members, "min", coef=123.0), brute_min)  # coef unused by min
    # stats in, same answer as members in
    stats = ensemble_stats(members)
    assert isinstance(stats, EnsembleStats)
    torch.testing.assert_close(penalize(stats, "variance", 0.1), penalize(members, "variance", 0.1))


def test_penalty_orders_by_disagreement():
    # same mean, growing spread: the penalized reward must decrease
    members = torch.tensor([[1.0, 0.5, 0.0], [1.0, 1.5, 2.0]])
    out = penalize(members, "variance", 1.0)
    assert out[0] > out[1] > out[2]
    assert penalize(members, "min")[2] == 0.0


def test_standardize_members_brute_force():
    scores = torch.tensor([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]])
    mean, std = torch.tensor([2.0, 20.0]), torch.tensor([0.5, 5.0])
    out = standardize_members(scores, mean, std)
    expected = torch.tensor(
        [[(s - 2.0) / 0.5 for s in (1.0, 2.0, 3.0)], [(s - 20.0) / 5.0 for s in (10.0, 20.0, 30.0)]]
    )
    torch.testing.assert_close(out, expected)
    # after standardization a pure offset/scale difference between members is no disagreement
    assert float(ensemble_stats(out).var.max()) == 0.0


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least 2 members"):
        ensemble_stats(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"\(K, N\)"):
        ensemble_stats(torch.zeros(3))
    with pytest.raises(ValueError, match="Non-finite"):
        ensemble_stats(torch.tensor([[0.0, float("nan")], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="Unknown ensemble penalty"):
        penalize(torch.zeros(2, 2), "median")
    with pytest.raises(ValueError, match=">= 0"):
        penalize(torch.zeros(2, 2), "variance", -1.0)
    with pytest.raises(ValueError, match="needs the"):
        penalize(ensemble_stats(torch.zeros(2, 2)), "min")
    with pytest.raises(ValueError, match="> 0"):
        standardize_members(torch.zeros(2, 2), torch.zeros(2), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="2 members"):
        standardize_members(torch.zeros(2, 2), torch.zeros(3), torch.ones(3))
