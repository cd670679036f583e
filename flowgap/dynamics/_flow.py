import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._checks import is_concrete, positive_int, positive_scalar
from ._common import check_loss, scalar_loss, split_model, stacked_model
from ._rates import check_rates, precondition
from ._results import RESULTS, SolverError
from ._stopping import check_stop_condition
from ._trajectory import Trajectory


def gradient_field(loss, static, rates):
    """θ ↦ −P∇L(θ), the gradient-flow vector field on the trainable parameters."""
    value_fn = scalar_loss(loss, static)

    def field(params):
        grads = jax.grad(value_fn)(params)
        return jax.tree.map(jnp.negative, precondition(grads, rates))

    return field


def _plain_field(loss, static, rates, lr):
    return gradient_field(loss, static, rates)


def _event(stop_when):
    def cond_fn(t, params, args, **kwargs):
        loss, static = args[:2]
        value, grads = jax.value_and_grad(scalar_loss(loss, static))(params)
        return stop_when(value, grads)

    return diffrax.Event(cond_fn)


@eqx.filter_jit
def _solve(
    loss,
    params,
    static,
    t1,
    ts,
    rates,
    stop_when,
    rtol,
    atol,
    dt0,
    lr,
    controller,
    config,
):
    solver, max_steps, adjoint, progress, make_field, dense = config
    pcoeff, icoeff = controller
    dtype = jnp.result_type(*jax.tree.leaves(params))

    def vector_field(t, y, args):
        return make_field(*args)(y)

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
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field),
        solver,
        t0=jnp.zeros((), dtype),
        t1=t1,
        dt0=dt0,
        y0=params,
        args=(loss, static, rates, lr),
        saveat=saveat,
        stepsize_controller=diffrax.PIDController(
            rtol=rtol, atol=atol, pcoeff=pcoeff, icoeff=icoeff
        ),
        adjoint=adjoint,
        event=None if stop_when is None else _event(stop_when),
        max_steps=max_steps,
        throw=False,
        progress_meter=(
            diffrax.TqdmProgressMeter() if progress else diffrax.NoProgressMeter()
        ),
    )
    if backsolve:
        saved = jax.tree.map(lambda y: y[:-1], sol.ys)
        final = jax.tree.map(lambda y: y[-1], sol.ys)
        stop_time = t1
    else:
        saved = sol.ys[0]
        final = jax.tree.map(lambda y: y[-1], sol.ys[1])
        stop_time = sol.ts[1][-1]
    value_fn = scalar_loss(loss, static)
    final_loss = value_fn(final)

    # Saves past the stop are inf already (Diffrax). L is evaluated one save at a
    # time (lax.map), on a finite stand-in where the state is not finite, so no
    # extra copy of the saved trajectory is made and no NaN enters the graph.
    def save_loss(y):
        finite = jnp.all(
            jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(y)])
        )
        stand_in = jax.tree.map(lambda a, b: jnp.where(finite, a, b), y, params)
        return jnp.where(finite, value_fn(stand_in), jnp.inf)

    saved_loss = lax.map(save_loss, saved)
    return Trajectory(
        ts=ts,
        models=stacked_model(saved, static, ts.shape[0]),
        loss=saved_loss,
        final=eqx.combine(final, static),
        final_loss=final_loss,
        stop_time=stop_time,
        result=RESULTS.promote(sol.result),
        stats=dict(
            num_steps=sol.stats["num_steps"],
            num_accepted_steps=sol.stats["num_accepted_steps"],
            num_rejected_steps=sol.stats["num_rejected_steps"],
            num_grad_evals=_evaluations(solver, sol.stats["num_steps"]),
        ),
        interpolation=sol.interpolation if dense else None,
    )


