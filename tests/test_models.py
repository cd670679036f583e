import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowgap import models
from flowgap.models import (
    MLP,
    DeepLinear,
    DiagonalNet,
    PolarDiagonalNet,
    TwoLayer,
    WeightNorm,
)


@pytest.mark.parametrize("depth", [2, 3])
def test_diagonal_net(depth):
    net = DiagonalNet(7, depth=depth, scale=0.3)
    assert np.array_equal(net.u, np.full(7, 0.3)) and np.array_equal(net.v, net.u)
    assert np.array_equal(net.end_to_end(), np.zeros(7))
    net = eqx.tree_at(lambda m: m.u, net, jnp.arange(7.0))
    x = jnp.linspace(-1, 1, 7)
    beta = jnp.arange(7.0) ** depth - 0.3**depth
    assert np.allclose(net.end_to_end(), beta, rtol=1e-15)
    assert np.isclose(net(x), beta @ x, rtol=1e-14)


@pytest.mark.parametrize("depth", [2, 3])
@pytest.mark.parametrize("split", [False, True])
def test_polar_starts_where_plain_starts(depth, split):
    plain = DiagonalNet(5, depth=depth, scale=0.7)
    polar = PolarDiagonalNet(5, depth=depth, scale=0.7, split=split)
    u, v = polar.uv()
    assert np.allclose(u, plain.u, rtol=1e-15) and np.allclose(v, plain.v, rtol=1e-15)
    if not split:
        assert polar.radius.shape == () and polar.direction.shape == (10,)
        assert np.isclose(polar.radius, 0.7 * np.sqrt(10), rtol=1e-15)
    else:
        assert polar.radius.shape == (2,) and polar.direction.shape == (2, 5)
    assert np.allclose(jnp.linalg.norm(polar.direction, axis=-1), 1.0, rtol=1e-15)


def test_polar_uses_normalised_direction():
    polar = PolarDiagonalNet(4, scale=0.5)
    moved = eqx.tree_at(lambda m: m.direction, polar, 3.0 * polar.direction)
    assert np.allclose(moved.end_to_end(), polar.end_to_end(), rtol=1e-15)
    assert np.allclose(jnp.linalg.norm(moved.normalised().direction), 1.0)
    rates = polar.rates(4.0)
    assert float(rates.radius) == 1.0 and float(rates.direction) == 4.0


def test_weight_norm_same_function_at_init(key):
    lin = eqx.nn.Linear(3, 4, key=key)
    wn = WeightNorm(lin)
    x = jnp.array([0.3, -1.0, 2.0])
    assert np.allclose(wn(x), lin(x), rtol=1e-14)
    wn2 = eqx.tree_at(lambda m: m.layer.weight, wn, 5.0 * wn.v)
    assert np.allclose(wn2(x), lin(x), rtol=1e-14)


def test_two_layer_and_deep_linear(key):
    net = TwoLayer(3, 5, 2, activation="relu", scale=0.1, key=key)
    assert net.w1.shape == (5, 3) and net.w2.shape == (2, 5)
    x = jnp.array([1.0, -2.0, 0.5])
    assert np.allclose(net(x), net.w2 @ jax.nn.relu(net.w1 @ x))
    deep = DeepLinear((3, 4, 6, 2), scale=0.5, key=key)
    shapes = [w.shape for w in deep.weights]
    assert shapes == [(4, 3), (6, 4), (2, 6)]
    w1, w2, w3 = deep.weights
    assert np.allclose(deep.end_to_end(), w3 @ w2 @ w1)
    assert np.allclose(deep(x), w3 @ (w2 @ (w1 @ x)))


def test_init_scale_is_entry_std(key):
    net = TwoLayer(200, 300, 1, activation="linear", scale=0.01, key=key)
    assert abs(float(jnp.std(net.w1)) / 0.01 - 1) < 0.02  # 6e4 samples: ~0.3% s.e.


@pytest.mark.parametrize("weight_norm", [False, True])
def test_mlp(key, weight_norm):
    net = MLP(3, 8, 2, depth=2, weight_norm=weight_norm, key=key)
    ref = MLP(3, 8, 2, depth=2, key=key)
    x = jnp.array([0.1, 0.2, -0.3])
    assert net(x).shape == (2,)
    assert np.allclose(net(x), ref(x), rtol=1e-13)  # WN starts at the same function


