r"""wn-robust-bias's discrete runs: gradient descent at a step recomputed from
the local curvature, segment by segment, within a stated budget.

**The step.** Every `segment` steps, at the current iterate θ, the step is

$$\eta = \text{step}\cdot\frac{2}{\lambda_{\max}(P^{1/2}\nabla^2L(\theta)P^{1/2})},$$

`step` times the linear stability bound of GD with rates P at θ (the threshold
of `flowgap.dynamics.check_stability` / `stable_learning_rate`): P = 1 for the
plain net, 1 on the radius and ρ on the direction for the polar nets (their
`rates(ρ)`; the direction then moves by ρη). λ_max comes from `LANCZOS` Lanczos
steps on Hessian-vector products from the previous segment's top Ritz vector
(no Hessian formed). (For the plain net at a balanced point u = v = m·1 with
zero residual it is `learning_rate`'s closed form: `_wn_robust_bias_train`.)

**The safeguard.** Inside a segment the curvature can grow faster than the
step was set for (a depth-3 escape from a small α grows the weights
geometrically). Below the bound, GD lowers L at every step; a segment in which
L rises above its start value (by more than `RISE` and L's round-off:
`rise_bound`), or is not finite, is undone and redone at a quarter of the
step; after an accepted
segment the factor doubles back towards 1. A factor below `2⁻⁴⁰` ends the run
as diverged.

**The budget.** First `steps` accepted steps; a run stops at L < `tol`. Each
run tracks its linear rate q (per-step loss contraction over its last accepted
segment) and the steps it would need at that rate, k + ln(L/tol)/(−ln q). A
run that spends its budget on such a linear tail gets a new one from that
rate: `EXTEND`× the steps it needs, at most `steps_cap` (re-estimated each
time the budget is spent). A run whose rate needs more than `steps_cap` (a
stall, q ≈ 1) stops at its budget, so a stopped run stops costing compute;
its needed steps are its stated reason. The budget is traced: the grid stays
one compiled program, and under `vmap` a point that has stopped only waits.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from .. import dynamics, models
from .._lanczos import lanczos
from .._precision import TOLERANCE_ULPS

#: Lanczos steps per re-estimate of λ_max, from the previous Ritz vector (plus a
#: fixed random part, so a new top direction is found).
LANCZOS = 12

#: What only the discrete runs report (NaN for a flow): `local_descent`.
DISCRETE_ONLY = ("lr_min", "lr_max", "undone", "rate", "steps_needed", "budget")

#: The smallest step factor the safeguard tries before calling the run diverged.
MIN_FACTOR = 2.0**-40

#: A segment in which L rises above (1 + RISE)× its start value is undone (see
#: the module); the margin is far above the loss's round-off (a first step at
#: L = L₀ + 1 ulp must not count as a rise) and far below any real rise.
RISE = 1e-6


def rise_bound(value, start_loss):
    r"""The largest L a segment that started at L = `value` may end at: (1 +
    `RISE`)·L plus the round-off of L itself. L = ‖r‖²/2n with a residual r
    resolved to `TOLERANCE_ULPS`·ε of the targets' size, so L is resolved to
    about ε·√(L·L₀) in absolute terms (L₀ = `start_loss`, the loss at the
    start, of the targets' size at small init): far below RISE·L in float64
    (2e-14·√(L·L₀) against 1e-6·L, at any L above the loss floor), but above it
    in float32 near convergence, where L's round-off would otherwise read as a
    rise and undo every segment."""
    eps = jnp.finfo(jnp.result_type(value)).eps
    return value * (1 + RISE) + TOLERANCE_ULPS * eps * jnp.sqrt(value * start_loss)


#: A spent budget is extended to this multiple of the steps the run needs at its
#: final rate: the rate of a slow tail drifts as its modes mix, and a margin of
#: 25% lets it finish in one extension where the drift is a few percent.
EXTEND = 1.25


def _scaled_loss(loss, model, rates):
    """φ ↦ L(θ + P^½φ) for `model`'s parameters θ, and the size of φ."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    flat, unravel = ravel_pytree(params)
    if rates is None:
        root = jnp.ones_like(flat)
    else:
        full = jax.tree.map(
            lambda r, p: jnp.broadcast_to(r, p.shape),
            eqx.filter(rates, eqx.is_inexact_array),
            params,
        )
        root = jnp.sqrt(ravel_pytree(full)[0])
    return lambda phi: loss(eqx.combine(unravel(flat + root * phi), static)), flat.size


def sharpness(loss, model, rates, start, iters: int = LANCZOS):
    """λ_max(P^½∇²L P^½) at `model` and its Ritz vector, by `iters` Lanczos steps
    (full reorthogonalisation) on Hessian-vector products from `start`: exact
    once `iters` ≥ the parameter count, otherwise a lower bound."""
    scaled, size = _scaled_loss(loss, model, rates)
    grad = jax.grad(scaled)
    zero = jnp.zeros(size, start.dtype)
    values, vectors = lanczos(
        lambda v: jax.jvp(grad, (zero,), (v,))[1], start, min(iters, size)
    )
    return values[-1], vectors[:, -1]


def first_vector(model):
    """Lanczos's first start: a fixed random vector of the parameter size."""
    size = ravel_pytree(eqx.filter(model, eqx.is_inexact_array))[0].size
    dtype = jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))[0].dtype
    return jax.random.normal(jax.random.key(0), (size,), dtype)


