"""Any Equinox model trains and is analysed: function fields, static fields, integer
arrays and frozen layers survive trajectories, comparisons, the gap, curvature,
conservation checks and sensitivities (issue 12, item 3)."""

import dataclasses
import functools
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, Int

import flowgap
from flowgap import analysis, invariants
from flowgap.dynamics import compare

# One clock t = k·η on [0, T]. Every GD run takes K steps, saved every 40, so the
# ladder η = T/n (n a multiple of 40 dividing K) shares one compilation: the gap
# at T is save n/40.
T, K, EVERY = 1.0, 320, 40
LR = T / K
DIVISIONS = np.array([40, 80, 160, 320])  # η ≤ 0.025, as in test_gap.py
# GF reference at 1e-12: its error (~1e-11) is far below every gap measured.
FLOW = dict(rtol=1e-12, atol=1e-12)


class ConvNet(eqx.Module):
    """Conv2d 1 → 2 channels (3×3) on 6×6 images, a linear hidden layer, then a
    Linear readout of the 2·4·4 features."""

    conv: eqx.nn.Conv2d
    linear: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.conv = eqx.nn.Conv2d(1, 2, 3, key=k1)
        self.linear = eqx.nn.Linear(32, "scalar", key=k2)

    def __call__(self, x):
        return self.linear(jnp.ravel(self.conv(x)))


class Gathered(eqx.Module):
    """f(x) = Σⱼ vⱼ σ(wⱼ · x[index]) with σ homogeneous of degree `degree`: an
    integer array field, a function field and a static int field."""

    index: Int[Array, " k"]
    activation: Callable
    degree: int = eqx.field(static=True)
    w: Float[Array, "width k"]
    v: Float[Array, " width"]

    def __call__(self, x):
        return self.v @ self.activation(self.w @ x[self.index])


@dataclasses.dataclass(frozen=True)
class Case:
    loss: Callable
    model: eqx.Module
    law: Callable  # model -> array, exactly conserved by GF
    trainable: object = None


def _regression(model, x, y):
    return lambda m: 0.5 * jnp.mean((jax.vmap(m)(x) - y) ** 2)


def _subspace_inputs(key, n=12):
    """Inputs spanning a 2-D subspace of ℝ³: ∇_W₁L = Σ δᵢxᵢᵀ kills null(X), so
    W₁P (P the projector onto null(X)) is conserved, by GF and by GD alike."""
    k1, k2 = jax.random.split(key)
    x = jax.random.normal(k1, (n, 2)) @ jax.random.normal(k2, (2, 3))
    return x, jnp.sin(x[:, 0]) + 0.5 * x[:, 1]


def _mlp(key):
    x, y = _subspace_inputs(key)
    model = eqx.nn.MLP(3, "scalar", 4, 1, activation=jnp.tanh, key=key)
    projector = invariants.null_projector(x)
    return Case(
        _regression(model, x, y), model, lambda m: m.layers[0].weight @ projector
    )


def _conv(key):
    k1, k2, k3 = jax.random.split(key, 3)
    x = jax.random.normal(k1, (8, 1, 6, 6))
    y = jax.random.normal(k2, (8,))
    model = ConvNet(k3)

    def law(m):
        # linear hidden layer: channel c's kernel and bias scale by eᵃ, the
        # readout columns of its 16 features by e⁻ᵃ
        incoming = jnp.sum(m.conv.weight**2, axis=(1, 2, 3)) + m.conv.bias[:, 0, 0] ** 2
        outgoing = jnp.sum(m.linear.weight.reshape(2, 16) ** 2, axis=1)
        return incoming - outgoing

    return Case(_regression(model, x, y), model, law)


def _gathered(key):
    k1, k2, k3 = jax.random.split(key, 3)
    x = jax.random.normal(k1, (10, 4))
    y = jnp.cos(x[:, 0]) * x[:, 2]
    model = Gathered(
        index=jnp.array([0, 2]),
        activation=jnp.square,
        degree=2,
        w=0.7 * jax.random.normal(k2, (3, 2)),
        v=0.7 * jax.random.normal(k3, (3,)),
    )

    def law(m):
        # σ(eᵃz) = e^{ka}σ(z): unit j's (eᵃwⱼ, e^{−ka}vⱼ) leaves f unchanged, so
        # ‖wⱼ‖² − k vⱼ² is conserved
        return jnp.sum(m.w**2, axis=1) - m.degree * m.v**2

    return Case(_regression(model, x, y), model, law)


def _frozen(key):
    x, y = _subspace_inputs(key)
    model = eqx.nn.MLP(3, "scalar", 4, 2, activation=jnp.tanh, key=key)
    trainable = eqx.tree_at(
        lambda f: (f.layers[1].weight, f.layers[1].bias),
        jax.tree.map(lambda _: True, model),
        replace=(False, False),
    )
    return Case(
        _regression(model, x, y), model, lambda m: m.layers[1].weight, trainable
    )


