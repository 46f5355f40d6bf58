"""trl_extras.core.best_of_n against brute force: all n-subsets, the exact KL of a best-of-n distribution, and fits
that recover known coefficients."""

import itertools
import math

import pytest
import torch

from trl_extras.core.best_of_n import (
    best_of_n_curve,
    best_of_n_kl,
    best_of_n_weights,
    expected_best_of_n,
    fit_best_of_n,
    fit_rl,
)


def brute_force_best_of_n(proxy: list[float], values: list[float], n: int) -> float:
    """Mean over every n-subset of the value of its proxy-argmax (ties: the mean over the tied maxima)."""
    total, count = 0.0, 0
    for subset in itertools.combinations(range(len(proxy)), n):
        best = max(proxy[i] for i in subset)
        tied = [values[i] for i in subset if proxy[i] == best]
        total += sum(tied) / len(tied)
        count += 1
    return total / count


def test_weights_match_combinatorics_and_sum_to_one():
    for m in (1, 5, 9, 64):
        for n in {1, min(2, m), m // 2 or 1, m}:
            w = best_of_n_weights(m, n)
            assert w.shape == (m,)
            assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)
            expected = [math.comb(i - 1, n - 1) / math.comb(m, n) for i in range(1, m + 1)]
            assert w.tolist() == pytest.approx(expected, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_expected_best_of_n_equals_all_subsets(seed):
    g = torch.Generator().manual_seed(seed)
    P, m = 3, 7
    proxy = torch.randn(P, m, generator=g)
    values = torch.rand(P, m, generator=g)
    for n in range(1, m + 1):
        got = expected_best_of_n(proxy, values, n)
        want = [brute_force_best_of_n(proxy[p].tolist(), values[p].tolist(), n) for p in range(P)]
        assert got.tolist() == pytest.approx(want, abs=1e-12)


def test_ties_are_broken_uniformly_whatever_the_sample_order():
    proxy = torch.tensor([[1.0, 2.0, 2.0, 0.0, 2.0, 1.0]])
    values = torch.tensor([[0.3, 0.0, 1.0, 0.9, 0.5, 0.2]])
    for n in range(1, 7):
        want = brute_force_best_of_n(proxy[0].tolist(), values[0].tolist(), n)
        assert float(expected_best_of_n(proxy, values, n)) == pytest.approx(want, abs=1e-12)
        perm = torch.tensor([[4, 2, 0, 5, 1, 3]])
        permuted = expected_best_of_n(proxy.gather(1, perm), values.gather(1, perm), n)
        assert float(permuted) == pytest.approx(want, abs=1e-12)


def test_n1_is_the_mean_and_nm_is_the_argmax():
    g = torch.Generator().manual_seed(3)
    proxy, values = torch.randn(4, 16, generator=g), torch.rand(4, 16, generator=g)
    assert expected_best_of_n(proxy, values, 1).tolist() == pytest.approx(values.double().mean(1).tolist())
    top = values.gather(1, proxy.argmax(1, keepdim=True))[:, 0]
    assert expected_best_of_n(proxy, values, 16).tolist() == pytest.approx(top.double().tolist())
    curve = best_of_n_curve(proxy, values, [1, 4, 16])
    assert curve.shape == (3, 4)
    assert curve[1].tolist() == pytest.approx(expected_best_of_n(proxy, values, 4).tolist())
    # selecting by the values themselves can only help, more so with larger n
    own = best_of_n_curve(values, values, [1, 2, 4, 8, 16]).mean(1)
    assert (own[1:] >= own[:-1]).all()


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="1 <= n <= m"):
        expected_best_of_n(torch.zeros(2, 4), torch.zeros(2, 4), 5)
    with pytest.raises(ValueError, match=r"\(P, m\)"):
        expected_best_of_n(torch.zeros(2, 4), torch.zeros(2, 3), 1)
    with pytest.raises(ValueError, match="n must be"):
        best_of_n_kl(0)
    with pytest.raises(ValueError, match="finite"):
        expected_best_of_n(torch.tensor([[0.0, float("nan")]]), torch.zeros(1, 2), 1)


def exact_best_of_n_kl(p: torch.Tensor, n: int) -> float:
    """KL(best-of-n ‖ p) of a discrete distribution ``p`` over outcomes with distinct rewards, in ascending reward
    order: the best-of-n policy puts ``F(i)^n − F(i − 1)^n`` on outcome ``i``."""
    p = p.double()
    cdf = p.cumsum(0)
    q = cdf**n - torch.cat([torch.zeros(1, dtype=torch.float64), cdf[:-1]]) ** n
    keep = q > 0
    return float((q[keep] * (q[keep] / p[keep]).log()).sum())


@pytest.mark.parametrize("n", [1, 2, 4, 16, 64])
def test_kl_formula_is_exact_in_the_continuous_limit_and_an_upper_bound(n):
    formula = best_of_n_kl(n)
    fine = exact_best_of_n_kl(torch.full((200_000,), 1 / 200_000), n)  # many equally likely distinct rewards
    assert fine == pytest.approx(formula, abs=1e-3)
    g = torch.Generator().manual_seed(n)
    for atoms in (2, 5, 30):  # a coarse reward: the formula overstates the KL
        p = torch.rand(atoms, generator=g) + 0.05
        p = p / p.sum()
        assert exact_best_of_n_kl(p, n) <= formula + 1e-12
    if n > 1:
        assert exact_best_of_n_kl(torch.tensor([0.5, 0.5]), n) < formula - 1e-3
    assert float(best_of_n_kl(torch.tensor([n]))[0]) == pytest.approx(formula)


def test_fits_recover_coefficients():
    d = torch.linspace(0, 2.0, 12, dtype=torch.float64)
    fit = fit_best_of_n(d, d * (0.7 - 0.4 * d))
    assert (fit.alpha, fit.beta, fit.r2) == pytest.approx((0.7, 0.4, 1.0), abs=1e-9)
    d_log_d = torch.where(d > 0, d * d.clamp(min=1e-12).log(), torch.zeros_like(d))
    fit = fit_rl(d, 0.5 * d - 0.2 * d_log_d)
    assert (fit.alpha, fit.beta, fit.r2) == pytest.approx((0.5, 0.2, 1.0), abs=1e-9)
    # noisy points: still close, and R² below 1; the wrong form fits worse than the right one
    g = torch.Generator().manual_seed(0)
    d = torch.linspace(0.1, 3.0, 40, dtype=torch.float64)
    gain = d * (0.6 - 0.3 * d) + 0.01 * torch.randn(40, generator=g, dtype=torch.float64)
    fit = fit_best_of_n(d, gain)
    assert fit.alpha == pytest.approx(0.6, abs=0.03) and fit.beta == pytest.approx(0.3, abs=0.02)
    assert 0.9 < fit.r2 < 1.0
    assert fit_rl(d, gain).r2 < fit.r2
    with pytest.raises(ValueError, match="one length"):
        fit_rl([0.0, 1.0], [0.0])
