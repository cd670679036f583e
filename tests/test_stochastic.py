"""SGD and its SDE against exact answers. On linear regression the first two
moments of SGD (a recursion) and of its stochastic modified equation (a linear
ODE) are known exactly, so a Monte Carlo over 10⁴ keys must match them to within
its standard error; then reproducibility from the key, derivatives in η, errors,
tracing, counters, and any Equinox model.

Every Monte Carlo comparison is a z-test, entry by entry (the two means and the
three distinct covariance entries): |estimate − exact| < 3 standard errors. The
estimates are averages of 10⁴ i.i.d. terms, Gaussian to good accuracy, so a
fresh seed would fail one comparison with probability 0.27%, about 1.3% for the
five of a test; the keys are fixed, so the tests are deterministic. Each test
also asserts that what it matches is many standard errors from the nearest wrong
answer (zero, the other sampling law), so it can fail. The heavier cases (the
SDE without replacement, with label noise alone, at order 2) are in
test_stochastic_slow.py.
"""

import itertools
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowgap.dynamics import stochastic_descent, stochastic_flow

from .helpers import Linear
from .sgd_reference import (
    sde_moments_reference,
    sgd_epoch_moments_reference,
    sgd_moments_reference,
)

N, D = 6, 2  # examples, parameters
KEYS = 10_000
# SGD: 18 steps of b = 2 are six epochs of three batches without replacement.
SGD = dict(lr=0.1, steps=18, batch_size=2)
# SDE: 32 Euler–Maruyama steps on [0, 1/8]. Its relative bias on the moments is
# ≈ λ_max(A)·dt0 = 1/512, below 0.2 SE of 10⁴ keys (each test computes it
# exactly and asserts < 0.3 SE). Dyadic times, so the grid k·dt0 and the noise
# windows ⌊t/η⌋ are exact in floating point.
LR, T1, DT0 = 0.125, 0.125, 2.0**-8
STEPS = round(T1 / DT0)
DELTA = 0.5  # label noise


def _problem():
    """x (n, d), y (n,), θ₀ for least squares ½·mean((⟨θ, xᵢ⟩ − yᵢ)²), scaled so
    that λ_max(A) = 1/2 (A = XᵀX/n), with θ₀ at distance ~1 from the
    minimiser."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(N, D)), rng.normal(size=N)
    x = x * np.sqrt(0.5 / np.linalg.eigvalsh(x.T @ x / N)[-1])
    minimiser = np.linalg.lstsq(x, y, rcond=None)[0]
    return x, y, minimiser + rng.normal(size=D)


X, Y, THETA0 = _problem()
DATA = (jnp.asarray(X), jnp.asarray(Y))
MODEL = Linear(jnp.asarray(THETA0))


# one entry per trace (or eager call) of the loss: a retrace shows here
TRACES = []


def _loss(model, batch):
    TRACES.append(None)
    inputs, targets = batch
    return 0.5 * jnp.mean((jax.vmap(model)(inputs) - targets) ** 2)


# --- Monte Carlo ---------------------------------------------------------------


def _keys(seed, count=KEYS):
    return jax.random.split(jax.random.key(seed), count)


def _descent_finals(seed, **options):
    """θ_K of `stochastic_descent` for `KEYS` keys, shape (KEYS, d)."""

    def run(key):
        return stochastic_descent(_loss, MODEL, DATA, key=key, **options).final.w

    return np.asarray(jax.jit(jax.vmap(run))(_keys(seed)))


def _flow_finals(seed, **options):
    """θ(t1) of `stochastic_flow` for `KEYS` keys, shape (KEYS, d), and the
    runs' `stats`."""
    options = dict(dict(lr=LR, t1=T1, dt0=DT0), **options)

    def run(key):
        traj = stochastic_flow(_loss, MODEL, DATA, key=key, **options)
        return traj.final.w, traj.stats

    finals, stats = jax.jit(jax.vmap(run))(_keys(seed))
    return np.asarray(finals), stats


def _estimates(samples):
    """(mean, its standard error, covariance, its standard error): the standard
    error of a covariance entry is the sample std of the centred products over
    √N."""
    count = samples.shape[0]
    mean = samples.mean(0)
    centred = samples - mean
    products = centred[:, :, None] * centred[:, None, :]
    root = np.sqrt(count)
    return (
        mean,
        samples.std(0, ddof=1) / root,
        products.sum(0) / (count - 1),
        products.std(0, ddof=1) / root,
    )


