"""Statistics helpers against scipy and brute force."""

import math

import pytest

from trl_extras.core.stats import (
    binomial_test,
    holm_adjust,
    mcnemar_exact,
    mean_ci,
    paired_difference,
    win_rate_interval,
)


def _brute_binom_two_sided(k, n):
    # exact two-sided test: sum of probabilities of outcomes no more likely than the observed one
    probs = [math.comb(n, i) * 0.5**n for i in range(n + 1)]
    return min(1.0, sum(p for p in probs if p <= probs[k] * (1 + 1e-7)))


@pytest.mark.parametrize("wins,losses", [(0, 1), (3, 7), (10, 10), (15, 2), (40, 25), (0, 12)])
def test_binomial_test_matches_brute_force(wins, losses):
    assert binomial_test(wins, losses) == pytest.approx(_brute_binom_two_sided(wins, wins + losses), rel=1e-6)


def test_binomial_test_symmetry_and_edges():
    assert binomial_test(0, 0) == 1.0  # no decisive comparison: no evidence
    assert binomial_test(7, 3) == pytest.approx(binomial_test(3, 7))
    assert binomial_test(5, 5) == pytest.approx(1.0)
    assert binomial_test(20, 0) < 1e-5
    with pytest.raises(ValueError, match="wins"):
        binomial_test(-1, 3)
    with pytest.raises(ValueError, match="losses"):
        binomial_test(1, 2.5)


def _wilson_closed_form(k, n, confidence):
    # Wilson (1927): centre and half-width of the score interval, written out
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + confidence / 2))
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (0.0 if k == 0 else center - half), (1.0 if k == n else center + half)


def _clopper_pearson_closed_form(k, n, confidence):
    # Clopper & Pearson (1934): Beta quantiles
    from scipy.stats import beta

    alpha = 1 - confidence
    low = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high


@pytest.mark.parametrize("wins,n", [(0, 10), (3, 10), (10, 10), (37, 100), (1, 1)])
@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_clopper_pearson_matches_closed_form(wins, n, confidence):
    low, high = win_rate_interval(wins, n, method="clopper-pearson", confidence=confidence)
    assert (low, high) == pytest.approx(_clopper_pearson_closed_form(wins, n, confidence), abs=1e-9)


@pytest.mark.parametrize("wins,n", [(0, 10), (3, 10), (10, 10), (37, 100), (1, 1)])
@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_wilson_matches_closed_form(wins, n, confidence):
    low, high = win_rate_interval(wins, n, method="wilson", confidence=confidence)
    assert (low, high) == pytest.approx(_wilson_closed_form(wins, n, confidence), abs=1e-9)
    assert 0.0 <= low <= wins / n <= high <= 1.0
    assert isinstance(low, float) and isinstance(high, float)


def test_win_rate_interval_coverage_brute_force():
    # Clopper-Pearson is conservative: coverage >= nominal for every true p (computed exactly, not sampled)
    n = 30
    intervals = [win_rate_interval(k, n, method="clopper-pearson") for k in range(n + 1)]
    for p in (0.1, 0.3, 0.5, 0.8):
        coverage = sum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k, (lo, hi) in enumerate(intervals) if lo <= p <= hi)
        assert coverage >= 0.95 - 1e-9


def test_win_rate_interval_bad_input():
    assert win_rate_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="exceed"):
        win_rate_interval(5, 3)
    with pytest.raises(ValueError, match="method"):
        win_rate_interval(1, 3, method="agresti")
    with pytest.raises(ValueError, match="confidence"):
        win_rate_interval(1, 3, confidence=1.5)


def test_mean_ci_matches_scipy():
    from scipy import stats

    values = [0.2, 0.9, 0.4, 0.7, 0.55, 0.31]
    mean, low, high = mean_ci(values, 0.9)
    ref = stats.t.interval(0.9, len(values) - 1, loc=sum(values) / len(values), scale=stats.sem(values))
    assert mean == pytest.approx(sum(values) / len(values))
    assert (low, high) == pytest.approx(ref)
    with pytest.raises(ValueError, match="at least 2"):
        mean_ci([1.0])
    with pytest.raises(ValueError, match="NaN"):
        mean_ci([1.0, float("nan")])