def test_same_key_same_bits(key):
    a = TwoLayer(3, 4, 1, activation="tanh", scale=1.0, key=key)
    b = TwoLayer(3, 4, 1, activation="tanh", scale=1.0, key=key)
    assert np.array_equal(a.w1, b.w1) and np.array_equal(a.w2, b.w2)


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda k: DiagonalNet(0, scale=1.0), "dim"),
        (lambda k: DiagonalNet(3, depth=1, scale=1.0), "depth"),
        (lambda k: DiagonalNet(3, scale=-1.0), "scale"),
        (lambda k: DiagonalNet(3, scale=0.0), "scale"),
        (lambda k: PolarDiagonalNet(3, scale=float("nan")), "scale"),
        (
            lambda k: TwoLayer(3, 4, 1, activation="swish2", scale=1.0, key=k),
            "activation",
        ),
        (lambda k: MLP(3, 4, 1, activation="nope", key=k), "activation"),
        (lambda k: DeepLinear((3,), scale=1.0, key=k), "dims"),
        (lambda k: WeightNorm(eqx.nn.Linear(2, 2, key=k), gain=jnp.ones(3)), "gain"),
    ],
)
def test_bad_input(key, build, name):
    with pytest.raises((ValueError, TypeError), match=f"`{name}`"):
        build(key)


@pytest.mark.parametrize(
    "build, slope",
    [
        (lambda k: TwoLayer(3, 4, 2, activation="linear", scale=0.1, key=k), 1.0),
        (lambda k: TwoLayer(3, 4, 2, activation="tanh", scale=0.1, key=k), 1.0),
        (lambda k: DeepLinear((3, 5, 4, 2), scale=0.1, key=k), 1.0),
    ],
)
def test_add_unit_adds_a_rank_one_piece(key, build, slope):
    """From the origin, `add_unit(j, u, v, ε)` makes the linearisation at 0 (the
    Jacobian of x ↦ f(x) at x = 0) equal to ε·u vᵀ, through every layer."""
    net = build(key)
    units, sigma_slope, shape = net.saddle_units()
    assert sigma_slope == slope and shape == (2, 3)
    assert units == 4
    zero = jax.tree.map(jnp.zeros_like, net)
    left, right = jnp.array([0.6, 0.8]), jnp.array([1.0, 2.0, 2.0]) / 3.0
    on = zero.add_unit(1, left, right, 0.3)
    linearisation = jax.jacobian(on)(jnp.zeros(3))
    np.testing.assert_allclose(linearisation, 0.3 * jnp.outer(left, right), rtol=1e-14)
    assert all(not np.array_equal(a, 0) for a in jax.tree.leaves(on))
    # A second unit adds its own piece: units are independent paths.
    left2, right2 = jnp.array([0.8, -0.6]), jnp.array([2.0, -1.0, 2.0]) / 3.0
    both = on.add_unit(0, left2, right2, 0.2)
    expected = 0.3 * jnp.outer(left, right) + 0.2 * jnp.outer(left2, right2)
    # O(1) entries formed by a few products: round-off, so 1e-15 absolute.
    np.testing.assert_allclose(
        jax.jacobian(both)(jnp.zeros(3)), expected, rtol=1e-14, atol=1e-15
    )


def test_saddle_units_need_a_saddle(key):
    relu = TwoLayer(3, 4, 2, activation="relu", scale=0.1, key=key)
    with pytest.raises(ValueError, match="`model`"):
        relu.saddle_units()
    with pytest.raises(ValueError, match="`model`"):
        DeepLinear((3, 2), scale=0.1, key=key).saddle_units()


@pytest.mark.parametrize(
    "build, count",
    [
        (lambda k: DeepLinear((3, 5, 4, 2), scale=0.1, key=k), 3),
        (lambda k: TwoLayer(3, 4, 2, activation="tanh", scale=0.1, key=k), 2),
        (lambda k: MLP(3, 4, 2, depth=2, key=k), 3),
        (lambda k: MLP(3, 4, 2, depth=2, weight_norm=True, key=k), 3),
        (lambda k: eqx.nn.MLP(3, 2, 4, 2, key=k), 3),
    ],
)
def test_layer_blocks_partition_the_parameters(key, build, count):
    net = build(key)
    blocks = models.model_method(net, "layer_blocks")()
    assert len(blocks) == count
    params = jax.tree.leaves(eqx.filter(net, eqx.is_inexact_array))
    chosen = [id(a) for block in blocks for a in jax.tree.leaves(block(net))]
    assert sorted(chosen) == sorted(id(a) for a in params)


def test_protocol_is_documented():
    """Every protocol method is described in the one place that lists them, and
    each flowgap model defines only protocol methods it documents there."""
    doc = models._protocol.__doc__
    for name in models.PROTOCOL:
        assert f"`{name}(self" in doc, name
    assert models.model_method(DiagonalNet(3, scale=1.0), "layer_blocks") is None
    assert models.model_method(DiagonalNet(3, scale=1.0), "end_to_end") is not None
