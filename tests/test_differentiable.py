"""Derivatives through whole training runs (float64): against central finite
differences, across adjoints, and against the implicit-function-theorem
derivative of the converged limit."""

import subprocess
import sys
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import flowgap
from flowgap.analysis import (
    loglog_slope,
    sensitivity,
    tune,
    woodworth_limit,
    woodworth_limit_derivative,
)
from flowgap.dynamics import LossBelow, modified_flow, uniform_rates
from flowgap.models import DiagonalNet, PolarDiagonalNet
from flowgap.problems import RegressionProblem, sparse_recovery

D = 8
PROBLEM = sparse_recovery(jax.random.key(0), n=4, d=D, sparsity=2)
# ρ for the plain net: v trained at rate ρ relative to u (a per-block rate).
MODELS = {
    "diagonal": (
        lambda scale: DiagonalNet(D, scale=scale),
        lambda model, rho: eqx.tree_at(
            lambda r: r.v, uniform_rates(model), jnp.asarray(rho)
        ),
    ),
    "polar": (
        lambda scale: PolarDiagonalNet(D, scale=scale),
        lambda model, rho: model.rates(rho),
    ),
}
STEPS = 40
POINT = dict(scale=0.4, lr=0.05, rho=1.5, x00=PROBLEM.inputs[0, 0])


def _outcome(kind, trainer):
    """Recovery error ‖β(T) − β*‖ at T = 40·η as a function of (α, η, ρ, X₀₀)."""
    make, rates = MODELS[kind]

    @jax.jit
    def outcome(scale, lr, rho, x00):
        problem = RegressionProblem(PROBLEM.inputs.at[0, 0].set(x00), PROBLEM.targets)
        model = make(scale)
        if trainer == "gd":
            final = flowgap.gradient_descent(
                problem.loss,
                model,
                lr=lr,
                steps=STEPS,
                save_every=STEPS,
                rates=rates(model, rho),
            ).final
        else:
            # The flow on GD's clock: lr enters through the horizon T = K·lr.
            final = flowgap.gradient_flow(
                problem.loss,
                model,
                t1=STEPS * lr,
                rates=rates(model, rho),
                rtol=1e-12,
                atol=1e-12,
            ).final
        return jnp.linalg.norm(final.end_to_end() - PROBLEM.truth)

    return outcome


@pytest.mark.parametrize("trainer", ["gd", "gf"])
@pytest.mark.parametrize("kind", ["diagonal", "polar"])
def test_gradients_agree_with_central_differences(kind, trainer):
    outcome = _outcome(kind, trainer)
    names = tuple(POINT)
    out = sensitivity(outcome, wrt=names)(**POINT)
    for name in names:
        # Central differences have truncation error h²f'''/6 and rounding error
        # ≈ ε|f|/h; h = 1e-4·|x| balances them near ε^(2/3) relative for the
        # smooth GD map. For the flow, Tsit5 at rtol = atol = 1e-12 makes the
        # solver's own error (≈1e-12, which FD divides by h) small enough too.
        h = 1e-4 * abs(float(POINT[name]))
        up = outcome(**{**POINT, name: POINT[name] + h})
        down = outcome(**{**POINT, name: POINT[name] - h})
        fd = (up - down) / (2 * h)
        ad = out.derivatives[name]
        assert abs(ad - fd) <= 1e-6 * abs(fd), (name, float(ad), float(fd))


def test_forward_reverse_and_backsolve_agree_through_the_flow():
    """jax.jvp (ForwardMode, chosen automatically), jax.grad (checkpointed
    adjoint) and BacksolveAdjoint give one derivative of the final loss w.r.t. α
    at a short horizon."""

    def final_loss(scale, adjoint=None):
        model = DiagonalNet(D, scale=scale)
        traj = flowgap.gradient_flow(
            PROBLEM.loss, model, t1=1.0, adjoint=adjoint, rtol=1e-12, atol=1e-12
        )
        return traj.final_loss

    reverse = jax.grad(final_loss)(0.4)
    forward = jax.jvp(final_loss, (0.4,), (1.0,))[1]
    backsolve = jax.grad(final_loss)(0.4, adjoint=diffrax.BacksolveAdjoint())
    # Forward and reverse differentiate the same discrete solve: equal to
    # rounding. Backsolve re-solves θ and the adjoint backwards at rtol = 1e-12;
    # the backward solve of a contracting flow amplifies its local errors:
    # measured 4e-9 relative here (2e-5 at rtol = 1e-8; at t1 = 4 it is off by
    # a factor 1e6 or more, which is why it is not the default).
    assert np.isclose(forward, reverse, rtol=1e-12, atol=0)
    assert np.isclose(backsolve, reverse, rtol=1e-6, atol=0)