def local_learning_rate(loss, model, step, rates=None, start=None, iters=LANCZOS):
    """`step`·2/λ_max(P^½∇²L P^½) at `model` (`sharpness`), and the Ritz vector;
    inf where λ_max ≤ 0 (as `flowgap.dynamics.stable_learning_rate`)."""
    start = first_vector(model) if start is None else start
    top, vector = sharpness(loss, model, rates, start, iters)
    safe = jnp.where(top > 0, top, 1.0)
    return jnp.where(top > 0, 2 * step / safe, jnp.inf), vector


class _State(eqx.Module):
    model: eqx.Module
    vector: jax.Array  # last top Ritz vector (Lanczos's next start)
    steps: jax.Array  # accepted steps
    budget: jax.Array  # accepted steps allowed (extended on a linear tail)
    time: jax.Array  # Σ η over accepted steps
    factor: jax.Array  # safeguard factor on the local step
    lr_min: jax.Array
    lr_max: jax.Array
    undone: jax.Array  # segments undone by the safeguard
    rate: jax.Array  # per-step loss contraction over the last accepted segment
    loss: jax.Array
    done: jax.Array  # 0 running, 1 converged, 2 diverged


def _where(pred, a, b):
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def _descend(loss, model, lr, *, rates, projection, tol, bound, size: int, limit):
    r"""`size` GD steps θ ← proj(θ − η P∇L(θ)) from `model` (at most `limit`,
    traced: the budget left), each guarded as
    `flowgap.dynamics.gradient_descent` guards it: the run stops at θ_k once
    L(θ_k) < `tol` (converged) or L(θ_k) is above `bound` or not finite (bad).
    A plain scan, not `gradient_descent`: the same steps, for a third of its
    compile time (the step's cost is negligible here, its compilation is not).

    **Returns:** (θ at the stop, steps taken, L there, converged, bad)."""

    def step(carry, _):
        model, taken, stopped, converged, bad = carry
        value, grads = eqx.filter_value_and_grad(loss)(model)
        new = eqx.apply_updates(
            model, jax.tree.map(lambda g: -lr * g, _rates(grads, rates))
        )
        new = new if projection is None else projection(new)
        hit, fail = value < tol, ~(value <= bound)
        move = ~stopped & ~hit & ~fail & (taken < limit)
        carry = (
            _where(move, new, model),
            taken + move,
            stopped | hit | fail,
            converged | (~stopped & hit),
            bad | (~stopped & fail & ~hit),
        )
        return carry, None

    false = jnp.zeros((), bool)
    start = (model, jnp.zeros((), jnp.int32), false, false, false)
    (model, taken, _, converged, bad), _ = lax.scan(step, start, None, length=size)
    value = loss(model)
    return model, taken, value, converged, bad | ~(value <= bound)


def _rates(grads, rates):
    """P ⊙ ∇L (the rates' tree matches the model's)."""
    if rates is None:
        return grads
    return jax.tree.map(
        lambda g, p: g * p, grads, eqx.filter(rates, eqx.is_inexact_array)
    )


def _segment(loss, state, *, rates, projection, s, start_loss):
    """One segment of `segment` steps from `state` at the local step; undone
    (at a quarter of the step next time) if L rises in it or is not finite."""
    start = state.vector + 0.1 * first_vector(state.model) / state.vector.size**0.5
    lr, vector = local_learning_rate(loss, state.model, s["step"], rates, start)
    lr = state.factor * jnp.where(jnp.isfinite(lr), lr, state.lr_max)
    model, taken, value, converged, bad = _descend(
        loss,
        state.model,
        lr,
        rates=rates,
        projection=projection,
        tol=s["tol"],
        bound=rise_bound(state.loss, start_loss),
        size=min(s["segment"], s["steps"]),
        limit=state.budget - state.steps,
    )
    rate = (value / state.loss) ** (1 / jnp.maximum(taken, 1))
    accepted = _State(
        model=model,
        vector=vector,
        steps=state.steps + taken,
        budget=state.budget,
        time=state.time + taken * lr,
        factor=jnp.minimum(2 * state.factor, 1.0),
        lr_min=jnp.minimum(state.lr_min, lr),
        lr_max=jnp.maximum(state.lr_max, lr),
        undone=state.undone,
        rate=jnp.where(taken > 0, rate, state.rate),
        loss=value,
        done=jnp.where(converged, 1, 0),
    )
    factor = state.factor / 4
    undone = eqx.tree_at(
        lambda t: (t.factor, t.undone, t.done),
        state,
        (factor, state.undone + 1, jnp.where(factor < MIN_FACTOR, 2, 0)),
    )
    return _where(bad, undone, accepted)


