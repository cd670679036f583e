"""The flow engine: any `AbstractField`, on the flat trainable vector, through
`diffrax.diffeqsolve`."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from .._checks import positive_int, positive_scalar
from ._common import check_loss, split_model, stacked_model
from ._field import AbstractField, GradientField
from ._flat import FlatLayout
from ._flow_failure import throw_if_failed
from ._flow_options import (
    check_controller,
    check_progress_meter,
    check_solver,
    check_ts,
    choose_adjoint,
    non_smooth_defaults,
    rk_evaluations,
)
from ._noise import AbstractNoise, sde_defaults
from ._objective import Objective
from ._rates import check_rates, restrict_rates
from ._results import RESULTS
from ._stopping import check_stop_condition
from ._trajectory import Trajectory


def _theta(y, size: int):
    """θ, the first D = `size` entries of a field's state (along the last axis):
    all of it, untouched, unless the field carries extra state."""
    return y if y.shape[-1] == size else y[..., :size]


class UnravelledInterpolation(eqx.Module):
    """Diffrax's dense interpolation of the flat state, evaluated as the
    trainable parameters' pytree (θ only, for a field with extra state)."""

    interpolation: diffrax.DenseInterpolation
    layout: FlatLayout

    def evaluate(self, t):
        y = self.interpolation.evaluate(t)
        return self.layout.unravel(_theta(y, self.layout.size))


def _vector_field(t, y, args):
    field, objective, _ = args
    return field(t, y, objective)


def _diffusion(t, y, args):
    _, objective, noise = args
    return noise(t, _theta(y, objective.layout.size), objective)


def _terms(noise, t1, brownian_tol, dtype):
    """F dt, plus g dW for a flow with `noise` (W a virtual Brownian tree on
    [0, t1] from the noise's key: reproducible and differentiable)."""
    drift = diffrax.ODETerm(_vector_field)
    if noise is None:
        return drift
    brownian = diffrax.VirtualBrownianTree(
        jnp.zeros((), dtype),
        t1,
        tol=brownian_tol,
        shape=jax.ShapeDtypeStruct((noise.size,), dtype),
        key=noise.key,
    )
    return diffrax.MultiTerm(drift, diffrax.ControlTerm(_diffusion, brownian))


def _event(stop_when):
    def cond_fn(t, y, args, **kwargs):
        objective = args[1]
        value, grads = objective.value_and_grad(_theta(y, objective.layout.size))
        return stop_when(value, objective.layout.unravel(grads))

    return diffrax.Event(cond_fn)


# L at the saves is evaluated this many saves at a time: batched enough to run at
# vmap speed, bounded so a long trajectory never holds all its forward passes.
_LOSS_BATCH = 32


def _saved_losses(objective, saved, y0):
    """L at every save, `_LOSS_BATCH` saves at a time (`lax.map`). Saves past a
    stop are inf (Diffrax); they are evaluated on a finite stand-in, so no NaN
    enters the graph, and reported as inf."""

    def save_loss(y):
        finite = jnp.all(jnp.isfinite(y))
        return jnp.where(finite, objective(jnp.where(finite, y, y0)), jnp.inf)

    return lax.map(save_loss, saved, batch_size=min(_LOSS_BATCH, saved.shape[0]))


@eqx.filter_jit
def _solve(field, objective, y0, t1, ts, options, noise=None, brownian_tol=None):
    solver, controller, adjoint, stop_when, max_steps, dt0, meter, dense = options
    backsolve = isinstance(adjoint, diffrax.BacksolveAdjoint)
    if backsolve:
        # BacksolveAdjoint takes a single plain SaveAt (no subs, no events): t1 is
        # appended to `ts` and split off below.
        saveat = diffrax.SaveAt(ts=jnp.concatenate([ts, t1[None]]))
    else:
        # Save at `ts` and at the final time reached, so a stopped or failed solve
        # still hands back where it got to.
        saveat = diffrax.SaveAt(
            subs=[diffrax.SubSaveAt(ts=ts), diffrax.SubSaveAt(t1=True)], dense=dense
        )
    start = _check_start(field.start(y0, objective), y0)
    sol = diffrax.diffeqsolve(
        _terms(noise, t1, brownian_tol, y0.dtype),
        solver,
        t0=jnp.zeros((), t1.dtype),
        t1=t1,
        dt0=dt0,
        y0=start,
        args=(field, objective, noise),
        saveat=saveat,
        stepsize_controller=controller,
        adjoint=adjoint,
        event=None if stop_when is None else _event(stop_when),
        max_steps=max_steps,
        throw=False,
        progress_meter=meter,
    )
    if backsolve:
        saved, final, stop_time = sol.ys[:-1], sol.ys[-1], t1
    else:
        saved, final, stop_time = sol.ys[0], sol.ys[1][-1], sol.ts[1][-1]
    num_steps = sol.stats["num_steps"]
    field_evals = rk_evaluations(solver, num_steps)
    grad_evals = jnp.where(field_evals < 0, -1, field_evals * field.grad_evals_per_call)
    if stop_when is not None:
        # the event's L and ∇L: at t0 and after every attempted step
        grad_evals = jnp.where(grad_evals < 0, -1, grad_evals + num_steps + 1)
    extra_stats = {}
    if noise is not None:
        # g is evaluated alongside F at every stage of the solver
        extra_stats["num_example_grads"] = jnp.where(
            field_evals < 0, -1, field_evals * noise.rows_per_call
        )
    layout, static = objective.layout, objective.static
    # a field's extra state (past θ) is saved alongside, in `aux["state"]`
    size = layout.size
    aux = {} if start.shape[0] == size else {"state": saved[:, size:]}
    saved, final = _theta(saved, size), _theta(final, size)
    return Trajectory(
        ts=ts,
        models=stacked_model(layout.unravel_batch(saved), static, ts.shape[0]),
        loss=_saved_losses(objective, saved, y0),
        final=objective.model(final),
        final_loss=objective(final),
        stop_time=stop_time,
        result=RESULTS.promote(sol.result),
        stats=dict(
            num_steps=num_steps,
            num_accepted_steps=sol.stats["num_accepted_steps"],
            num_rejected_steps=sol.stats["num_rejected_steps"],
            num_field_evals=field_evals,
            num_grad_evals=grad_evals,
            # L alone: at every save and at the end
            num_loss_evals=jnp.asarray(ts.shape[0] + 1),
            **extra_stats,
        ),
        interpolation=(
            UnravelledInterpolation(sol.interpolation, layout) if dense else None
        ),
        aux=aux,
    )