@pytest.mark.slow
def test_modified_flow_is_differentiable_in_lr_both_ways():
    """jax.grad and jax.jvp through the order-1 modified flow w.r.t. lr (which
    enters its field) agree, and match central differences. (No jax.jit around
    it: under `jax.jvp(jax.jit(f))` the solve cannot see that it is being
    differentiated forwards; there `adjoint=diffrax.ForwardMode()` is needed.)"""

    def final_loss(lr):
        model = DiagonalNet(D, scale=0.4)
        return modified_flow(
            PROBLEM.loss, model, lr=lr, t1=1.0, rtol=1e-12, atol=1e-12
        ).final_loss

    grad_lr = jax.grad(final_loss)(0.05)
    jvp_lr = jax.jvp(final_loss, (0.05,), (1.0,))[1]
    assert np.isclose(grad_lr, jvp_lr, rtol=1e-12, atol=0)  # same discrete solve
    h = 1e-4 * 0.05  # as in test_gradients_agree_with_central_differences
    fd = (final_loss(0.05 + h) - final_loss(0.05 - h)) / (2 * h)
    assert abs(grad_lr - fd) <= 1e-6 * abs(fd)


def test_backsolve_refuses_events():
    with pytest.raises(ValueError, match="`adjoint=diffrax.BacksolveAdjoint"):
        flowgap.gradient_flow(
            PROBLEM.loss,
            DiagonalNet(D, scale=0.4),
            t1=1.0,
            adjoint=diffrax.BacksolveAdjoint(),
            stop_when=LossBelow(1e-3),
        )


ALPHA = 0.5
SMALL = sparse_recovery(jax.random.key(0), n=5, d=10, sparsity=2)


def test_implicit_derivative_is_the_ift_formula():
    """The optimistix ImplicitAdjoint derivative equals the IFT formula of the
    dual condition written out (docs: theory/implicit-bias) with ν recovered from
    β_∞."""
    x, y = SMALL.inputs, SMALL.targets
    beta, dbeta = woodworth_limit_derivative(x, y, ALPHA)
    assert np.allclose(beta, woodworth_limit(x, y, ALPHA), rtol=0, atol=1e-14)
    nu = jnp.linalg.lstsq(x.T, jnp.arcsinh(beta / (2 * ALPHA**2)))[0]
    w = 2 * ALPHA**2 * jnp.cosh(x.T @ nu)
    dnu = -jnp.linalg.solve(x @ (w[:, None] * x.T), x @ (2 * beta / ALPHA))
    formula = 2 * beta / ALPHA + w * (x.T @ dnu)
    # Both solve the same n×n system; Newton converged to 1e-13.
    assert np.allclose(dbeta, formula, rtol=1e-9, atol=1e-12)


def test_three_routes_to_dbeta_dalpha_agree():
    """dβ_∞/dα: implicit (dual IFT), unrolled GF stopped by the event L < 1e-24,
    unrolled GD. GD's limit is the Woodworth limit at an η-shifted effective
    scale, so raw GD is off by O(η) (slope 1 measured); its three-level Richardson
    extrapolation in η cancels the O(η) and O(η²) terms."""
    x, y = SMALL.inputs, SMALL.targets
    implicit = woodworth_limit_derivative(x, y, ALPHA)[1]

    def relative(v):
        return float(jnp.linalg.norm(v - implicit) / jnp.linalg.norm(implicit))

    def flow_limit(alpha):
        traj = flowgap.gradient_flow(
            SMALL.loss,
            DiagonalNet(10, scale=alpha),
            t1=1e4,
            stop_when=LossBelow(1e-24),
            rtol=1e-12,
            atol=1e-14,
            solver=diffrax.Dopri8(),
        )
        return traj.final.end_to_end()

    # At L < 1e-24 the residual is ~1e-12, so β(T) and its α-derivative are
    # within ~1e-10 of the limit's (measured 3e-10).
    assert relative(jax.jacfwd(flow_limit)(ALPHA)) < 1e-5

    def descent_limit(alpha, lr):
        steps = int(round(60 / lr))  # T = 60: L ≈ 1e-30, converged
        return flowgap.gradient_descent(
            SMALL.loss,
            DiagonalNet(10, scale=alpha),
            lr=lr,
            steps=steps,
            save_every=steps,
        ).final.end_to_end()

    lrs = (0.02, 0.01, 0.005)
    d = [jax.jacfwd(descent_limit)(ALPHA, lr) for lr in lrs]
    errors = [relative(v) for v in d]
    slope = loglog_slope(np.array(lrs), np.array(errors))["slope"]
    assert 0.9 < slope < 1.1, errors  # GD's bias shift is first order in η
    extrapolated = (8 * d[2] - 6 * d[1] + d[0]) / 3
    # O(η³) remainder, measured 4e-6 at these η.
    assert relative(extrapolated) < 1e-5


