"""Small statistics for comparing models: a two-sided binomial (sign) test, win-rate intervals, mean intervals,
paired differences (paired t) and the exact McNemar test.

Used by :func:`trl_extras.evaluation.side_by_side` (the article's "side-by-side superiority ... we can use the binomial
test") and by the benchmarks. Pure functions over counts and lists; scipy does the distributions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# our name -> scipy.stats.binomtest(...).proportion_ci method
_METHODS = {"wilson": "wilson", "clopper-pearson": "exact"}


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or int(value) != value or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def binomial_test(wins: int, losses: int) -> float:
    """Two-sided p-value of ``wins`` against ``losses`` under H0 "each decisive comparison is a coin flip".

    ``scipy.stats.binomtest(wins, wins + losses, p=0.5, alternative="two-sided").pvalue`` — the sign test.
    Ties are *excluded* by the caller (pass only decisive comparisons): a tie carries no evidence about which
    model is better, and counting ties as half-wins would shrink the p-value artificially. With no decisive
    comparison at all (``wins + losses == 0``) there is no evidence either way and the p-value is ``1.0``.
    """
    wins, losses = _check_count("wins", wins), _check_count("losses", losses)
    n = wins + losses
    if n == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(wins, n, 0.5, alternative="two-sided").pvalue)


def win_rate_interval(wins: int, n: int, method: str = "wilson", confidence: float = 0.95) -> tuple[float, float]:
    """Confidence interval ``(low, high)`` for a success probability from ``wins`` successes in ``n`` trials.

    ``method="wilson"``: Wilson score interval (Wilson 1927; good coverage at small ``n``, never leaves [0, 1]).
    ``method="clopper-pearson"``: the exact interval from Beta quantiles (Clopper & Pearson 1934; conservative).
    Both are ``scipy.stats.binomtest(wins, n).proportion_ci(confidence, method="wilson" / "exact")``.
    ``n == 0`` gives the uninformative ``(0.0, 1.0)``.
    """
    wins, n = _check_count("wins", wins), _check_count("n", n)
    if wins > n:
        raise ValueError(f"wins ({wins}) cannot exceed n ({n})")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {tuple(_METHODS)}, got {method!r}")
    _check_confidence(confidence)
    if n == 0:
        return 0.0, 1.0
    from scipy.stats import binomtest

    ci = binomtest(wins, n).proportion_ci(confidence_level=confidence, method=_METHODS[method])
    return float(ci.low), float(ci.high)


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the sample mean and its Student-t confidence interval (unbiased std, ``n - 1`` dof).

    Fewer than two values have no spread estimate, so they raise rather than return a misleading interval;
    NaN or infinite values raise too.
    """
    _check_confidence(confidence)
    values = [float(v) for v in values]
    if len(values) < 2:
        raise ValueError(f"mean_ci needs at least 2 values, got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError("mean_ci got a NaN or infinite value")
    from scipy.stats import t

    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * math.sqrt(var / n)
    return mean, mean - half, mean + half


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Paired comparison of two methods measured on the same units (e.g. seeds that share data): ``d_i = a_i − b_i``.

    Returns ``{"n", "mean", "low", "high", "p_value"}``: the mean difference, its Student-t interval
    (:func:`mean_ci` of the ``d_i``) and the two-sided paired t-test p-value — the same as
    ``scipy.stats.ttest_rel(a, b)``. When every ``d_i`` is equal (up to float rounding) the spread is 0: the interval is the point and the
    p-value is 1.0 if that difference is 0, else 0.0 (scipy returns NaN there). Needs at least 2 pairs.
    """
    if len(a) != len(b):
        raise ValueError(f"paired_difference needs equally long a and b, got {len(a)} and {len(b)}")
    diffs = [float(x) - float(y) for x, y in zip(a, b)]
    mean, low, high = mean_ci(diffs, confidence)
    n = len(diffs)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    if sd <= 1e-12 * max(1.0, abs(mean)):  # equal differences up to float rounding: no spread
        p = 1.0 if mean == 0.0 else 0.0
    else:
        from scipy.stats import ttest_rel

        p = float(ttest_rel([float(x) for x in a], [float(y) for y in b]).pvalue)
    return {"n": n, "mean": mean, "low": low, "high": high, "p_value": min(1.0, p)}


def mcnemar_exact(correct_a: Sequence, correct_b: Sequence) -> dict[str, float]:
    """Exact McNemar test of two classifiers scored on the same items (McNemar 1947; the exact binomial form).

    ``correct_a``, ``correct_b``: ``(N,)`` sequences of 0/1 (or bool), item ``i`` right for A / for B. Only the
    discordant items carry evidence: ``only_a`` (A right, B wrong) and ``only_b``; under H0 "equally accurate" each
    discordant item is a coin flip, so the p-value is :func:`binomial_test` ``(only_a, only_b)``.
    Returns ``{"n", "only_a", "only_b", "p_value"}``.
    """
    if len(correct_a) != len(correct_b):
        raise ValueError(
            f"mcnemar_exact needs the same items for both models, got {len(correct_a)} and {len(correct_b)}"
        )
    only_a = only_b = 0
    for x, y in zip(correct_a, correct_b):
        if x not in (0, 1) or y not in (0, 1):
            raise ValueError(f"correct_a and correct_b must hold 0/1 values, got {x!r} and {y!r}")
        only_a += int(x and not y)
        only_b += int(y and not x)
    return {"n": len(correct_a), "only_a": only_a, "only_b": only_b, "p_value": binomial_test(only_a, only_b)}


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (Holm 1979), in the input order: reject H_i at family-wise level α when the
    adjusted ``p_i <= α``. With the ``m`` p-values sorted ascending, ``adj_(k) = max_{j<=k} min(1, (m − j + 1) p_(j))``
    (1-based ``j``): the step-down procedure made monotone. Controls the family-wise error rate under any dependence.
    """
    p = [float(x) for x in p_values]
    if not all(0.0 <= x <= 1.0 for x in p):
        raise ValueError(f"p_values must lie in [0, 1], got {p}")
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out