def local_descent(loss, model, *, rates, projection, s):
    """GD from `model` at the local step (see the module), to L < `tol` within
    `steps` accepted steps, extended on a linear tail up to `steps_cap`.

    **Returns:** (final model, dict of `final_loss`, `steps` k, `time` (Σ η),
    `done` (1 converged, 2 diverged, 0 budget used), `lr_min`, `lr_max` (the
    smallest and largest step taken; inf and 0 if none was), `undone`
    (segments undone), `rate` (final per-step contraction q),
    `steps_needed` (k + ln(L/tol)/(−ln q); inf where q ≥ 1) and `budget` (the
    steps it was allowed in the end)).
    """
    loss0 = loss(model)
    zero = jnp.zeros((), loss0.dtype)
    state = _State(
        model=model,
        vector=first_vector(model),
        steps=jnp.zeros((), jnp.int32),
        budget=jnp.asarray(s["steps"], jnp.int32),
        time=zero,
        factor=jnp.ones_like(zero),
        lr_min=jnp.full_like(zero, jnp.inf),
        lr_max=zero,
        undone=jnp.zeros((), jnp.int32),
        rate=jnp.ones_like(zero),
        loss=loss0,
        done=jnp.where(loss0 < s["tol"], 1, 0),
    )

    def running(state):
        return (state.done == 0) & (state.steps < state.budget)

    def body(state):
        new = _extended(
            _segment(
                loss, state, rates=rates, projection=projection, s=s, start_loss=loss0
            ),
            s,
        )
        return _where(running(state), new, state)

    state = lax.while_loop(running, body, state)
    return state.model, _report(state, s)


def _needed(state, s):
    """k + ln(L/tol)/(−ln q): the steps to L < `tol` at the final rate q (k once
    converged; inf where q ≥ 1)."""
    q = state.rate
    remaining = jnp.log(state.loss / s["tol"]) / -jnp.log(jnp.where(q < 1, q, 0.5))
    return jnp.where(
        state.done == 1,
        state.steps.astype(q.dtype),
        jnp.where(q < 1, state.steps + jnp.maximum(remaining, 0), jnp.inf),
    )


def _extended(state, s):
    """A spent budget extended to `EXTEND`× the steps needed at the final rate,
    at most `steps_cap`; unchanged unless the run needs no more than the cap."""
    needed = _needed(state, s)
    spent = (state.done == 0) & (state.steps >= state.budget)
    extend = spent & (needed <= s["steps_cap"])
    wanted = jnp.minimum(
        jnp.ceil(EXTEND * jnp.where(extend, needed, 0)), s["steps_cap"]
    )
    budget = jnp.where(
        extend, jnp.maximum(wanted.astype(jnp.int32), state.budget), state.budget
    )
    return eqx.tree_at(lambda t: t.budget, state, budget)


def _report(state, s) -> dict:
    return dict(
        final_loss=state.loss,
        steps=state.steps,
        time=state.time,
        done=state.done,
        lr_min=state.lr_min,
        lr_max=state.lr_max,
        undone=state.undone,
        rate=state.rate,
        steps_needed=_needed(state, s),
        budget=state.budget,
    )


def run_of(report) -> dict:
    """`local_descent`'s report as a run of `train`: done 1 → converged,
    2 → diverged, 0 → its budget used (`max_steps_reached`)."""
    done = report["done"]
    results = dynamics.RESULTS
    result = results.where(done == 1, results.event_occurred, results.max_steps_reached)
    result = results.where(done == 2, results.diverged, result)
    dtype = report["time"].dtype
    return dict(
        final_loss=report["final_loss"],
        time=report["time"],
        steps=report["steps"],
        status=dynamics.status_code(result),
        successful=done != 2,
        converged=done == 1,
        **{k: jnp.asarray(report[k], dtype) for k in DISCRETE_ONLY},
    )


def projection(method, projected):
    """rPGD's renormalisation, none (GD, SK), or chosen by a traced flag."""
    if projected is None:
        return models.PolarDiagonalNet.normalised if method == "rpgd" else None

    def project(model):
        normal = model.normalised()
        return _where(projected, normal, model)

    return project
