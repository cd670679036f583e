import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import positive_int, positive_scalar
from .._precision import warn_if_unresolved
from ._flat import as_vector, flat_rates, flatten


@dataclasses.dataclass(frozen=True)
class ConservationCheck:
    """Result of `check_conserved`.

    - `worst`: max over points and components of |⟨∇Qᵢ, P∇L⟩| / (‖∇Qᵢ‖‖P∇L‖).
    - `per_point`: the worst value at each point.
    - `tol`, `passed`: the verdict `worst ≤ tol`.
    """

    worst: float
    per_point: np.ndarray
    tol: float
    passed: bool


def _perturb(model, key, spread):
    """θ ⊙ exp(spread·ε): sign-preserving, so laws that need u > 0 stay defined."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    leaves = [
        x * jnp.exp(spread * jax.random.normal(k, x.shape, x.dtype))
        for x, k in zip(leaves, keys)
    ]
    return eqx.combine(jax.tree.unflatten(treedef, leaves), static)


def _alignments(q, loss, model, rates, thetas):
    """The worst normalised alignment at each flat point in `thetas`."""
    _, rebuild = flatten(model)
    p = flat_rates(rates, model)

    def one(theta):
        jac = jax.jacrev(lambda t: as_vector(q, rebuild(t)))(theta)
        flow = p * jax.grad(lambda t: loss(rebuild(t)))(theta)
        norms = jnp.linalg.norm(jac, axis=1) * jnp.linalg.norm(flow)
        # Components with ∇Qᵢ = 0 here (e.g. a projector's zero rows) say nothing.
        live = norms > 1e-300 + 1e-12 * jnp.max(norms)
        cosines = jnp.abs(jac @ flow) / jnp.where(live, norms, 1.0)
        return jnp.max(jnp.where(live, cosines, 0.0))

    return np.asarray(jax.jit(jax.vmap(one))(thetas))


def check_conserved(
    q,
    loss,
    model,
    *,
    key,
    samples: int = 8,
    spread: float = 0.5,
    trajectory=None,
    rates=None,
    tol: float = 1e-8,
) -> ConservationCheck:
    r"""Is Q conserved by the flow dθ/dt = −P∇L? Q is, iff ⟨∇Q, P∇L⟩ = 0 wherever
    the flow goes. This measures the normalised alignment
    |⟨∇Qᵢ, P∇L⟩| / (‖∇Qᵢ‖‖P∇L‖) for every component Qᵢ, at `samples` random
    points θ ⊙ exp(spread·ε) around `model` and (optionally) at every finite save
    of `trajectory`.

    A true law gives round-off (~1e-15 in float64); a false one gives O(1) values.
    The default `tol` = 1e-8 separates the two with margin on both sides.

    **Returns:** a `ConservationCheck`.
    """
    samples = positive_int("samples", samples)
    spread = float(positive_scalar("spread", spread))
    if not callable(q):
        raise TypeError("`q` must be a callable model -> array.")
    points = [_perturb(model, k, spread) for k in jax.random.split(key, samples)]
    if trajectory is not None:
        finite = np.isfinite(np.asarray(trajectory.loss))
        points += [trajectory[i] for i in np.flatnonzero(finite)]
    thetas = jnp.stack([flatten(point)[0] for point in points])
    values = _alignments(q, loss, model, rates, thetas)
    worst = float(values.max())
    return ConservationCheck(worst, values, float(tol), bool(worst <= tol))


def relative_drift(q, trajectory) -> float:
    """max over finite saves of ‖Q(θ(t)) − Q(θ(0))‖_∞ / ‖Q(θ(0))‖_∞ (with a
    `PrecisionWarning` when, in float32, that is within 10 ulps of 1)."""
    finite = np.flatnonzero(np.isfinite(np.asarray(trajectory.loss)))
    values = jnp.stack([as_vector(q, trajectory[i]) for i in finite])
    scale = jnp.maximum(jnp.max(jnp.abs(values[0])), jnp.finfo(values.dtype).tiny)
    drift = float(jnp.max(jnp.abs(values - values[0])) / scale)
    warn_if_unresolved("the relative drift of an invariant", drift, 1.0, values.dtype)
    return drift