def _check_ts(ts, t1):
    if ts is None:
        return jnp.stack([jnp.zeros_like(t1), t1])
    ts = jnp.asarray(ts)
    if ts.ndim != 1 or ts.shape[0] < 1:
        raise ValueError(
            f"`ts` must be a non-empty 1-D array of times, got shape {ts.shape}."
        )
    if not jnp.issubdtype(ts.dtype, jnp.floating):
        ts = ts.astype(t1.dtype)
    if is_concrete(ts) and is_concrete(t1):
        arr = np.asarray(ts)
        if arr[0] != 0:
            raise ValueError(
                f"`ts` must start at 0 (the initial save), got ts[0] = {arr[0]}."
            )
        if np.any(np.diff(arr) < 0):
            raise ValueError("`ts` must be non-decreasing.")
        if arr[-1] > float(t1):
            raise ValueError(
                f"`ts` must lie in [0, t1 = {float(t1)}], got ts[-1] = {arr[-1]}."
            )
        return ts
    bad = (ts[0] != 0) | jnp.any(jnp.diff(ts) < 0) | (ts[-1] > t1)
    return eqx.error_if(
        ts, bad, "`ts` must be non-decreasing, start at 0 and end ≤ t1."
    )


def _failure_message(traj: Trajectory, t1, rtol, atol, max_steps, solver) -> str:
    return (
        f"gradient flow stopped at t = {float(traj.stop_time):.6g} of t1 = "
        f"{float(t1):.6g}: {RESULTS[traj.result]} Options: raise `max_steps` (now "
        f"{max_steps}), loosening `rtol`/`atol` (now {float(rtol):.3g}/"
        f"{float(atol):.3g}), or a stiff solver such as `diffrax.Kvaerno5()` "
        f"(now {type(solver).__name__}). The partial trajectory is on `err.trajectory`."
    )


_DEFAULT_ADJOINT = diffrax.RecursiveCheckpointAdjoint()
_ADJOINTS = (
    diffrax.RecursiveCheckpointAdjoint,
    diffrax.BacksolveAdjoint,
    diffrax.ForwardMode,
    diffrax.DirectAdjoint,
)


def _in_forward_mode(tree) -> bool:
    """True when some leaf is being differentiated by `jax.jvp`/`jax.jacfwd`
    (a JVP tracer; reverse mode traces with linearize tracers instead)."""
    return any(
        isinstance(leaf, jax.interpreters.ad.JVPTracer)
        for leaf in jax.tree.leaves(tree)
    )


def choose_adjoint(adjoint, inputs, *, stop_when, dense):
    """The Diffrax adjoint for a solve (see `gradient_flow`): None picks
    `ForwardMode()` under forward-mode differentiation of `inputs`, else
    `RecursiveCheckpointAdjoint()`."""
    if adjoint is None:
        return diffrax.ForwardMode() if _in_forward_mode(inputs) else _DEFAULT_ADJOINT
    if not isinstance(adjoint, _ADJOINTS):
        raise TypeError(
            "`adjoint` must be None or one of diffrax.RecursiveCheckpointAdjoint(), "
            "diffrax.BacksolveAdjoint(), diffrax.ForwardMode() or "
            f"diffrax.DirectAdjoint(); got {type(adjoint).__name__}."
        )
    if isinstance(adjoint, diffrax.BacksolveAdjoint) and (
        stop_when is not None or dense
    ):
        raise ValueError(
            "`adjoint=diffrax.BacksolveAdjoint()` supports neither `stop_when` "
            "(Diffrax events) nor `dense=True`; use the default "
            "RecursiveCheckpointAdjoint()."
        )
    return adjoint


def _evaluations(solver, num_steps):
    """Vector-field (gradient) evaluations of an explicit Runge–Kutta solve: s per
    attempted step, or s − 1 plus one initial evaluation for FSAL tableaus
    (checked against a runtime counter in the tests). −1 for other solvers,
    whose count depends on their nonlinear solves."""
    tableau = getattr(solver, "tableau", None)
    if not isinstance(tableau, diffrax.ButcherTableau) or tableau.implicit:
        return jnp.full_like(num_steps, -1)
    if tableau.fsal:
        return (tableau.num_stages - 1) * num_steps + 1
    return tableau.num_stages * num_steps


