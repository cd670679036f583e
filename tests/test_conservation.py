"""The conservation laws (docs: theory/invariants) hold along `gradient_flow` (float64,
tight tolerance). These pin the flow; the invariants library is a later issue."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import flowgap
from flowgap.models import (
    MLP,
    DeepLinear,
    DiagonalNet,
    PolarDiagonalNet,
    TwoLayer,
    WeightNorm,
)
from flowgap.problems import low_rank, sparse_recovery, teacher_student

TIGHT = dict(solver=diffrax.Dopri8(), rtol=1e-12, atol=1e-12)
# Drift of a smooth function of the state is bounded by the solver's local errors,
# ~1e-12 per unit time here; 1e-8 relative is the bound with a margin.
BOUND = 1e-8


def _relative_drift(values):
    values = jnp.asarray(values)
    scale = jnp.maximum(jnp.max(jnp.abs(values[0])), 1e-300)
    return float(jnp.max(jnp.abs(values - values[0])) / scale)


def _along_flow(problem, model, q, t1=5.0, **kw):
    traj = flowgap.gradient_flow(
        problem.loss, model, t1=t1, ts=jnp.linspace(0, t1, 21), **TIGHT, **kw
    )
    assert traj.successful
    assert float(traj.loss[-1]) < float(traj.loss[0])  # it did move
    return jax.vmap(q)(traj.models)


def _perturbed(model, key, size=0.3):
    """A generic starting point (u ≠ v) so the invariants are non-trivial."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    leaves = [
        x * (1 + size * jax.random.uniform(k, x.shape)) for x, k in zip(leaves, keys)
    ]
    return eqx.combine(jax.tree.unflatten(treedef, leaves), static)


def test_diagonal_depth2_u_times_v(key):
    problem = sparse_recovery(key, n=10, d=20, sparsity=2)
    net = _perturbed(DiagonalNet(20, scale=0.5), key)
    values = _along_flow(problem, net, lambda m: m.u * m.v)
    assert _relative_drift(values) < BOUND


def test_diagonal_depth3(key):
    problem = sparse_recovery(key, n=10, d=20, sparsity=2)
    net = _perturbed(DiagonalNet(20, depth=3, scale=0.7), key)
    values = _along_flow(problem, net, lambda m: m.u ** (-1) + m.v ** (-1))
    assert _relative_drift(values) < BOUND


def test_deep_linear_balancedness(key):
    problem = low_rank(key, d_in=4, d_out=3, rank=2)
    net = DeepLinear((4, 5, 6, 3), scale=0.5, key=key)

    def balance(m):
        w = m.weights
        return [w[j + 1].T @ w[j + 1] - w[j] @ w[j].T for j in range(len(w) - 1)]

    values = _along_flow(problem, net, balance)
    for v in values:
        assert _relative_drift(v) < BOUND


def test_weight_norm_direction_norms(key):
    k1, k2 = jax.random.split(key)
    problem = teacher_student(k1, n=20, d=3, teacher_width=2, out_dim=2)
    net = MLP(3, 6, 2, depth=1, weight_norm=True, key=k2)
    assert all(isinstance(layer, WeightNorm) for layer in net.layers)
    values = _along_flow(
        problem, net, lambda m: [jnp.sum(layer.v**2, axis=1) for layer in m.layers]
    )
    for v in values:
        assert _relative_drift(v) < BOUND


@pytest.mark.parametrize("activation", ["linear", "relu"])
def test_two_layer_unit_rescaling(key, activation):
    problem = teacher_student(key, n=20, d=3, teacher_width=2, activation=activation)
    net = TwoLayer(3, 5, 1, activation=activation, scale=0.7, key=key)
    values = _along_flow(
        problem,
        net,
        lambda m: jnp.sum(m.w1**2, axis=1) - jnp.sum(m.w2**2, axis=0),
    )
    assert _relative_drift(values) < BOUND


@pytest.mark.parametrize("split", [False, True])
def test_polar_flow_stays_on_the_sphere(key, split):
    problem = sparse_recovery(key, n=10, d=20, sparsity=2)
    polar = PolarDiagonalNet(20, scale=0.3, split=split)
    values = _along_flow(
        problem,
        polar,
        lambda m: jnp.linalg.norm(m.direction, axis=-1),
        t1=2.0,
        rates=polar.rates(2.0),
    )
    assert float(jnp.max(jnp.abs(values - 1))) < BOUND