@pytest.mark.parametrize(
    "a,b",
    [
        ([0.81, 0.84, 0.79, 0.86, 0.83], [0.78, 0.80, 0.80, 0.82, 0.79]),
        ([0.5, 0.6, 0.7], [0.55, 0.5, 0.9]),
        ([1.0, 2.0, 4.0, 8.0, 3.0, 0.5], [0.0, 2.5, 3.0, 9.0, 1.0, 0.0]),
    ],
)
def test_paired_difference_matches_scipy(a, b):
    from scipy import stats

    d = [x - y for x, y in zip(a, b)]
    out = paired_difference(a, b, 0.95)
    assert out["n"] == len(a)
    assert out["mean"] == pytest.approx(sum(d) / len(d))
    low, high = stats.t.interval(0.95, len(d) - 1, loc=sum(d) / len(d), scale=stats.sem(d))
    assert (out["low"], out["high"]) == pytest.approx((low, high))
    assert out["p_value"] == pytest.approx(float(stats.ttest_rel(a, b).pvalue), rel=1e-9)
    # swapping the methods flips the sign, not the evidence
    swapped = paired_difference(b, a, 0.95)
    assert swapped["mean"] == pytest.approx(-out["mean"])
    assert swapped["p_value"] == pytest.approx(out["p_value"])


def test_paired_difference_degenerate_and_bad_input():
    same = paired_difference([0.7, 0.8, 0.9], [0.7, 0.8, 0.9])
    assert (same["mean"], same["low"], same["high"], same["p_value"]) == (0.0, 0.0, 0.0, 1.0)
    shifted = paired_difference([1.5, 2.5, 3.5], [1.0, 2.0, 3.0])  # exact in binary: the spread is exactly 0
    assert (shifted["mean"], shifted["low"], shifted["high"]) == (0.5, 0.5, 0.5)
    assert shifted["p_value"] == 0.0  # identical nonzero differences: no spread, certain
    with pytest.raises(ValueError, match="equally long"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="at least 2"):
        paired_difference([1.0], [2.0])


def _mcnemar_closed_form(only_a, only_b):
    # exact McNemar: two-sided binomial tail on the discordant pairs, 2 * P(X <= min) capped at 1
    n = only_a + only_b
    k = min(only_a, only_b)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


@pytest.mark.parametrize("only_a,only_b,both,neither", [(3, 12, 50, 5), (20, 20, 10, 0), (0, 7, 3, 1), (31, 17, 200, 40)])
def test_mcnemar_exact_counts_discordant_items(only_a, only_b, both, neither):
    import random

    items = [(1, 0)] * only_a + [(0, 1)] * only_b + [(1, 1)] * both + [(0, 0)] * neither
    random.Random(0).shuffle(items)
    a, b = [x for x, _ in items], [bool(y) for _, y in items]
    out = mcnemar_exact(a, b)
    assert (out["n"], out["only_a"], out["only_b"]) == (len(items), only_a, only_b)
    assert out["p_value"] == pytest.approx(_mcnemar_closed_form(only_a, only_b), rel=1e-9)
    # concordant items carry no evidence: dropping them leaves the p-value unchanged
    assert mcnemar_exact([1] * only_a + [0] * only_b, [0] * only_a + [1] * only_b)["p_value"] == out["p_value"]


def test_mcnemar_exact_bad_input():
    assert mcnemar_exact([1, 0, 1], [1, 0, 1])["p_value"] == 1.0
    with pytest.raises(ValueError, match="same items"):
        mcnemar_exact([1, 0], [1])
    with pytest.raises(ValueError, match="0/1"):
        mcnemar_exact([1, 0.5], [1, 0])


def _holm_brute_force(p, alpha):
    # the step-down procedure itself: reject in ascending order while p_(k) <= alpha / (m - k + 1)
    m = len(p)
    rejected = set()
    for k, i in enumerate(sorted(range(m), key=lambda i: p[i])):
        if p[i] > alpha / (m - k):
            break
        rejected.add(i)
    return rejected


@pytest.mark.parametrize("p", [[0.01, 0.04, 0.03, 0.005], [0.2, 0.001, 0.05, 0.049, 0.5, 0.0], [0.03], []])
def test_holm_adjust_matches_step_down(p):
    adj = holm_adjust(p)
    assert len(adj) == len(p)
    assert all(a >= x for a, x in zip(adj, p)) and all(a <= 1.0 for a in adj)
    for alpha in (0.01, 0.05, 0.1):
        assert {i for i, a in enumerate(adj) if a <= alpha} == _holm_brute_force(p, alpha)


def test_holm_adjust_closed_form_and_bad_input():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, 1*0.04 -> 0.02, 0.03, 0.06, max(0.06, 0.04)
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    with pytest.raises(ValueError, match="p_values"):
        holm_adjust([0.5, 1.5])
