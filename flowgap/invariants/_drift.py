import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import positive_scalar
from .._precision import spacing_rtol, warn_if_unresolved
from ._flat import as_vector, flat_rates, flatten_saves
from ._symmetry import RescaleSymmetry, ScaleSymmetry, _blocks


@dataclasses.dataclass(frozen=True)
class DriftReport:
    """Drift of an invariant Q along a gradient-descent trajectory (one row per
    step, from step 0). Arrays have shape (steps + 1, components).

    - `measured`: Q(θ_k) − Q(θ_0).
    - `taylor`: Σ_{j<k} [∇Q(θ_j)·δ_j + ½ δ_jᵀ∇²Q(θ_j)δ_j] with δ_j = θ_{j+1} − θ_j
      the actual step — exact for quadratic Q, whatever the optimizer.
    - `leading`: Σ_{j<k} (η²/2) g_jᵀ∇²Q(θ_j) g_j with g_j = P∇L(θ_j), the
      leading-order drift of plain preconditioned GD when ⟨∇Q, P∇L⟩ = 0.
    """

    ts: np.ndarray
    measured: np.ndarray
    taylor: np.ndarray
    leading: np.ndarray

    def __repr__(self) -> str:
        """A summary; the arrays are the fields."""
        measured = np.abs(np.asarray(self.measured, dtype=float))
        size = f"{measured.shape[0]} saves, Q with {_components(self)} component(s)"
        if measured.size == 0:
            return f"DriftReport({size})"
        k = int(np.unravel_index(np.argmax(measured), measured.shape)[0])
        leading = float(np.max(np.abs(self.leading)))
        taylor = float(np.max(np.abs(np.asarray(self.measured) - self.taylor)))
        top, bottom = np.max(measured[-1]), np.max(np.abs(self.leading[-1]))
        end = f"{top / bottom:.4f}" if bottom > 0 else "—"
        return (
            f"DriftReport({size}, t = {self.ts[0]:.4g} … {self.ts[-1]:.4g}:\n"
            f"  max |measured| = {measured.max():.3e} at t = {self.ts[k]:.4g}\n"
            f"  max |leading|  = {leading:.3e}; measured/leading at the end "
            f"{end}\n"
            f"  max |measured − taylor| = {taylor:.3e}\n"
            "  fields: ts, measured, taylor, leading)"
        )


def _components(report: DriftReport) -> int:
    shape = np.shape(report.measured)
    return int(np.prod(shape[1:])) if len(shape) > 1 else 1


def _every_step(trajectory, lr):
    ts = np.asarray(trajectory.ts)
    finite = np.isfinite(np.asarray(trajectory.loss))
    last = len(ts) if finite.all() else int(np.argmin(finite))
    if last < 2 or not np.allclose(np.diff(ts[:last]), lr, rtol=spacing_rtol(ts.dtype)):
        raise ValueError(
            "`trajectory` must be a gradient_descent run saved at every step "
            "(save_every=1) with the given `lr`."
        )
    return last


def _second_derivative(qv, theta, direction):
    """D²Q(θ)[v, v] = d²/ds² Q(θ + s v) at s = 0, by nested jvps (no Hessian)."""
    first = lambda t: jax.jvp(qv, (t,), (direction,))[1]  # noqa: E731
    return jax.jvp(first, (theta,), (direction,))[1]


def gd_drift(q, loss, trajectory, *, lr, rates=None, trainable=None) -> DriftReport:
    r"""Measured and predicted drift of Q under gradient descent (docs:
    theory/invariants).

    For a quadratic Q the one-step change is exactly
    Q(θ + δ) − Q(θ) = ∇Q·δ + ½δᵀ∇²Qδ, and for plain GD with ⟨∇Q, P∇L⟩ = 0 it is
    (η²/2) gᵀ∇²Q g with g = P∇L; for other Q the latter is the leading order, so
    measured/leading → 1 as η → 0.

    **Arguments:** `q` (model → array), `loss`, a `trajectory` from
    `gradient_descent(..., save_every=1)`, its `lr`, its `rates` and its
    `trainable` filter (θ, ∇Q and ∇²Q are taken in the trainable arrays).
    """
    lr = float(positive_scalar("lr", lr))
    last = _every_step(trajectory, lr)
    values, taylor, leading = _drift_terms(
        q, loss, trajectory.models, rates, jnp.asarray(lr), trainable, last
    )
    values, taylor, leading = (np.asarray(x) for x in (values, taylor, leading))
    warn_if_unresolved(
        "the GD drift of an invariant",
        np.max(np.abs(values - values[0])),
        np.max(np.abs(values[0])),
        values.dtype,
    )
    zero = np.zeros_like(values[:1])
    return DriftReport(
        ts=np.asarray(trajectory.ts[:last]),
        measured=values - values[0],
        taylor=np.concatenate([zero, np.cumsum(taylor, axis=0)]),
        leading=np.concatenate([zero, np.cumsum(leading, axis=0)]),
    )


