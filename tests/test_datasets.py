"""`problems.digits`: the bundled UCI digits as a half-MSE regression."""

import socket

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits

from flowgap import problems


def test_digits_matches_the_bundled_file():
    raw = load_digits()
    problem = problems.digits(center=False)
    assert problem.inputs.shape == (1797, 64) and problem.targets.shape == (1797, 10)
    # exact: pixels are integers 0–16, so /16 is exact in binary floating point
    assert np.array_equal(problem.inputs, raw.data / 16.0)
    assert np.array_equal(np.argmax(problem.targets, axis=1), raw.target)
    assert np.array_equal(problem.targets.sum(axis=1), np.ones(1797))


def test_centred_digits_start_at_the_targets_variance():
    problem = problems.digits(200, classes=3)
    labels = np.asarray(problem.truth)
    assert set(labels.tolist()) <= {0, 1, 2} and problem.targets.shape == (200, 3)
    assert np.allclose(problem.inputs.mean(0), 0, atol=1e-15)
    # the zero predictor's loss is ½(1 − Σ p_c²), p_c the class frequencies
    p = np.bincount(labels, minlength=3) / 200
    zero = np.mean(np.sum(np.asarray(problem.targets) ** 2, axis=1)) / 2
    assert np.isclose(zero, 0.5 * (1 - np.sum(p**2)), rtol=1e-14)


def test_digits_draw_is_keyed():
    a = problems.digits(100, key=jax.random.key(3))
    b = problems.digits(100, key=jax.random.key(3))
    c = problems.digits(100, key=jax.random.key(4))
    assert np.array_equal(a.inputs, b.inputs)
    assert not np.array_equal(a.truth, c.truth)
    assert len(set(np.asarray(a.truth).tolist())) == 10


def test_digits_same_key_same_bits():
    """Determinism of every array, keyed and unkeyed (first n in file order)."""
    for key in (None, jax.random.key(7)):
        a, b = problems.digits(64, key=key), problems.digits(64, key=key)
        for x, y in ((a.inputs, b.inputs), (a.targets, b.targets), (a.truth, b.truth)):
            assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
    first = problems.digits(5, center=False)
    assert np.array_equal(first.truth, load_digits().target[:5])


def test_digits_dtype():
    default = problems.digits(30)
    assert default.inputs.dtype == jnp.result_type(float)  # float64 under x64
    assert default.targets.dtype == default.inputs.dtype
    single = problems.digits(30, dtype=jnp.float32)
    assert single.inputs.dtype == single.targets.dtype == jnp.float32
    assert jnp.issubdtype(single.truth.dtype, jnp.integer)
    # both are cast once from the same float64 values, so float32 = round(float64)
    for x32, x64 in (
        (single.inputs, default.inputs),
        (single.targets, default.targets),
    ):
        assert np.array_equal(np.asarray(x32), np.asarray(x64).astype(np.float32))


def test_digits_loads_without_network(monkeypatch):
    """scikit-learn ships the digits in the package: no socket is ever opened."""

    def refuse(*args, **kwargs):
        raise AssertionError("digits() tried to open a network connection")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    problem = problems.digits(100, key=jax.random.key(0))
    assert problem.inputs.shape == (100, 64) and problem.targets.shape == (100, 10)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(n=0), "`n`"),
        (dict(n=2000), "`n`"),
        (dict(classes=1), "`classes`"),
        (dict(classes=11), "`classes`"),
    ],
)
def test_digits_bad_input_is_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        problems.digits(**kwargs)


def test_random_labels_are_independent_gaussians():
    problem = problems.random_labels(jax.random.key(0), n=4000, d=3, out_dim=2)
    x, y = np.asarray(problem.inputs), np.asarray(problem.targets)
    assert x.shape == (4000, 3) and y.shape == (4000, 2) and problem.truth is None
    # moments of 4,000 N(0, 1) draws: standard errors 0.016 (mean) and 0.022
    # (variance), also 0.016 for a correlation; the bounds are five of each
    assert np.all(np.abs(x.mean(0)) < 0.08) and np.all(np.abs(y.var(0) - 1) < 0.11)
    assert np.abs(np.corrcoef(x[:, 0], y[:, 0])[0, 1]) < 0.08