def _check_start(start, y0):
    """`field.start`'s state: θ (length D) or [θ; s], longer."""
    if jnp.ndim(start) != 1 or jnp.shape(start)[0] < y0.shape[0]:
        raise ValueError(
            "`field.start(y0, objective)` must return a 1-D state [θ; s] of length "
            f"at least D = {y0.shape[0]} (θ first, then any extra state), got "
            f"shape {jnp.shape(start)}."
        )
    return start


def _check_field(field, rates):
    if field is None:
        return GradientField(rates)
    if not isinstance(field, AbstractField):
        raise TypeError(
            "`field` must be a flowgap.dynamics.AbstractField (e.g. GradientField, "
            f"ModifiedField, MomentumField), got {type(field).__name__}."
        )
    if rates is not None:
        raise ValueError(
            "`rates` is a shortcut for `field=GradientField(rates)`; with `field` "
            "given, set the rates on the field."
        )
    return field


def _flat_rates(field, model, params, layout):
    rates = restrict_rates(check_rates(field.rates, model), params)
    if rates is None:
        return None
    full = jax.tree.map(lambda r, p: jnp.broadcast_to(r, p.shape), rates, params)
    return layout.ravel(full)


def gradient_flow(
    loss,
    model,
    *,
    t1,
    ts=None,
    field: AbstractField | None = None,
    solver: diffrax.AbstractSolver | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    adjoint: diffrax.AbstractAdjoint | None = None,
    stop_when=None,
    progress_meter: diffrax.AbstractProgressMeter | None = None,
    throw: bool = False,
    max_steps: int = 100_000,
    dt0=None,
    rtol=None,
    atol=None,
    rates=None,
    dense: bool = False,
    trainable=None,
    noise: AbstractNoise | None = None,
    brownian_tol=None,
) -> Trajectory:
    r"""Solve a flow of the model's trainable parameters with
    `diffrax.diffeqsolve`, to a stated tolerance, on the clock t = k·η.

    By default the exact gradient flow,

    $$\frac{d\theta}{dt} = -P \odot \nabla L(\theta),\qquad \theta(0) = \theta_0,$$

    whose explicit Euler method with step η is gradient descent — never
    approximated by small gradient steps. Any other flow is a `field`:
    `ModifiedField(lr, order)` (GD's modified equations), `MomentumField(lr,
    beta, order)` (heavy ball), or a user's `AbstractField`. The solve runs on one
    flat vector of the trainable leaves (raveled once, unravelled at the saves).

    **Arguments:**

    - `loss`: model → scalar, e.g. `problem.loss` (its data are traced).
    - `model`: the initial model, any Equinox module (or a bare array).
    - `t1`: final time > 0 (traced).
    - `ts`: save times, non-decreasing, from 0 to at most t1, e.g. a gradient
      descent trajectory's `ts`. Default: 0 and t1.
    - `field`: the vector field (default `GradientField(rates)`).
    - `solver`: a Diffrax solver (default `Tsit5()`; `Dopri8()` for tight
      tolerances, `Kvaerno5()` when stiff). For a model with kinks (ReLU, |·|,
      max, …: `flowgap.models.non_smooth`) the default is `Heun()`: a
      high-order solver stalls where the flow slides along a kink (docs:
      non-smooth).
    - `stepsize_controller`: a Diffrax controller. Default
      `PIDController(rtol, atol, pcoeff=0.3, icoeff=0.3)`: one of Diffrax's
      suggestions for mildly stiff problems, since long gradient flows are
      stability-limited (an explicit solver's step hovers near its stability
      bound), where plain I-control rejects many more steps.
    - `rtol`, `atol`: shortcuts for the default controller's tolerances
      (default 1e-8, 1e-10; for a model with kinks 1e-3, 1e-5, a relative
      parameter error of a few 1e-4 on benchmarks/bench_relu.py; traced). Not
      allowed with `stepsize_controller`.
    - `adjoint`: how the solve is differentiated. Default (None):
      `diffrax.RecursiveCheckpointAdjoint()` in reverse mode, switched to
      `diffrax.ForwardMode()` when the call is under `jax.jvp`/`jax.jacfwd`
      (inside your own `jax.jit`, pass `ForwardMode()` explicitly).
      `RecursiveCheckpointAdjoint` differentiates the numerical solution exactly
      with O(log N) memory for N steps; `BacksolveAdjoint` solves the continuous
      adjoint backwards (O(1) memory, only as accurate as the backward solve,
      no `stop_when` or `dense`); `ForwardMode` suits a few inputs (α, η, ρ) and
      many outputs. See the docs page "Differentiating a run".
    - `stop_when`: a stop condition (`LossBelow`, `GradNormBelow`), checked at t0
      and after every step as a `diffrax.Event`; the solve ends with
      `event_occurred`.
    - `progress_meter`: a Diffrax progress meter (`TqdmProgressMeter()`).
    - `throw`: raise `SolverError` on failure (otherwise the status is on the
      result).
    - `max_steps`: cap on solver steps (static). `dt0`: initial step (default
      chosen by Diffrax; required with `ConstantStepSize`).
    - `rates`: P, a shortcut for `field=GradientField(rates)`: a positive scalar
      or a pytree shaped like the model (see `uniform_rates`).
    - `dense`: keep Diffrax's dense interpolation, so `traj.at(t)` and `compare`
      can evaluate the flow at any time in [0, stop_time].
    - `trainable`: which leaves move, a filter as in `eqx.partition` (default
      every floating-point array); the rest is carried along unchanged.
    - `noise`: a diffusion g (an `AbstractNoise`, e.g. SGD's `MinibatchNoise`),
      making the flow the Itô SDE dθ = F dt + g dW, W a
      `diffrax.VirtualBrownianTree` from `noise.key` (see `stochastic_flow`).
      The defaults then become `diffrax.Euler()` (Euler–Maruyama) at the
      constant step `dt0`, which must be given.
    - `brownian_tol`: the Brownian tree's resolution (default `dt0`/16, or
      t1·2⁻²⁰ without `dt0`).

    **Returns:** a `Trajectory` saved at `ts`, with `stats` `num_steps`,
    `num_accepted_steps`, `num_rejected_steps`, `num_field_evals` (vector-field
    evaluations; −1 for implicit solvers, whose count depends on their Newton
    iterations) and `num_grad_evals` (`num_field_evals` ×
    `field.grad_evals_per_call`, plus one gradient at t0 and after every step
    for `stop_when`) and `num_loss_evals` (L alone: at the saves and the end,
    `len(ts) + 1`). On failure (e.g. `max_steps` reached) it holds everything
    up to the failure time `stop_time`; later saves are inf and `result` carries
    Diffrax's code. A field with extra state (see `AbstractField.start`) is
    solved for [θ; s]; `models`, `loss`, `final`, `stop_when` and `traj.at` see
    θ, and the saved s is `aux["state"]`, shape (S, len(s)).
    """
    loss = check_loss(loss)
    field = _check_field(field, rates)
    params, static = split_model(model, trainable)
    layout = FlatLayout.of(params)
    dtype = layout.dtype
    t1 = positive_scalar("t1", t1).astype(dtype)
    ts = check_ts(ts, t1).astype(dtype)
    max_steps = positive_int("max_steps", max_steps)
    if dt0 is not None:
        dt0 = positive_scalar("dt0", dt0).astype(dtype)
    stop_when = check_stop_condition(stop_when)
    if noise is not None:
        solver, stepsize_controller, brownian_tol = sde_defaults(
            noise, solver, stepsize_controller, rtol, atol, dt0, t1, brownian_tol
        )
    solver, rtol, atol = non_smooth_defaults(
        model, solver, stepsize_controller, rtol, atol
    )
    solver = check_solver(solver)
    controller = check_controller(stepsize_controller, rtol, atol, dt0, dtype)
    flat_rates = _flat_rates(field, model, params, layout)
    objective = Objective(loss, static, layout, flat_rates)
    y0 = layout.ravel(params)
    adjoint = choose_adjoint(
        adjoint, (y0, objective, field, t1, noise), stop_when=stop_when, dense=dense
    )
    meter = check_progress_meter(progress_meter)
    options = (solver, controller, adjoint, stop_when, max_steps, dt0, meter, dense)
    traj = _solve(field, objective, y0, t1, ts, options, noise, brownian_tol)
    if throw:
        traj = throw_if_failed(traj, t1, controller, max_steps, solver)
    return traj