CASES = {"mlp": _mlp, "conv": _conv, "gathered": _gathered, "frozen": _frozen}


@functools.cache
def _case(name):
    return CASES[name](jax.random.key(1234))


def _descent(name, lr):
    case = _case(name)
    return flowgap.gradient_descent(
        case.loss,
        case.model,
        lr=lr,
        steps=K,
        save_every=EVERY,
        trainable=case.trainable,
    )


@functools.cache
def _runs(name):
    """GD at η = T/K, and GF (dense) saved at the same times."""
    case = _case(name)
    gd = _descent(name, LR)
    gf = flowgap.gradient_flow(
        case.loss,
        case.model,
        t1=T,
        ts=gd.ts,
        dense=True,
        trainable=case.trainable,
        **FLOW,
    )
    return gd, gf


def _filter(case):
    return eqx.is_inexact_array if case.trainable is None else case.trainable


def _trainable_flat(case, model, spec=None):
    """(θ, rebuild) over the trainable arrays, for the dense reference Hessians."""
    params, static = eqx.partition(model, _filter(case) if spec is None else spec)
    params, extra = eqx.partition(params, eqx.is_inexact_array)  # not the function
    theta, unravel = ravel_pytree(params)
    return theta, lambda t: eqx.combine(unravel(t), static, extra)


def _same(a, b):
    """Bit-identical models: equal structure (functions, static fields) and equal
    array leaves."""
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        if eqx.is_array(x):
            assert x.dtype == y.dtype and np.array_equal(x, y)
        else:
            assert x is y or x == y


names = pytest.mark.parametrize("name", list(CASES))


@names
def test_index_and_at(name):
    case, (gd, gf) = _case(name), _runs(name)
    for traj in (gd, gf):
        for i in (0, 3, len(traj) - 1):
            manual = jax.tree.map(lambda x: x[i] if eqx.is_array(x) else x, traj.models)
            _same(traj[i], manual)
        _same(traj[0], case.model)
    _same(gd.at(gd.ts[3]), gd[3])
    # dense interpolation at a save reproduces it to the solver's interpolation
    # error, far below 1e-8 at rtol = 1e-12
    distance = analysis.parameter_distance(
        gf.at(gf.ts[3]), gf[3], trainable=case.trainable
    )
    assert distance < 1e-8
    with pytest.raises(ValueError, match="no save at t"):
        gd.at(0.5 * (gd.ts[1] + gd.ts[2]))  # GD has no state between steps
    # at a vector of times every array leaf gains that leading axis, and the
    # function and static fields are kept
    for traj in (gd, gf):
        several = traj.at(gd.ts[:3])
        assert jax.tree.structure(several) == jax.tree.structure(traj.models)
        shapes = [x.shape[0] for x in jax.tree.leaves(several) if eqx.is_array(x)]
        assert shapes == [3] * len(shapes)


@names
def test_frozen_and_integer_leaves_never_move(name):
    case, (gd, gf) = _case(name), _runs(name)
    _, fixed = eqx.partition(case.model, _filter(case))
    for traj in (gd, gf):
        _, held = eqx.partition(traj.models, _filter(case))
        assert jax.tree.structure(held) == jax.tree.structure(fixed)
        for x, y in zip(jax.tree.leaves(held), jax.tree.leaves(fixed)):
            if eqx.is_array(x):  # bit-identical at every save
                assert x.dtype == y.dtype
                assert np.array_equal(x, np.broadcast_to(y, (len(traj),) + y.shape))
            else:
                assert x is y


@names
def test_compare(name):
    case, (gd, gf) = _case(name), _runs(name)
    ts, values = compare(gd, gf, trainable=case.trainable)
    assert np.array_equal(ts, gd.ts)
    for i in range(len(gd)):
        expected = analysis.parameter_distance(gd[i], gf[i], trainable=case.trainable)
        # GF's saves are Diffrax's interpolant at ts, which `compare` evaluates
        # again: the same numbers up to round-off
        np.testing.assert_allclose(values[i], expected, rtol=1e-12, atol=1e-15)
    assert values[0] == 0.0 and values[-1] > 0.0


def test_different_parameters_are_named():
    mlp, conv = _runs("mlp")[0], _runs("conv")[0]
    with pytest.raises(ValueError, match="`a` and `b` have different parameters"):
        analysis.parameter_distance(mlp.final, conv.final)
    with pytest.raises(ValueError, match="`a` and `b` have different parameters"):
        compare(mlp, conv)