_UPPER = np.triu_indices(D)


def _z_scores(samples, mean, covariance):
    """|Monte Carlo − exact| in standard errors: (means (d,), distinct
    covariance entries (d(d+1)/2,))."""
    m, m_se, c, c_se = _estimates(samples)
    return np.abs(m - mean) / m_se, (np.abs(c - covariance) / c_se)[_UPPER]


def _in_errors(samples, value):
    """|value| in standard errors of the covariance estimate, per distinct entry."""
    return (np.abs(value) / _estimates(samples)[3])[_UPPER]


def _covariance(means, seconds):
    return seconds - np.einsum("...a,...b->...ab", means, means)


# --- exact moments of the Euler–Maruyama recursion --------------------------------


def _euler_maruyama_step(m, second, rows, *, lr, b, replace, delta, dt, order):
    """(E θ', E θ'θ'ᵀ) after one Euler–Maruyama step of size dt from moments
    (m, E θθᵀ), for the SDE's noise estimated on `rows` (all n, or a subset).

    θ' = θ − dt(Ãθ − c̃) + √(dt·η)·Σ_R(θ)^{½}ξ, ξ ~ N(0, I) independent of θ, with
    Σ_R(θ) = c_b·w·Σ_{i∈R}(gᵢ − ḡ_R)(gᵢ − ḡ_R)ᵀ + δ²/(b|R|)·Σ_{i∈R}xᵢxᵢᵀ,
    gᵢ = Aᵢθ − cᵢ, c_b = 1/b (with replacement) or (n − b)/((n − 1)b), and
    w = 1/n on all rows, (n − 1)/(n(|R| − 1)) on a subset. Σ_R is quadratic in
    θ, so E Σ_R(θ) is a function of (E θ, E θθᵀ) alone and the recursion is
    exact."""
    a_i = np.einsum("ia,ib->iab", X, X)
    c_i = X * Y[:, None]
    a, c = a_i.mean(0), c_i.mean(0)
    if order == 2:
        a, c = a + lr / 2 * a @ a, c + lr / 2 * a @ c
    count = len(rows)
    scale = 1 / b if replace else (N - b) / ((N - 1) * b)
    weight = 1 / N if count == N else (N - 1) / (N * (count - 1))
    da = a_i[rows] - a_i[rows].mean(0)
    dc = c_i[rows] - c_i[rows].mean(0)
    dm = da @ m
    spread = (
        np.einsum("iab,bc,idc->ad", da, second, da)
        - np.einsum("ia,ib->ab", dm, dc)
        - np.einsum("ia,ib->ab", dc, dm)
        + dc.T @ dc
    )
    sigma = scale * weight * spread + delta**2 * a_i[rows].sum(0) / (b * count)
    step = np.eye(D) - dt * a
    sm = step @ m
    second = (
        step @ second @ step.T
        + dt * (np.outer(sm, c) + np.outer(c, sm))
        + dt**2 * np.outer(c, c)
        + dt * lr * sigma
    )
    return sm + dt * c, second