def _coefficient(name, value):
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"`{name}` must be a number ≥ 0, got {value!r}.")
    return float(value)


def integrate(
    loss,
    model,
    *,
    t1,
    ts,
    solver,
    rtol,
    atol,
    max_steps,
    dt0,
    rates,
    stop_when,
    adjoint,
    throw,
    progress,
    lr=None,
    make_field=_plain_field,
    dense=False,
    pcoeff=0.3,
    icoeff=0.3,
) -> Trajectory:
    """Validate the shared arguments and solve dθ/dt = make_field(loss, static,
    rates, lr)(θ) with Diffrax (the engine of `gradient_flow` and
    `modified_flow`)."""
    loss = check_loss(loss)
    t1 = positive_scalar("t1", t1)
    params, static = split_model(model)
    dtype = jnp.result_type(*jax.tree.leaves(params))
    t1 = t1.astype(dtype)
    ts = _check_ts(ts, t1).astype(dtype)
    # times and tolerances in the parameters' dtype: a float32 model under x64
    # would otherwise mix float64 into Diffrax's step-size controller state
    rtol = positive_scalar("rtol", rtol).astype(dtype)
    atol = positive_scalar("atol", atol).astype(dtype)
    max_steps = positive_int("max_steps", max_steps)
    if dt0 is not None:
        dt0 = positive_scalar("dt0", dt0).astype(dtype)
    rates = check_rates(rates, model)
    stop_when = check_stop_condition(stop_when)
    solver = diffrax.Tsit5() if solver is None else solver
    if not isinstance(solver, diffrax.AbstractSolver):
        raise TypeError(
            f"`solver` must be a diffrax solver, got {type(solver).__name__}."
        )
    adjoint = choose_adjoint(
        adjoint, (params, loss, rates, lr, t1), stop_when=stop_when, dense=dense
    )
    controller = (_coefficient("pcoeff", pcoeff), _coefficient("icoeff", icoeff))
    config = (solver, max_steps, adjoint, bool(progress), make_field, bool(dense))
    traj = _solve(
        loss,
        params,
        static,
        t1,
        ts,
        rates,
        stop_when,
        rtol,
        atol,
        dt0,
        lr,
        controller,
        config,
    )
    if throw:
        traj = _throw_if_failed(traj, t1, rtol, atol, max_steps, solver)
    return traj


