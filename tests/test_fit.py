"""`loglog_slope`: exact on data it models, Student-t intervals, and the
correction term that removes the O(x) bias of a straight fit."""

import numpy as np
import pytest
import scipy.stats

from flowgap.analysis import loglog_slope

X = 0.04 / 2.0 ** np.arange(5)


def test_correction_recovers_an_exact_power_with_a_linear_correction():
    """log y = p log x + c + d x holds exactly for y = e^c xᵖ e^{dx}: the fit
    returns (p, c, d) to rounding (1e-10 allows the conditioning of the
    3-column design, ~1e4, times ε of the logs)."""
    p, c, d = 2.0, 0.7, 3.0
    fit = loglog_slope(X, np.exp(c) * X**p * np.exp(d * X), correction=True)
    assert fit["slope"] == pytest.approx(p, abs=1e-10)
    assert fit["intercept"] == pytest.approx(c, abs=1e-10)
    assert fit["correction"] == pytest.approx(d, abs=1e-8)


def test_straight_fit_reads_the_correction_as_slope():
    """For y = xᵖ(1 + D x) the straight fit is off by about D·mean(x) and its
    interval misses p; with the correction the interval contains p."""
    p, big_d = 3.0, 2.0
    y = X**p * (1 + big_d * X)
    straight = loglog_slope(X, y)
    assert straight["slope"] - p == pytest.approx(big_d * X.mean(), rel=0.5)
    assert not straight["ci"][0] < p < straight["ci"][1]
    corrected = loglog_slope(X, y, correction=True)
    assert corrected["ci"][0] < p < corrected["ci"][1]


def test_intervals_match_scipy_regression():
    """The straight fit's standard error and interval are scipy's linregress
    with Student's t at n − 2 degrees of freedom."""
    rng = np.random.default_rng(0)
    y = X**1.5 * np.exp(0.05 * rng.standard_normal(X.size))
    fit = loglog_slope(X, y)
    ref = scipy.stats.linregress(np.log(X), np.log(y))
    assert fit["slope"] == pytest.approx(ref.slope, rel=1e-12)
    assert fit["stderr"] == pytest.approx(ref.stderr, rel=1e-10)
    half = scipy.stats.t.ppf(0.975, X.size - 2) * ref.stderr
    assert fit["ci"][1] - fit["slope"] == pytest.approx(half, rel=1e-8)


def test_correction_needs_three_points_and_has_no_interval_at_three():
    with pytest.raises(ValueError, match="three points"):
        loglog_slope(X[:2], X[:2] ** 2, correction=True)
    fit = loglog_slope(X[:3], X[:3] ** 2, correction=True)
    assert np.isnan(fit["ci"][0]) and np.isnan(fit["stderr"])