def _euler_maruyama_moments(
    *, lr, b, replace, delta=0.0, dt=DT0, steps=STEPS, order=1, subset=None
):
    """(E θ_K, Cov θ_K) of Euler–Maruyama, exactly. With `subset`, the rows are a
    uniform m-subset redrawn every window of length η and shared by the window's
    steps, so the window's map on the moments is averaged over all m-subsets."""
    options = dict(lr=lr, b=b, replace=replace, delta=delta, dt=dt, order=order)
    m, second = THETA0.copy(), np.outer(THETA0, THETA0)
    if subset is None:
        for _ in range(steps):
            m, second = _euler_maruyama_step(m, second, np.arange(N), **options)
        return m, _covariance(m, second)
    per_window = round(lr / dt)
    assert per_window * dt == lr and steps % per_window == 0
    subsets = [np.array(s) for s in itertools.combinations(range(N), subset)]
    for _ in range(steps // per_window):
        ends = []
        for rows in subsets:
            end = (m, second)
            for _ in range(per_window):
                end = _euler_maruyama_step(*end, rows, **options)
            ends.append(end)
        m = np.mean([e[0] for e in ends], axis=0)
        second = np.mean([e[1] for e in ends], axis=0)
    return m, _covariance(m, second)


def _sde_moments(*, lr, b, replace, delta=0.0, order=1):
    """(E θ(t1), Cov θ(t1)) of the SDE, from the moment ODE (scipy, 1e-12)."""
    means, seconds = sde_moments_reference(
        X, Y, THETA0, lr, b, [0.0, T1], order, replace, delta
    )
    return means[-1], _covariance(means[-1], seconds[-1])


def _check_sde(samples, exact, euler):
    """The Monte Carlo matches the SDE's exact moments within 3 SE, and the
    Euler–Maruyama bias (its exact moments against the SDE's) is below 0.3 SE,
    so the test checks the noise, not the solver. Returns both, in SE."""
    _, mean_se, _, cov_se = _estimates(samples)
    bias = np.concatenate(
        [
            np.abs(euler[0] - exact[0]) / mean_se,
            (np.abs(euler[1] - exact[1]) / cov_se)[_UPPER],
        ]
    )
    assert np.max(bias) < 0.3, bias
    z = np.concatenate(_z_scores(samples, *exact))
    assert np.max(z) < 3, z
    return z, bias


def _diagonal(entries):
    """The diagonal among the distinct covariance entries (row-major upper
    triangle)."""
    return entries[[0, 2]]


# --- SGD: exact moments ------------------------------------------------------------


def test_sgd_with_replacement_matches_the_exact_recursion():
    samples = _descent_finals(11, **SGD)
    lr, steps, b = SGD["lr"], SGD["steps"], SGD["batch_size"]
    means, seconds = sgd_moments_reference(X, Y, THETA0, lr, b, steps, True)
    covariance = _covariance(means[-1], seconds[-1])
    mean_z, cov_z = _z_scores(samples, means[-1], covariance)
    assert np.max(mean_z) < 3 and np.max(cov_z) < 3, (mean_z, cov_z)
    # it can fail: the variances are ~70 SE from zero, and the law of an
    # independent b-subset per step (c_b smaller by (n − b)/(n − 1) = 4/5) is
    # ~15 SE away
    assert np.min(_diagonal(_in_errors(samples, covariance))) > 30
    means, seconds = sgd_moments_reference(X, Y, THETA0, lr, b, steps, False)
    subsets = _covariance(means[-1], seconds[-1])
    assert np.min(_diagonal(_in_errors(samples, subsets - covariance))) > 10


def test_sgd_without_replacement_matches_epoch_enumeration():
    # 18 steps of b = 2 on n = 6: six epochs, compared at the last boundary with
    # the average over all 6! orders of an epoch
    samples = _descent_finals(12, replace=False, **SGD)
    lr, b = SGD["lr"], SGD["batch_size"]
    epochs = SGD["steps"] // (N // b)
    means, seconds = sgd_epoch_moments_reference(X, Y, THETA0, lr, b, epochs)
    covariance = _covariance(means[-1], seconds[-1])
    mean_z, cov_z = _z_scores(samples, means[-1], covariance)
    assert np.max(mean_z) < 3 and np.max(cov_z) < 3, (mean_z, cov_z)
    assert np.min(_diagonal(_in_errors(samples, covariance))) > 30
    # reshuffling is a different law: at an epoch's end every example has been
    # used once, so the covariance is far smaller than that of draws with
    # replacement or of independent b-subsets per step (> 10⁴ SE away)
    for replace in (True, False):
        steps = SGD["steps"]
        means, seconds = sgd_moments_reference(X, Y, THETA0, lr, b, steps, replace)
        other = _covariance(means[-1], seconds[-1])
        assert np.min(_diagonal(_in_errors(samples, other - covariance))) > 1000


def test_sgd_with_independent_subsets_matches_the_exact_recursion():
    # replace=False, epochs=False: a fresh uniform b-subset every step, the law
    # whose one-step noise the SDE's factor (n − b)/(n − 1) describes
    samples = _descent_finals(14, replace=False, epochs=False, **SGD)
    lr, steps, b = SGD["lr"], SGD["steps"], SGD["batch_size"]
    means, seconds = sgd_moments_reference(X, Y, THETA0, lr, b, steps, False)
    covariance = _covariance(means[-1], seconds[-1])
    mean_z, cov_z = _z_scores(samples, means[-1], covariance)
    assert np.max(mean_z) < 3 and np.max(cov_z) < 3, (mean_z, cov_z)
    assert np.min(_diagonal(_in_errors(samples, covariance))) > 30
    # with replacement: larger by (n − 1)/(n − b) = 5/4, ~15 SE away
    means, seconds = sgd_moments_reference(X, Y, THETA0, lr, b, steps, True)
    other = _covariance(means[-1], seconds[-1])
    assert np.min(_diagonal(_in_errors(samples, other - covariance))) > 10


def test_label_noise_gd_matches_the_exact_recursion():
    # θ_{k+1} = (I − ηA)θ_k + ηc − (η/n)Σᵢεᵢxᵢ, εᵢ ~ N(0, δ²): the mean is GD's
    # and Cov_{k+1} = (I − ηA)Cov_k(I − ηA)ᵀ + η²δ²A/n
    lr, steps = SGD["lr"], SGD["steps"]
    samples = _descent_finals(
        13, lr=lr, steps=steps, batch_size=N, replace=False, label_noise=DELTA
    )
    a, c = X.T @ X / N, X.T @ Y / N
    mean, covariance = THETA0.copy(), np.zeros((D, D))
    step = np.eye(D) - lr * a
    for _ in range(steps):
        mean = step @ mean + lr * c
        covariance = step @ covariance @ step.T + lr**2 * DELTA**2 * a / N
    means, seconds = sgd_moments_reference(
        X, Y, THETA0, lr, N, steps, False, label_noise=DELTA
    )
    assert np.allclose(_covariance(means[-1], seconds[-1]), covariance, atol=1e-15)
    mean_z, cov_z = _z_scores(samples, mean, covariance)
    assert np.max(mean_z) < 3 and np.max(cov_z) < 3, (mean_z, cov_z)
    assert np.min(_diagonal(_in_errors(samples, covariance))) > 30


# --- the SDE: exact moments -----------------------------------------------------------


def test_euler_maruyama_reference_converges_to_the_moment_ode():
    """The exact Euler–Maruyama moments (this file's reference for the solver's
    bias) converge to the moment ODE at order 1 in dt: halving dt halves the
    error, to within 1% (measured 2.001 to 2.002, the O(dt²) remainder; a
    wrong noise scale would leave an O(1) error, a ratio near 1)."""
    exact = _sde_moments(lr=LR, b=2, replace=True)
    errors = []
    for dt in (2.0**-8, 2.0**-9):
        m, c = _euler_maruyama_moments(
            lr=LR, b=2, replace=True, dt=dt, steps=round(T1 / dt)
        )
        errors.append(np.concatenate([m - exact[0], (c - exact[1])[_UPPER]]))
    assert np.allclose(errors[0] / errors[1], 2.0, rtol=0.01)


def test_sde_moments_match_the_moment_ode():
    samples, stats = _flow_finals(21, batch_size=2)
    # Euler–Maruyama: one drift and one diffusion per step, the diffusion a
    # per-example gradient of every row
    assert np.all(stats["num_steps"] == STEPS)
    assert np.all(stats["num_grad_evals"] == STEPS)
    assert np.all(stats["num_example_grads"] == N * STEPS)
    exact = _sde_moments(lr=LR, b=2, replace=True)
    _check_sde(samples, exact, _euler_maruyama_moments(lr=LR, b=2, replace=True))
    assert np.min(_diagonal(_in_errors(samples, exact[1]))) > 30
    # sampling without replacement multiplies Σ by (n − b)/(n − 1) = 4/5: > 10 SE
    other = _sde_moments(lr=LR, b=2, replace=False)
    assert np.min(_diagonal(_in_errors(samples, other[1] - exact[1]))) > 10


# η = 1/32 for the subset test: four noise windows of eight steps on [0, 1/8]
SUBSET_LR = 2.0**-5


def test_subset_noise_is_unbiased():
    """With Σ estimated from 3 of the 6 rows (sampling and label noise), redrawn
    every window of length η, the moments are still the SDE's: the Euler–Maruyama
    moments, averaged over the subsets of each window exactly, differ from the
    moment ODE by < 0.3 SE (the O(dt) bias and the correlation of a window's
    steps through its shared subset together), and the Monte Carlo matches the
    ODE within 3 SE. (Over 3·10⁵ keys every entry was within 2.0 SE of the
    exact Euler–Maruyama moments.)"""
    samples, stats = _flow_finals(
        200, lr=SUBSET_LR, batch_size=2, label_noise=DELTA, subset=3
    )
    assert np.all(stats["num_example_grads"] == 3 * STEPS)  # rows of the subset
    options = dict(lr=SUBSET_LR, b=2, replace=True, delta=DELTA)
    exact = _sde_moments(**options)
    _check_sde(samples, exact, _euler_maruyama_moments(subset=3, **options))
    assert np.min(_diagonal(_in_errors(samples, exact[1]))) > 30


# --- reproducibility ---------------------------------------------------------------
# The tests below share a few programs (a solo run and a 64-run sweep per
# trainer), so each compiles once for the module.

SAVES = jnp.linspace(0.0, T1, 5)


def _descent(key, data=DATA, **options):
    """SGD with label noise on minibatches of 2."""
    options = dict(dict(SGD, label_noise=DELTA), **options)
    return stochastic_descent(_loss, MODEL, data, key=key, **options)


def _flow(key, data=DATA, **options):
    """The SDE of SGD with b = 2, saved at five times."""
    options = dict(dict(lr=LR, t1=T1, dt0=DT0, batch_size=2, ts=SAVES), **options)
    return stochastic_flow(_loss, MODEL, data, key=key, **options)


SWEEP = 64
SWEEP_KEYS = _keys(9, SWEEP)


def _copies(shift=0.0):
    """A data set per run of the sweep: the data, rescaled by 1 + shift + i/640."""
    scales = 1.0 + shift + jnp.arange(SWEEP) / 640
    return DATA[0][None] * scales[:, None, None], DATA[1][None] * scales[:, None]


def _sweep(run, lrs, data, **options):
    """`run` vmapped over keys, η and data together (η as a strongly typed
    float64 array, so every sweep shares one compiled program per trainer)."""
    lrs = jnp.asarray(lrs, dtype=jnp.float64)
    return jax.vmap(lambda k, lr, d: run(k, d, lr=lr, **options))(SWEEP_KEYS, lrs, data)


def _bits(traj):
    return np.asarray(traj.models.w).tobytes() + np.asarray(traj.loss).tobytes()


def _run(batch, i):
    return jax.tree.map(lambda x: x[i], batch)


@pytest.mark.parametrize("run", [_descent, _flow])
def test_same_key_same_bits(run):
    key = jax.random.key(7)
    first = run(key)
    assert _bits(run(key)) == _bits(first)
    assert not np.allclose(run(jax.random.key(8)).models.w[-1], first.models.w[-1])


def test_vmap_over_keys_equals_solo_runs():
    """SGD gathers each key's minibatch (b < n), so a batch of keys on shared data
    runs the solo program's arithmetic: bit for bit. (The SDE's drift is a
    full-data product, which XLA sums in another order when the data are shared
    by the batch: see test_stochastic_slow.py. With a copy of the data per run,
    test_vmap_over_key_lr_and_data_compiles_once, it is bit for bit too.)"""
    keys = SWEEP_KEYS[:8]
    batched = jax.vmap(_descent)(keys)
    for i, key in enumerate(keys):
        assert _bits(_run(batched, i)) == _bits(_descent(key))


def test_refined_step_follows_the_same_brownian_path():
    """The Brownian motion is a virtual tree of the key, resolved to
    `brownian_tol`: with one tolerance, halving dt0 on the same key samples the
    same path, and moves θ(t1) by Euler–Maruyama's strong error, O(√dt0), far
    less than the spread between independent keys (measured: 0.6% of it at
    most)."""
    lrs, data, tol = jnp.full(SWEEP, LR), _copies(), DT0 / 32
    coarse = _sweep(_flow, lrs, data, brownian_tol=tol).final.w
    fine = _sweep(_flow, lrs, data, dt0=DT0 / 2, brownian_tol=tol).final.w
    refinement = jnp.linalg.norm(fine - coarse, axis=1)
    spread = jnp.linalg.norm(coarse - jnp.roll(coarse, 1, axis=0), axis=1)
    assert float(jnp.max(refinement)) < 0.1 * float(jnp.mean(spread))


# --- traced sweeps -------------------------------------------------------------------


def test_vmap_over_key_lr_and_data_compiles_once():
    """Keys, η and the data are traced: a second sweep with new values traces
    the loss no more, and each run of a sweep is its solo run, bit for bit (every
    run has its own data, so the batched arithmetic is the solo run's)."""
    for run, lr in ((_descent, SGD["lr"]), (_flow, LR)):
        lrs = lr * (1 + jnp.arange(SWEEP) / SWEEP)
        batched = _sweep(run, lrs, _copies())
        traced = len(TRACES)
        assert traced > 0  # the counter counts
        _sweep(run, 2 * lrs, _copies(0.5))
        assert len(TRACES) == traced
        for i in range(0, SWEEP, 21):
            solo = run(SWEEP_KEYS[i], _run(_copies(), i), lr=lrs[i])
            assert np.array_equal(batched.models.w[i], solo.models.w)
            # SGD's saved losses, L on the run's data at the saves, to an ulp
            assert np.allclose(batched.loss[i], solo.loss, rtol=1e-14, atol=0)


# --- derivatives in η -------------------------------------------------------------


def _mean_final_loss(run):
    """η ↦ the mean of L(θ_T) over the sweep's 64 keys (and data sets)."""
    return lambda lr: jnp.mean(_sweep(run, jnp.full(SWEEP, lr), _copies()).final_loss)


def _flow_at(key, data, lr, dt0=None):
    return _flow(key, data, lr=lr, dt0=dt0)


def _central_difference(f, x, eps=1e-5):
    return float((f(x + eps) - f(x - eps)) / (2 * eps))


# d/dη of the mean over 64 fixed keys of L(θ_T) is the derivative of one smooth
# function of η (the batches, label noise and Brownian increments are functions
# of the keys alone). Reverse mode differentiates the discrete program exactly;
# the central difference at ε = 1e-5 is off by ε²f'''/6 (measured: 2.5e-9
# relative for SGD, 8e-10 for the SDE) and by round-off ≈ 1e-16/ε = 1e-11: a
# relative 1e-6 leaves room for both, and an error in the derivative of the
# noise's √η or of the minibatch steps would be O(1).


def test_descent_derivative_in_lr_matches_central_differences():
    f = _mean_final_loss(_descent)
    grad, fd = float(jax.grad(f)(0.1)), _central_difference(f, 0.1)
    assert abs(fd) > 1e-3  # η matters
    assert abs(grad - fd) < 1e-6 * abs(fd), (grad, fd)


def test_flow_derivative_in_lr_matches_central_differences():
    """With the default dt0 = η/10, d/dη is taken on that grid held fixed (the
    grid samples the SDE; it is not part of the model), so the central
    difference is taken at dt0 = 0.01, η/10 at η = 0.1. (With dt0 given: in
    test_stochastic_slow.py.)"""
    grad = float(jax.grad(_mean_final_loss(_flow_at))(0.1))
    fixed = _mean_final_loss(lambda k, d, lr: _flow_at(k, d, lr, dt0=0.01))
    fd = _central_difference(fixed, 0.1)
    assert abs(fd) > 1e-3
    assert abs(grad - fd) < 1e-6 * abs(fd), (grad, fd)


# --- bad input ---------------------------------------------------------------------


def _bad_runs(loss=_loss, data=DATA, key=jax.random.key(0), **options):
    """Both trainers on the same (bad) arguments."""
    flow = dict(lr=LR, t1=T1, dt0=DT0, batch_size=2)
    return (
        lambda: stochastic_descent(loss, MODEL, data, key=key, **dict(SGD, **options)),
        lambda: stochastic_flow(loss, MODEL, data, key=key, **dict(flow, **options)),
    )


@pytest.mark.parametrize(
    "options, name",
    [
        (dict(batch_size=N + 1), "`batch_size`"),
        (dict(batch_size=0), "`batch_size`"),
        (dict(batch_size=-2), "`batch_size`"),
        (dict(data=(DATA[0][:-1], DATA[1])), "`data`"),
        (dict(loss=lambda model: jnp.sum(model.w**2)), "`loss`"),
        (dict(key=0), "`key`"),
        (dict(key=jax.random.split(jax.random.key(0), 2)), "`key`"),
        (dict(label_noise=0.0), "`label_noise`"),
        (dict(label_noise=-0.5), "`label_noise`"),
        # annotated `bool`: under the test suite's runtime type checker the
        # message is the checker's, which names the parameter too
        (dict(replace="no"), "`replace`|'replace'"),
    ],
    ids=[
        "batch_size>n",
        "batch_size=0",
        "batch_size<0",
        "data_sizes",
        "loss_without_batch",
        "int_key",
        "batch_of_keys",
        "label_noise=0",
        "label_noise<0",
        "replace_not_bool",
    ],
)
def test_bad_input_names_the_argument(options, name):
    for run in _bad_runs(**options):
        with pytest.raises((ValueError, TypeError), match=name):
            run()


def test_bad_epochs():
    # (the runtime type checker's message, or the library's)
    with pytest.raises(TypeError, match="`epochs`|'epochs'"):
        _descent(jax.random.key(0), replace=False, epochs="no")


@pytest.mark.parametrize("subset", [N, N + 3, 1])
def test_bad_subset(subset):
    with pytest.raises(ValueError, match="`subset`"):
        _flow(jax.random.key(0), subset=subset)


def test_flow_without_noise_is_refused():
    # b = n without replacement and no label noise is full-batch GD: no SDE
    with pytest.raises(ValueError, match="`batch_size`.*`label_noise`"):
        _flow(jax.random.key(0), batch_size=N, replace=False)


# --- counters ------------------------------------------------------------------------


def test_counters():
    key = jax.random.key(0)
    assert int(_descent(key).stats["num_grad_evals"]) == SGD["steps"]
    # Euler–Maruyama: one drift and one diffusion per step, the diffusion a
    # per-example gradient of every row (of the subset's: see
    # test_subset_noise_is_unbiased)
    stats = _flow(key).stats
    assert int(stats["num_steps"]) == STEPS
    assert int(stats["num_grad_evals"]) == STEPS
    assert int(stats["num_example_grads"]) == N * STEPS


# --- any model ---------------------------------------------------------------------


class Gathered(eqx.Module):
    """f(x) = MLP(σ(x[index]))·scale^degree around an `eqx.nn.MLP`: an integer
    array field, a function field and a static int field, none of them
    trained."""

    mlp: eqx.nn.MLP
    index: jax.Array
    activation: Callable
    degree: int = eqx.field(static=True)
    scale: jax.Array

    def __call__(self, x):
        return self.mlp(self.activation(x[self.index])) * self.scale**self.degree


def _same_leaves(a, b):
    """Bit-identical pytrees: structure, static fields, functions and arrays."""
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        if eqx.is_array(x):
            assert x.dtype == y.dtype and np.array_equal(x, y)
        else:
            assert x is y or x == y


def test_any_model_trains_and_a_frozen_layer_stays_bit_identical():
    """A user module around a tiny tanh `eqx.nn.MLP` (default init), with an
    integer array, a function and a static int: both trainers run (with label
    noise: the SDE's ∂_y∇ℓ through the MLP) to finite losses, and a `trainable`
    filter freezing the MLP's middle layer keeps it, and every non-float leaf,
    bit for bit, while the other layers move."""
    mlp = eqx.nn.MLP(D, "scalar", 3, 2, activation=jnp.tanh, key=jax.random.key(5))
    model = Gathered(mlp, jnp.array([1, 0]), jnp.tanh, 2, jnp.array(1.1))
    trainable = eqx.tree_at(
        lambda m: (m.mlp.layers[1].weight, m.mlp.layers[1].bias),
        jax.tree.map(eqx.is_inexact_array, model),
        replace=(False, False),
    )
    key = jax.random.key(6)
    options = dict(batch_size=2, label_noise=DELTA, trainable=trainable)
    runs = (
        stochastic_descent(_loss, model, DATA, key=key, lr=0.1, steps=18, **options),
        stochastic_flow(_loss, model, DATA, key=key, lr=LR, t1=T1, dt0=DT0, **options),
    )
    initial = float(_loss(model, DATA))
    for traj in runs:
        assert np.all(np.isfinite(np.asarray(traj.loss)))
        assert np.isfinite(float(traj.final_loss))
        assert float(traj.final_loss) != initial
        _same_leaves(traj.final.mlp.layers[1], model.mlp.layers[1])
        _same_leaves(
            eqx.filter(traj.final, eqx.is_inexact_array, inverse=True),
            eqx.filter(model, eqx.is_inexact_array, inverse=True),
        )
        for i in (0, 2):
            layer, start = traj.final.mlp.layers[i], model.mlp.layers[i]
            assert not np.array_equal(layer.weight, start.weight)
        assert not np.array_equal(traj.final.scale, model.scale)
