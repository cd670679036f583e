"""Monte Carlo expectations with standard errors, and weak-error exponents in η
(docs: theory/sgd).

Every random test uses a fixed key, so it is deterministic; the tolerances are
the ones a fresh seed would pass with the stated probability."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowgap.analysis import (
    MonteCarloEstimate,
    monte_carlo,
    sample_covariance,
    weak_error_exponent,
)

N = 20_000
M = jnp.array([1.0, -2.0, 3.0])
S = jnp.array([0.5, 1.0, 2.0])


def gaussian(key):
    return jax.random.normal(key, (3,)) * S + M


@pytest.fixture(scope="module")
def estimate():
    return monte_carlo(gaussian, (jax.random.key(0), N))


def test_mean_and_stderr_of_a_known_law(estimate):
    assert estimate.count == N and int(estimate.num_nonfinite) == 0
    # a 3σ check fails with probability 0.27% per entry for a fresh seed
    assert np.all(np.abs(estimate.mean - M) < 3 * estimate.stderr)
    # the sample sd has relative sd ≈ 1/√(2N) = 0.5%: 5% is ten of those
    assert np.allclose(estimate.stderr, S / math.sqrt(N), rtol=0.05)


def test_same_keys_same_bits_and_chunking_only_reorders(estimate):
    keys = jax.random.split(jax.random.key(0), N)  # what (key, N) means
    again = monte_carlo(gaussian, keys)
    assert np.array_equal(again.mean, estimate.mean)
    assert np.array_equal(again.stderr, estimate.stderr)
    # 3000 does not divide N: the remainder chunk is exercised too
    chunked = monte_carlo(gaussian, keys, batch_size=3000)
    assert np.allclose(chunked.mean, estimate.mean, rtol=1e-14, atol=0)
    assert np.allclose(chunked.stderr, estimate.stderr, rtol=1e-14, atol=0)
    raw = monte_carlo(gaussian, jax.random.key_data(keys))  # uint32 (N, 2) keys
    assert np.array_equal(raw.mean, estimate.mean)


def test_compiles_once_for_new_keys():
    traces = []

    def sample(key):
        traces.append(None)
        return {"x": jax.random.uniform(key), "y": jnp.ones(2)}

    first = monte_carlo(sample, (jax.random.key(1), 100), batch_size=30)
    count = len(traces)
    second = monte_carlo(sample, (jax.random.key(2), 100), batch_size=30)
    assert len(traces) == count
    assert float(first.mean["x"]) != float(second.mean["x"])
    assert np.array_equal(second.mean["y"], jnp.ones(2))
    assert np.array_equal(second.stderr["y"], jnp.zeros(2))


def test_nonfinite_draws_are_counted_and_propagate():
    keys = jax.random.split(jax.random.key(3), 1000)
    result = monte_carlo(lambda k: jnp.log(jax.random.normal(k)), keys)
    negative = int(jnp.sum(jax.vmap(jax.random.normal)(keys) < 0))
    assert 0 < int(result.num_nonfinite) == negative
    assert np.isnan(result.mean) and np.isnan(result.stderr)
    assert f"num_nonfinite={negative}" in repr(result)


def test_repr_is_short(estimate):
    scalar = MonteCarloEstimate(mean=jnp.asarray(0.12345678), stderr=0.0012, count=10)
    assert repr(scalar) == "MonteCarloEstimate(mean=0.123457 ± 0.0012, count=10)"
    assert repr(estimate) == f"MonteCarloEstimate(mean=f64[3], count={N})"


def test_sample_covariance_and_its_standard_error():
    a = jnp.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [-0.5, 0.3, 1.5]])
    sigma = a @ a.T
    x = jax.random.normal(jax.random.key(4), (N, 3)) @ a.T
    cov, stderr = sample_covariance(x)
    assert np.allclose(cov, np.cov(np.asarray(x), rowvar=False), rtol=1e-12)
    # Isserlis: Var((x−μ)(y−μ)) = σx²σy² + σxy². The estimated sd of a product
    # has relative sd ≤ √((κ−1)/4N) ≈ 1.3% (product kurtosis κ ≤ 15): 5% is ~4 sd.
    var = jnp.outer(jnp.diag(sigma), jnp.diag(sigma)) + sigma**2
    assert np.allclose(stderr, jnp.sqrt(var / N), rtol=0.05)
    assert np.all(np.abs(cov - sigma) < 3 * stderr)


LRS = np.array([0.4, 0.2, 0.1, 0.05, 0.025])


def _reference():
    return [1 + 0.3 * h + 0.05 * h**2 for h in LRS]


def test_exact_errors_give_exact_exponents():
    ref = _reference()
    vector = [np.array([r, 2.0]) for r in ref]
    table = weak_error_exponent(
        LRS,
        ref,
        {
            "order 1": [r - 0.7 * h for r, h in zip(ref, LRS)],
            "order 2": [r + 2.0 * h**2 for r, h in zip(ref, LRS)],
        },
    )
    assert table.fits["order 1"]["slope"] == pytest.approx(1, abs=1e-6)
    assert table.fits["order 2"]["slope"] == pytest.approx(2, abs=1e-6)
    assert np.allclose(table.errors["order 1"], 0.7 * LRS, rtol=1e-12)
    assert np.all(table.stderrs["order 2"] == 0) and table.fits["order 2"]["note"] == ""
    as_array = weak_error_exponent(LRS, np.array(ref), {"a": np.array(ref) + LRS})
    assert np.allclose(as_array.errors["a"], LRS, rtol=1e-12)
    # a vector φ: e = ‖d‖ with d = η²·(3, 4), so e = 5η²
    pair = weak_error_exponent(
        LRS,
        vector,
        {"v": [v + h**2 * np.array([3.0, 4.0]) for v, h in zip(vector, LRS)]},
    )
    assert np.allclose(pair.errors["v"], 5 * LRS**2, rtol=1e-12)
    assert pair.fits["v"]["slope"] == pytest.approx(2, abs=1e-6)
    assert "order 2" in repr(table) and "95% CI" in table.summary()


def test_vector_stderr_is_first_order_propagation():
    ref = [MonteCarloEstimate(mean=np.zeros(2), stderr=np.array([0.3, 0.0]), count=9)]
    approx = [
        MonteCarloEstimate(
            mean=np.array([3.0, 4.0]), stderr=np.array([0.4, 1.0]), count=9
        )
    ]
    table = weak_error_exponent([0.1, 0.2, 0.3], ref * 3, {"a": approx * 3})
    # σ = (0.5, 1.0) in quadrature; |d ⊙ σ|/|d| = |(1.5, 4)|/5
    assert np.allclose(table.stderrs["a"], math.hypot(1.5, 4.0) / 5, rtol=1e-14)


def _fit(sigma: float, seed: int | None = None) -> dict:
    """Errors 0.5·η (p = 1) with standard error `sigma`, observed through
    Monte Carlo noise of that sd (drawn from `seed`), or exactly (no seed)."""
    rng = np.random.default_rng(seed)
    noise = np.zeros(LRS.size) if seed is None else rng.standard_normal(LRS.size)
    approx = [
        MonteCarloEstimate(mean=r - 0.5 * h + sigma * z, stderr=sigma, count=100)
        for r, h, z in zip(_reference(), LRS, noise)
    ]
    return weak_error_exponent(LRS, _reference(), {"a": approx}).fits["a"]


def test_intervals_cover_the_true_slope_under_noise():
    # relative noise 0.4% (η = 0.025) to 0.05%; a 95% interval misses with
    # probability ≈ 5% per seed: 20 seeds with ≤ 4 misses fails with p < 2%.
    fits = [_fit(5e-5, seed) for seed in range(20)]
    assert all(f["points"] == LRS.size for f in fits)
    misses = sum(not f["ci"][0] < 1 < f["ci"][1] for f in fits)
    assert misses <= 4
    assert all(abs(f["slope"] - 1) < 0.02 for f in fits)


def test_unresolved_points_are_left_out_and_counted():
    # errors 0.5η = 0.0125, 0.025, …: with σ = 6e-3 only η = 0.025 is below 3σ
    fit = _fit(6e-3)
    assert fit["points"] == 4 and fit["slope"] == pytest.approx(1, abs=1e-12)
    assert "1 of 5 errors unresolved" in fit["note"]
    few = _fit(0.04)  # 3σ = 0.12: resolved only at η = 0.4
    assert few["points"] == 1 and math.isnan(few["slope"])
    assert all(math.isnan(c) for c in few["ci"])
    assert "fewer than 3 resolved points" in few["note"]


def test_sgd_on_a_quadratic_against_its_sde():
    """θ ← θ − η(θ + ξ), ξ ~ N(0, 1), against dX = −X dt + √η dW at T = 1,
    from θ₀ = X₀ = 2.
    E θ_K² follows a recursion and E X_T² is in closed form, so the Monte Carlo
    estimates are checked against both, and the weak error in φ = θ² is of order
    1 (the drift's Euler error; the noise terms agree to O(η²))."""
    lrs = np.array([0.2, 0.1, 0.05, 0.025])

    def sgd_second_moment(lr, key):
        def step(k, theta):
            return theta - lr * (theta + jax.random.normal(jax.random.fold_in(key, k)))

        return jax.lax.fori_loop(0, round(1 / lr), step, 2.0) ** 2

    estimates, exact_sgd = [], []
    for i, lr in enumerate(lrs):
        estimates.append(
            monte_carlo(
                lambda k, lr=lr: sgd_second_moment(lr, k), (jax.random.key(i), N)
            )
        )
        k, q = round(1 / lr), (1 - lr) ** 2
        exact_sgd.append(4 * q**k + lr**2 * (1 - q**k) / (1 - q))
    sde = [4 * math.exp(-2) + lr / 2 * (1 - math.exp(-2)) for lr in lrs]
    for est, value in zip(estimates, exact_sgd):
        assert abs(float(est.mean) - value) < 3 * float(est.stderr)
    noisy = weak_error_exponent(lrs, estimates, {"SDE": sde})
    exact = weak_error_exponent(lrs, exact_sgd, {"SDE": sde})
    assert noisy.fits["SDE"]["points"] == lrs.size
    low, high = noisy.fits["SDE"]["ci"]
    assert low < exact.fits["SDE"]["slope"] < high
    assert exact.fits["SDE"]["slope"] == pytest.approx(1, abs=0.1)


@pytest.mark.parametrize(
    "lrs, message",
    [([0.1, 0.2], "`lrs`"), ([0.1, 0.0, 0.2], "`lrs`"), ([0.1, 0.1, 0.2], "`lrs`")],
)
def test_bad_ladders(lrs, message):
    with pytest.raises(ValueError, match=message):
        weak_error_exponent(lrs, [1.0] * len(lrs), {"a": [1.0] * len(lrs)})


def test_bad_values():
    lrs = [0.1, 0.2, 0.3]
    with pytest.raises(ValueError, match="`reference`"):
        weak_error_exponent(lrs, [1.0, 1.0], {"a": [1.0] * 3})
    with pytest.raises(ValueError, match=r"`approximations\['a'\]`"):
        weak_error_exponent(lrs, [1.0] * 3, {"a": [1.0] * 4})
    with pytest.raises(ValueError, match=r"`approximations\['a'\]`\[0\]"):
        weak_error_exponent(lrs, [1.0] * 3, {"a": [np.ones(2)] * 3})
    with pytest.raises(ValueError, match="`confidence`"):
        weak_error_exponent(lrs, [1.0] * 3, {"a": [1.0] * 3}, confidence=1.0)


def test_bad_keys():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="`keys`"):
        monte_carlo(jax.random.normal, jax.random.split(key, 1))
    with pytest.raises(ValueError, match="`keys`"):
        monte_carlo(jax.random.normal, (key, 1))
    with pytest.raises(TypeError, match="`keys`"):
        monte_carlo(jax.random.normal, key)
    with pytest.raises(ValueError, match="`x`"):
        sample_covariance(jnp.ones(5))