@eqx.filter_jit
def _drift_terms(q, loss, models, rates, lr, trainable, last: int):
    """(Q(θ_k), the exact one-step Taylor terms, the leading-order terms) over the
    first `last` saves, as one compiled program: done op by op, the flattening,
    differences and sums each compiled a program of their own. (`lr` is traced:
    one program serves every rate of a ladder whose runs have one length.)"""
    thetas, rebuild = flatten_saves(models, trainable)
    thetas = thetas[:last]
    lr = lr.astype(thetas.dtype)  # as a Python float would be: rounded to θ's
    qv = lambda t: as_vector(q, rebuild(t))  # noqa: E731
    p = flat_rates(rates, rebuild(thetas[0]), trainable)

    def one(theta, delta):
        grad_q = jax.jacrev(qv)(theta)
        g = p * jax.grad(lambda t: loss(rebuild(t)))(theta)
        taylor = grad_q @ delta + 0.5 * _second_derivative(qv, theta, delta)
        leading = 0.5 * _second_derivative(qv, theta, lr * g)
        return taylor, leading

    taylor, leading = jax.vmap(one)(thetas[:-1], thetas[1:] - thetas[:-1])
    return jax.vmap(qv)(thetas), taylor, leading


def symmetry_step_identity(symmetry, loss, trajectory, *, lr, weight_decay=0.0) -> dict:
    r"""The exact one-step identity of a scale or rescale law under plain GD with
    decoupled weight decay λ (θ ← θ − η(∇L + λθ), e.g.
    `optax.chain(optax.add_decayed_weights(λ), optax.sgd(η))`):

    $$Q_{k+1} = (1-\eta\lambda)^2 Q_k + \eta^2\big(\lVert g_{A_1}\rVert^2
    - \lVert g_{A_2}\rVert^2\big),$$

    (scale law: no A₂ term), because ⟨θ_A, g_A⟩ terms cancel by the symmetry.

    **Returns:** dict with `measured` Q_{k+1}, `predicted` (the right-hand side at
    θ_k) and `max_relative_error`.
    """
    lr = float(positive_scalar("lr", lr))
    decay = float(weight_decay)
    if decay < 0:
        raise ValueError(f"`weight_decay` must be ≥ 0, got {decay}.")
    if isinstance(symmetry, ScaleSymmetry):
        blocks = (symmetry.where, None)
    elif isinstance(symmetry, RescaleSymmetry):
        blocks = (symmetry.where_in, symmetry.where_out)
    else:
        raise ValueError(
            "`symmetry` must be a ScaleSymmetry or RescaleSymmetry for the exact "
            f"identity, got {type(symmetry).__name__}."
        )
    last = _every_step(trajectory, lr)

    def grad_sq(model, where):
        if where is None:
            return 0.0
        grads = eqx.filter_grad(loss)(model)
        return sum(jnp.sum(x**2) for x in _blocks(where, grads))

    q = np.array([float(symmetry.invariant(trajectory[i])) for i in range(last)])
    drive = np.array(
        [
            float(grad_sq(trajectory[i], blocks[0]) - grad_sq(trajectory[i], blocks[1]))
            for i in range(last - 1)
        ]
    )
    predicted = (1 - lr * decay) ** 2 * q[:-1] + lr**2 * drive
    scale = max(np.max(np.abs(q)), np.finfo(float).tiny)
    return dict(
        measured=q[1:],
        predicted=predicted,
        max_relative_error=float(np.max(np.abs(q[1:] - predicted)) / scale),
    )
