"""The flow engine: fields as modules, Diffrax objects as arguments, flat state,
honest counts."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import flowgap
from flowgap.dynamics import (
    AbstractField,
    GradientField,
    LossBelow,
    ModifiedField,
    MomentumField,
)
from flowgap.models import DiagonalNet

from .helpers import quadratic, tree_allclose


class DecayedGradient(AbstractField):
    """dθ/dt = −∇L(θ) − λθ: a user's field, written in a few lines."""

    decay: jax.Array
    rates: None = None
    grad_evals_per_call = 1

    def __call__(self, t, y, objective):
        return -objective.grad(y) - self.decay * y


def test_user_field_matches_closed_form(key):
    """On L = ½θᵀAθ − bᵀθ the field is linear: θ(t) = θ* + e^{−Mt}(θ₀ − θ*)
    with M = A + λI and θ* = M⁻¹b. rtol 1e-10 / atol 1e-12 per step keep the
    global error below 1e-8 on this contracting, O(1)-sized problem."""
    a, b, loss = quadratic(4, key)
    decay = 0.3
    theta0 = jnp.arange(1.0, 5.0)
    ts = jnp.linspace(0.0, 3.0, 7)
    traj = flowgap.gradient_flow(
        loss,
        theta0,
        t1=3.0,
        ts=ts,
        field=DecayedGradient(jnp.asarray(decay)),
        rtol=1e-10,
        atol=1e-12,
    )
    m = np.asarray(a) + decay * np.eye(4)
    star = np.linalg.solve(m, np.asarray(b))
    exact = np.stack(
        [star + scipy.linalg.expm(-m * t) @ (np.asarray(theta0) - star) for t in ts]
    )
    np.testing.assert_allclose(traj.models, exact, atol=1e-8)


def test_field_and_shortcuts_agree(key):
    """`rates=`/`rtol=`/`atol=` are shortcuts: the explicit field and controller
    give the same program, so the same bits."""
    problem = flowgap.problems.sparse_recovery(key, n=10, d=30, sparsity=2)
    net = DiagonalNet(30, scale=0.1)
    short = flowgap.gradient_flow(problem.loss, net, t1=5.0, rates=2.0, rtol=1e-7)
    explicit = flowgap.gradient_flow(
        problem.loss,
        net,
        t1=5.0,
        field=GradientField(2.0),
        stepsize_controller=diffrax.PIDController(
            rtol=1e-7, atol=1e-10, pcoeff=0.3, icoeff=0.3
        ),
    )
    assert tree_allclose(short.models, explicit.models)
    with pytest.raises(ValueError, match="`stepsize_controller`"):
        flowgap.gradient_flow(
            problem.loss,
            net,
            t1=1.0,
            rtol=1e-6,
            stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-9),
        )
    with pytest.raises(ValueError, match="`field`"):
        flowgap.gradient_flow(
            problem.loss, net, t1=1.0, rates=2.0, field=GradientField()
        )
    with pytest.raises(TypeError, match="[`']field[`']"):  # ours, or jaxtyping's
        flowgap.gradient_flow(problem.loss, net, t1=1.0, field=lambda t, y: -y)


def test_euler_with_constant_step_is_gradient_descent(key):
    """GD is the explicit Euler method of the flow with step η, on t = kη: the
    engine with `diffrax.Euler()` and `ConstantStepSize` at dt0 = η reproduces
    GD. Both compute θ + η·(−∇L) in the same order, so the only difference is
    Diffrax's time bookkeeping (t_k accumulated in floating point), hence
    agreement to round-off (1e-13), not bit for bit."""
    problem = flowgap.problems.sparse_recovery(key, n=10, d=30, sparsity=2)
    net = DiagonalNet(30, scale=0.5)
    lr, steps = 0.05, 40
    gd = flowgap.gradient_descent(problem.loss, net, lr=lr, steps=steps)
    euler = flowgap.gradient_flow(
        problem.loss,
        net,
        t1=lr * steps,
        ts=gd.ts,
        solver=diffrax.Euler(),
        stepsize_controller=diffrax.ConstantStepSize(),
        dt0=lr,
    )
    assert int(euler.stats["num_steps"]) == steps
    assert int(euler.stats["num_grad_evals"]) == steps
    np.testing.assert_allclose(euler.models.u, gd.models.u, rtol=0, atol=1e-13)
    with pytest.raises(ValueError, match="`dt0`"):
        flowgap.gradient_flow(
            problem.loss,
            net,
            t1=1.0,
            stepsize_controller=diffrax.ConstantStepSize(),
        )


@pytest.mark.parametrize(
    "field, solver",
    [
        (None, diffrax.Tsit5()),
        (ModifiedField(0.05, 1), diffrax.Tsit5()),
        (ModifiedField(0.05, 2), diffrax.Heun()),
        (MomentumField(0.05, 0.5, 1), diffrax.Dopri5()),
    ],
    ids=["gradient", "modified-1", "modified-2", "momentum-1"],
)
def test_stopped_flow_counts_every_gradient(key, field, solver):
    """stats['num_grad_evals'] equals a runtime counter inside the loss (one
    forward pass per gradient or Hessian–vector product), including the stop
    event's gradient at t0 and after every step."""
    problem = flowgap.problems.sparse_recovery(key, n=10, d=30, sparsity=2)
    calls = []

    def loss(model):
        jax.debug.callback(lambda _: calls.append(1), model.u[0])
        return problem.loss(model)

    net = DiagonalNet(30, scale=0.1)
    traj = flowgap.gradient_flow(
        loss,
        net,
        t1=1e4,
        field=field,
        solver=solver,
        rtol=1e-6,
        atol=1e-9,
        stop_when=LossBelow(1e-4),
        max_steps=10**5,
    )
    jax.block_until_ready(traj)
    assert traj.result == flowgap.RESULTS.event_occurred
    # field.start: one gradient for the order-1 momentum flow's shifted start
    start = 1 if isinstance(field, MomentumField) else 0
    saves_and_final = len(traj) + 1  # L at each save and at the end
    expected = len(calls) - saves_and_final - start
    assert int(traj.stats["num_grad_evals"]) == expected


def test_flat_state_handles_mixed_leaves(key):
    """A model with a function field, a static int, an integer array and
    float leaves of several shapes flows on its flat vector and comes back
    with the same structure; the non-trainable leaves are untouched."""

    class Odd(eqx.Module):
        w: jax.Array
        b: jax.Array
        counts: jax.Array
        act: object
        width: int = eqx.field(static=True)

        def __call__(self, x):
            return self.act(x @ self.w + self.b).sum() * self.width

    model = Odd(
        jax.random.normal(key, (3, 2)), jnp.zeros(2), jnp.arange(3), jnp.tanh, 2
    )
    x = jax.random.normal(jax.random.key(1), (5, 3))

    def loss(m):
        return jnp.mean((jax.vmap(m)(x) - 1.0) ** 2)

    traj = flowgap.gradient_flow(loss, model, t1=1.0, ts=jnp.linspace(0, 1, 3))
    assert traj.final.act is jnp.tanh and traj.final.width == 2
    assert jnp.array_equal(traj.final.counts, model.counts)
    assert traj.models.w.shape == (3, 3, 2) and traj.final.w.shape == (3, 2)
    assert float(traj.final_loss) < float(loss(model))