@names
def test_gap_is_first_order(name):
    case, (_, gf) = _case(name), _runs(name)
    lrs = T / DIVISIONS
    gaps = [
        analysis.parameter_distance(
            _descent(name, lr)[n // EVERY], gf.final, trainable=case.trainable
        )
        for lr, n in zip(lrs, DIVISIONS.tolist())
    ]
    fit = analysis.loglog_slope(lrs, gaps)
    # η ≤ 0.025 at T = 1: the O(η²) remainder moves the slope by a few percent,
    # within test_gap.py's band 0.9–1.1
    assert 0.9 <= fit["slope"] <= 1.1, fit


@pytest.mark.slow
def test_gap_exponent_with_a_frozen_layer():
    case = _case("frozen")
    table = analysis.gap_exponent(
        case.loss,
        case.model,
        lrs=T / DIVISIONS,
        t1=T,
        orders=(0,),
        trainable=case.trainable,
    )
    assert 0.9 <= table.fits[0]["slope"] <= 1.1, table.table()  # as above


@names
def test_track_sharpness_matches_dense_hessian(name):
    case, (gd, _) = _case(name), _runs(name)
    tracked = analysis.track_sharpness(case.loss, gd, trainable=case.trainable)
    saves = (0, len(gd) // 2, len(gd) - 1)
    _, rebuild = _trainable_flat(case, gd[0])
    thetas = jnp.stack([_trainable_flat(case, gd[i])[0] for i in saves])
    hessians = jax.jit(jax.vmap(jax.hessian(lambda t: case.loss(rebuild(t)))))(thetas)
    top = jnp.linalg.eigvalsh(hessians)[:, -1]
    # D ≤ 64 here, so Lanczos runs to the full Krylov space: exact up to
    # round-off in the reorthogonalised basis (~1e-12 relative)
    np.testing.assert_allclose(tracked[np.array(saves)], top, rtol=1e-9)


def test_sharpness_of_the_trainable_part():
    """With a frozen layer, λ_max is that of the trainable block of ∇²L, below the
    full Hessian's (Cauchy interlacing: the frozen layer adds curvature)."""
    case, (gd, _) = _case("frozen"), _runs("frozen")
    block = analysis.sharpness(case.loss, gd[-1], trainable=case.trainable)
    top = []
    for spec in (case.trainable, eqx.is_inexact_array):
        theta, rebuild = _trainable_flat(case, gd[-1], spec)
        hessian = jax.jit(jax.hessian(lambda t: case.loss(rebuild(t))))(theta)
        top.append(jnp.linalg.eigvalsh(hessian)[-1])
    # exact Lanczos (D ≤ 64), as above
    np.testing.assert_allclose(block, top[0], rtol=1e-9)
    # strictly above: the frozen layer's own curvature couples in
    assert top[1] > block * (1 + 1e-6)


@names
def test_user_written_law(name, key):
    case, (_, gf) = _case(name), _runs(name)
    check = invariants.check_conserved(
        case.law,
        case.loss,
        case.model,
        key=key,
        trajectory=gf,
        trainable=case.trainable,
    )
    assert check.passed, check
    # GF solved at 1e-12 keeps Q to ~1e-11 relative over t ∈ [0, T]
    assert invariants.relative_drift(case.law, gf) < 1e-9


def test_gd_drift_of_a_law():
    """GD does not conserve the unit balance of `Gathered`, but the drift of a
    quadratic Q is exactly its second-order Taylor sum along the steps."""
    case = _case("gathered")
    gd = flowgap.gradient_descent(case.loss, case.model, lr=0.05, steps=10)
    report = invariants.gd_drift(case.law, case.loss, gd, lr=0.05)
    assert np.max(np.abs(report.measured)) > 1e-6  # GD does move Q
    # |Q| ~ 1: the identity holds to round-off
    np.testing.assert_allclose(report.measured, report.taylor, atol=1e-12)


def test_frozen_law_needs_trainable(key):
    """The frozen layer is conserved because it is frozen: counted as trainable,
    the same law is visibly broken (O(1) alignment)."""
    case = _case("frozen")
    check = invariants.check_conserved(case.law, case.loss, case.model, key=key)
    assert not check.passed and check.worst > 1e-3


def test_sensitivity_to_the_initial_model():
    case = _case("gathered")

    def final_loss(model):
        return flowgap.gradient_descent(
            case.loss, model, lr=LR, steps=5, trainable=case.trainable
        ).final_loss

    out = analysis.sensitivity(final_loss, wrt="model")(case.model)
    derivative = out.derivatives["model"]
    # floating-point leaves only: no derivative for the index, σ or the degree
    assert derivative.index is None and derivative.activation is None
    assert derivative.degree == 2 and derivative.w.shape == case.model.w.shape
    direct = eqx.filter_grad(final_loss)(case.model)
    # the same reverse pass, traced twice: equal to round-off
    np.testing.assert_allclose(
        ravel_pytree(derivative)[0], ravel_pytree(direct)[0], rtol=1e-12
    )