def gradient_flow(
    loss,
    model,
    *,
    t1,
    ts=None,
    solver=None,
    rtol=1e-8,
    atol=1e-10,
    max_steps: int = 100_000,
    dt0=None,
    rates=None,
    stop_when=None,
    adjoint=None,
    throw: bool = False,
    progress: bool = False,
    dense: bool = False,
    pcoeff: float = 0.3,
    icoeff: float = 0.3,
) -> Trajectory:
    r"""The exact gradient flow, solved by `diffrax.diffeqsolve` with adaptive steps.

    $$\frac{d\theta}{dt} = -P \odot \nabla L(\theta),\qquad \theta(0) = \theta_0,$$

    integrated to the stated tolerance (PID step-size control, `rtol`/`atol`) —
    never approximated by small gradient steps. Gradient descent with step η is
    this flow's explicit Euler method, on the same clock t = kη.

    **Arguments:**

    - `loss`: model → scalar, e.g. `problem.loss` (its data are traced).
    - `model`: the initial model.
    - `t1`: final time > 0 (traced).
    - `ts`: save times, non-decreasing, starting at 0 and ≤ t1, e.g. a gradient
      descent trajectory's `ts`. Default: 0 and t1.
    - `solver`: any Diffrax solver with an error estimate (default `Tsit5()`;
      `Dopri8()` for tight tolerances, `Kvaerno5()` when stiff).
    - `rtol`, `atol`: tolerances of the `PIDController` (traced).
    - `pcoeff`, `icoeff`: its PI coefficients. The default 0.3/0.3 is one of
      Diffrax's suggestions for mildly stiff problems: long gradient flows are
      stability-limited (the step hovers near 2/λ_max for explicit solvers), where
      the plain I controller (0/1) rejects many steps (measured: 23% vs 5% on the
      plateau benchmark in `benchmarks/bench_core.py`).
    - `max_steps`: cap on solver steps (static).
    - `dt0`: initial step (default: chosen by Diffrax).
    - `rates`: P, as for `gradient_descent`.
    - `stop_when`: a stop condition (`LossBelow`, `GradNormBelow`) checked after
      every step as a `diffrax.Event`; the solve ends with `event_occurred`.
    - `adjoint`: how the solve is differentiated. Default (None):
      `diffrax.RecursiveCheckpointAdjoint()` for reverse mode (`jax.grad`,
      `jax.jacrev`), switched to `diffrax.ForwardMode()` automatically when the
      call itself is under `jax.jvp`/`jax.jacfwd` (inside your own `jax.jit`,
      pass `ForwardMode()` explicitly). Which to use:

      * `RecursiveCheckpointAdjoint()` (default): the exact derivative of the
        numerical solution ("discretise, then differentiate"), with binomial
        (treeverse) checkpointing, so memory is O(log N) states for N solver
        steps at the price of O(log N) recomputation; the best choice for
        gradients of a scalar w.r.t. many inputs. Its accuracy is that of the
        forward solve (the derivative of the solver's map, not of the exact
        flow): measured on a quadratic, see the README.
      * `diffrax.BacksolveAdjoint()`: the continuous adjoint, solved backwards
        in time; O(1) memory, but the gradient is only as accurate as the
        backward solve (it re-integrates θ backwards, which is unstable for a
        contracting flow) and it supports neither `stop_when` nor `dense`.
      * `diffrax.ForwardMode()`: forward-mode (`jax.jvp`/`jax.jacfwd`) through
        the solver's steps; cost ∝ the number of input directions, memory
        O(1); right for a few hyperparameters (α, η, ρ) and many outputs.
        Reverse mode is not supported by it.
    - `throw`: raise `SolverError` on solver failure (otherwise the status is on
      the result).
    - `progress`: Diffrax's tqdm progress meter.
    - `dense`: also keep Diffrax's dense interpolation, so `traj.at(t)` and
      `compare` can evaluate the flow at any time in [0, stop_time].

    **Returns:** a `Trajectory` saved at `ts`. On failure (e.g. `max_steps`
    reached) it holds everything up to the failure time `stop_time`; later saves
    are inf and `result` carries Diffrax's code.
    """
    return integrate(
        loss,
        model,
        t1=t1,
        ts=ts,
        solver=solver,
        rtol=rtol,
        atol=atol,
        max_steps=max_steps,
        dt0=dt0,
        rates=rates,
        stop_when=stop_when,
        adjoint=adjoint,
        throw=throw,
        progress=progress,
        dense=dense,
        pcoeff=pcoeff,
        icoeff=icoeff,
    )


def _throw_if_failed(traj, t1, rtol, atol, max_steps, solver):
    failed = ~traj.successful
    if is_concrete(traj.loss) and jnp.ndim(traj.stop_time) == 0:
        if bool(failed):
            raise SolverError(
                _failure_message(traj, t1, rtol, atol, max_steps, solver), traj
            )
        return traj
    checked = eqx.error_if(
        traj.loss,
        failed,
        "gradient flow failed; raise max_steps, loosen rtol/atol, or try a stiff "
        "solver such as diffrax.Kvaerno5().",
    )
    return eqx.tree_at(lambda t: t.loss, traj, checked)
