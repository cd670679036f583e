"""wn-robust-bias's flow chart (docs: studies/wn-robust-bias): the gradient flow
in z = log w, ż = −P(∂L/∂w)/w, is the closed form at any z, including weights
far below float64's range, where the polar flow at a large ρ drives them."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowgap.dynamics._flat import FlatLayout
from flowgap.dynamics._objective import Objective
from flowgap.experiments._wn_robust_bias_log import LogCoordinateField, LogCoordinates
from flowgap.models import DiagonalNet
from flowgap.problems import sparse_recovery

# Which weights are set far down, and to what z: −400 is past w^2's underflow
# (z < −354) and −1000 past e^{−z}'s overflow (z < −709), where the field used
# to be 0 or NaN.
_LOW = {1: -400.0, 4: -1000.0}


def _field(depth):
    """The field at a plain diagonal net of `depth` with u_1, u_4 far down, and
    what it should be: ż_u = −L u^{L−2} g, ż_v = +L v^{L−2} g, g = ∂L/∂β."""
    problem = sparse_recovery(jax.random.key(0), n=10, d=30, sparsity=2)
    net = DiagonalNet(30, depth=depth, scale=0.3)
    z = LogCoordinates.of(net)
    z_u = z.log_model.u + 0.1 * jnp.arange(30) / 30  # unequal weights
    for i, low in _LOW.items():
        z_u = z_u.at[i].set(low)
    z = eqx.tree_at(lambda c: c.log_model.u, z, z_u)
    params, static = eqx.partition(z, eqx.is_inexact_array)
    layout = FlatLayout.of(params)
    objective = Objective(problem.loss, static, layout, None)
    got = layout.unravel(LogCoordinateField()(0.0, layout.ravel(params), objective))
    u, v = jnp.exp(z.log_model.u), jnp.exp(z.log_model.v)
    beta = u**depth - v**depth
    x, y = problem.inputs, problem.targets
    g = x.T @ (x @ beta - y) / problem.n
    want_u = -depth * u ** (depth - 2) * g
    want_v = depth * v ** (depth - 2) * g
    return got.log_model, want_u, want_v


def test_depth_two_field_is_the_closed_form_below_the_float_range():
    """At depth 2, ż_u = −2g does not depend on u: the weights at z = −400 and
    −1000 get their exact velocity (rtol 1e-13: a few ulps of g's rounding,
    which sums 30 products of size |g|·cond), not 0 or NaN."""
    got, want_u, want_v = _field(2)
    assert np.all(np.isfinite(got.u))
    np.testing.assert_allclose(got.u, want_u, rtol=1e-13)
    np.testing.assert_allclose(got.v, want_v, rtol=1e-13)
    low = np.abs(np.asarray(got.u)[list(_LOW)])
    assert np.all(low > 1e-3)  # a real velocity, of g's size


@pytest.mark.parametrize("depth", [3, 4])
def test_deeper_field_is_the_closed_form_and_vanishes_below_the_floor(depth):
    """At depth L ≥ 3 the velocity L u^{L−2} g vanishes with u: the weights far
    down get a velocity below 1e-70 (the floor's w̃^{L−2} times |Lg|), the rest
    the closed form."""
    got, want_u, want_v = _field(depth)
    rest = np.setdiff1d(np.arange(30), list(_LOW))
    np.testing.assert_allclose(
        np.asarray(got.u)[rest], np.asarray(want_u)[rest], rtol=1e-13
    )
    np.testing.assert_allclose(got.v, want_v, rtol=1e-13)
    low = np.abs(np.asarray(got.u)[list(_LOW)])
    assert np.all(np.isfinite(low)) and np.all(low < 1e-70)