def test_static_settings_are_refused_by_name():
    def run(scale, steps, depth=2, solver="tsit5"):
        model = DiagonalNet(D, depth=depth, scale=scale)
        return flowgap.gradient_descent(
            PROBLEM.loss, model, lr=0.05, steps=steps
        ).final_loss

    for name in ("steps", "depth", "solver"):
        with pytest.raises(ValueError, match=f"`{name}`.*static"):
            sensitivity(run, wrt=("scale", name))(0.4, 10)
    with pytest.raises(ValueError, match="`lr`, which is not an argument"):
        sensitivity(run, wrt="lr")
    with pytest.raises(ValueError, match="`steps`.*static"):
        tune(lambda scale, steps: run(scale, steps), {"scale": 0.4, "steps": 10})
    out = sensitivity(run, wrt="scale", mode="forward")(0.4, 10)
    assert np.isfinite(out.derivatives["scale"]) and out.value.shape == ()


def test_tune_finds_the_one_step_optimal_learning_rate():
    """One GD step on L = ½λθ² ends at (1 − ηλ)θ₀: the final loss is minimised
    exactly at η = 1/λ."""
    lam = 4.0

    def final_loss(lr):
        return flowgap.gradient_descent(
            lambda t: 0.5 * lam * t**2, jnp.array(1.0), lr=lr, steps=1
        ).final_loss

    result = tune(
        final_loss, {"lr": 0.05}, steps=60, optimizer=optax.adam(0.1), progress=False
    )
    assert result.path["lr"].shape == (61,) and result.values[-1] < result.values[0]
    # Adam in ln η with step 0.1 settles within a few of its steps of the optimum.
    assert abs(result.best["lr"] * lam - 1) < 0.05


def test_tune_forward_mode_is_the_reverse_mode_path():
    """The same tuning run in forward and reverse mode: the hypergradient of
    one GD step on ½λθ² is −λ²θ₀²(1 − ηλ) in η, in closed form, and the two modes give
    it (and so the same iterates) to round-off."""
    lam = 4.0

    def final_loss(lr, scale):
        return flowgap.gradient_descent(
            lambda t: 0.5 * lam * t**2, scale, lr=lr, steps=1
        ).final_loss

    start = {"lr": 0.05, "scale": 1.5}
    runs = {
        mode: tune(final_loss, start, steps=5, mode=mode, progress=False)
        for mode in ("reverse", "forward")
    }
    lr, scale = runs["forward"].path["lr"], runs["forward"].path["scale"]
    exact = -(lam**2) * scale**2 * (1 - lr * lam)
    # a few float64 operations each: round-off is ~1e-16 relative
    np.testing.assert_allclose(runs["forward"].grads["lr"], exact, rtol=1e-13)
    for name in start:
        np.testing.assert_allclose(
            runs["forward"].path[name], runs["reverse"].path[name], rtol=1e-13
        )
    with pytest.raises(ValueError, match="`mode`"):
        tune(final_loss, start, mode="sideways")


@pytest.mark.slow
def test_reverse_mode_memory_is_bounded_in_steps():
    """benchmarks/bench_memory.py: peak RSS of reverse mode through 1e4 and 1e5
    GD steps (separate processes) grows by less than 2×."""
    script = Path(__file__).parents[1] / "benchmarks" / "bench_memory.py"
    out = subprocess.run(
        [sys.executable, str(script), "--no-record", "--memory-only"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    ratio = float(out.split("peak growth 1e4 -> 1e5:")[1].split()[0].rstrip("x"))
    assert ratio < 2.0, out


def test_derivative_wrt_initial_model_and_data_pytrees():
    """wrt a model (its initial parameters) and a problem (its data): with
    u = v = α·1, d/dα = Σᵢ ∂/∂uᵢ + ∂/∂vᵢ exactly (chain rule), and the data
    derivative has the problem's structure."""

    def final_loss(model, problem, scale):
        return flowgap.gradient_descent(
            problem.loss, model, lr=0.05, steps=STEPS, save_every=STEPS
        ).final_loss

    def of_scale(scale, problem):
        return final_loss(DiagonalNet(D, scale=scale), problem, scale)

    model = DiagonalNet(D, scale=0.4)
    out = sensitivity(final_loss, wrt=("model", "problem"))(model, PROBLEM, 0.4)
    d_model, d_data = out.derivatives["model"], out.derivatives["problem"]
    d_scale = sensitivity(of_scale, wrt="scale")(0.4, PROBLEM).derivatives["scale"]
    # The same derivative by two programs (chain rule): equal up to rounding.
    assert np.isclose(
        jnp.sum(d_model.u) + jnp.sum(d_model.v), d_scale, rtol=1e-12, atol=0
    )
    assert d_data.inputs.shape == PROBLEM.inputs.shape
    assert np.all(d_data.truth == 0)  # β* is a field of the problem, not in L
