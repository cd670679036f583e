import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import positive_int, positive_scalar
from .._precision import warn_if_unresolved
from ..dynamics._common import split_model
from ._flat import as_vector, flat_rates, flatten, flatten_saves, law_at_saves


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


def _perturb(model, key, spread, trainable=None):
    """θ ⊙ exp(spread·ε) on the trainable arrays (the rest as in `model`):
    sign-preserving, so laws that need u > 0 stay defined."""
    params, static = split_model(model, trainable)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    leaves = [
        x * jnp.exp(spread * jax.random.normal(k, x.shape, x.dtype))
        for x, k in zip(leaves, keys)
    ]
    return eqx.combine(jax.tree.unflatten(treedef, leaves), static)


def _alignments(q, loss, model, rates, thetas, trainable):
    """The worst normalised alignment at each flat point in `thetas`."""
    _, rebuild = flatten(model, trainable)
    p = flat_rates(rates, model, trainable)

    def one(theta):
        jac = jax.jacrev(lambda t: as_vector(q, rebuild(t)))(theta)
        flow = p * jax.grad(lambda t: loss(rebuild(t)))(theta)
        norms = jnp.linalg.norm(jac, axis=1) * jnp.linalg.norm(flow)
        # Components with ∇Qᵢ = 0 here (e.g. a projector's zero rows, or a law of
        # frozen arrays only) say nothing.
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
    trainable=None,
) -> ConservationCheck:
    r"""Is Q conserved by the flow dθ/dt = −P∇L? Q is, iff ⟨∇Q, P∇L⟩ = 0 wherever
    the flow goes. This measures the normalised alignment
    |⟨∇Qᵢ, P∇L⟩| / (‖∇Qᵢ‖‖P∇L‖) for every component Qᵢ, at `samples` random
    points θ ⊙ exp(spread·ε) around `model` and (optionally) at every finite save
    of `trajectory`.

    A true law gives round-off (~1e-15 in float64); a false one gives O(1) values.
    The default `tol` = 1e-8 separates the two with margin on both sides.

    θ is the trainable part of `model` (`trainable`, a filter as in
    `eqx.partition`, as given to the trainers; default every floating-point
    array): the flow moves θ alone, so ∇Q and ∇L are taken in θ and only θ is
    perturbed. A law of frozen arrays only has ∇Q = 0 and is trivially conserved.

    **Returns:** a `ConservationCheck`.
    """
    samples = positive_int("samples", samples)
    spread = float(positive_scalar("spread", spread))
    if not callable(q):
        raise TypeError("`q` must be a callable model -> array.")
    points = [
        _perturb(model, k, spread, trainable) for k in jax.random.split(key, samples)
    ]
    thetas = jnp.stack([flatten(point, trainable)[0] for point in points])
    if trajectory is not None:
        finite = np.isfinite(np.asarray(trajectory.loss))
        saved, _ = flatten_saves(trajectory, trainable)
        thetas = jnp.concatenate([thetas, saved[np.flatnonzero(finite)]])
    values = _alignments(q, loss, model, rates, thetas, trainable)
    worst = float(values.max())
    return ConservationCheck(worst, values, float(tol), bool(worst <= tol))


def relative_drift(q, trajectory) -> float:
    """max over finite saves of ‖Q(θ(t)) − Q(θ(0))‖_∞ / ‖Q(θ(0))‖_∞ (with a
    `PrecisionWarning` when, in float32, that is within 10 ulps of 1)."""
    finite = np.flatnonzero(np.isfinite(np.asarray(trajectory.loss)))
    values = np.asarray(law_at_saves(q, trajectory.models))[finite]
    scale = max(np.max(np.abs(values[0])), np.finfo(values.dtype).tiny)
    drift = float(np.max(np.abs(values - values[0])) / scale)
    warn_if_unresolved("the relative drift of an invariant", drift, 1.0, values.dtype)
    return drift
