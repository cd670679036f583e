import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .._checks import positive_int
from ..models import model_method
from ..models._protocol import class_path
from ._check import _perturb
from ._flat import as_vector, flatten


@dataclasses.dataclass(frozen=True)
class LawCount:
    """Result of `count_conservation_laws`.

    - `dim`: D, the number of trainable parameters.
    - `lie_rank`: dim Lie(W_φ)(θ) at a generic θ.
    - `laws`: D − lie_rank, the number of independent conservation laws valid for
      every data set and loss.
    - `levels`: the rank after each bracket level (level 0: span of the ∇φᵢ).
    - `known_rank`: rank of the Jacobian of the known invariants at θ (or None).
    - `complete`: whether the known invariants account for all the laws.
    """

    dim: int
    lie_rank: int
    laws: int
    levels: tuple
    known_rank: int | None
    complete: bool | None


def default_reparametrisation(model):
    """φ with f(θ, x) = f̃(φ(θ), x): the model's `reparametrisation()` (the model
    protocol, `flowgap.models.PROTOCOL`). flowgap's: β for diagonal nets, W_N⋯W₁
    for deep linear nets, W₂W₁ for a linear `TwoLayer`, and the per-unit rank-one
    matrices W₂[:, i]W₁[i] for ReLU/leaky ReLU (Marcotte, Gribonval & Peyré 2023).

    **Returns:** φ as a function model → array.
    """
    phi = model_method(model, "reparametrisation")
    if phi is None or phi() is None:
        raise ValueError(
            f"no standard reparametrisation φ for `model` ({class_path(model)}): "
            "its class defines no `reparametrisation()`, or it returned None (e.g. a "
            "tanh TwoLayer); pass `reparametrisation=` (a function model -> array)."
        )
    return lambda m: model_method(m, "reparametrisation")()


def _right_normed(phi_flat, coefficients):
    """The field θ ↦ [X_{c₀}, [X_{c₁}, … X_{c_k}]](θ) for generator combinations
    X_c = ∇⟨c, φ⟩, with brackets [X, Y] = ∂Y·X − ∂X·Y taken by jvps."""

    def generator(c):
        return jax.grad(lambda t: jnp.vdot(c, phi_flat(t)))

    def bracket(x, y):
        def field(theta):
            return (
                jax.jvp(y, (theta,), (x(theta),))[1]
                - jax.jvp(x, (theta,), (y(theta),))[1]
            )

        return field

    field = generator(coefficients[-1])
    for c in coefficients[-2::-1]:
        field = bracket(generator(c), field)
    return field


def _rank(matrix, rtol) -> int:
    s = np.linalg.svd(np.asarray(matrix), compute_uv=False)
    return (
        int(np.sum(s > rtol * s[0] * max(matrix.shape))) if s.size and s[0] > 0 else 0
    )


def count_conservation_laws(
    model,
    *,
    key,
    reparametrisation=None,
    known=None,
    max_levels: int = 6,
    rtol: float = 1e-10,
) -> LawCount:
    r"""Number of independent conservation laws of the flow, valid for every data
    set and loss (Marcotte, Gribonval & Peyré 2023; docs: theory/invariants).

    Write the model as f(φ(θ), x). With W_φ = span{∇φᵢ}, the count is
    D − dim Lie(W_φ)(θ) at a generic θ (a random point θ₀ ⊙ exp(0.3ε)).

    Lie(W_φ) is spanned by right-normed brackets [X₀, [X₁, … X_k]] of generators,
    and each is multilinear in the generators. So level k (brackets of k + 1
    generators) is probed with D + 8 brackets of random combinations
    X_c = ∇⟨c, φ⟩, c ~ N(0, I): their values at θ span the level's values there
    with probability one. Brackets are nested jvps (no symbolic algebra, no
    Hessian). Levels are added until the rank at θ stops growing (or reaches D).

    **Arguments:**

    - `model`: the model (its structure and a point to perturb).
    - `key`: PRNG key for the generic point and the random combinations.
    - `reparametrisation`: φ as a function model → array (default:
      `default_reparametrisation(model)`).
    - `known`: optional dict name → (model → array) of known invariants (e.g.
      `flowgap.invariants.known(model)`), whose Jacobian rank at θ is compared.
    - `max_levels`, `rtol`: bracket depth cap and singular-value threshold.

    **Returns:** a `LawCount`.
    """
    max_levels = positive_int("max_levels", max_levels)
    phi = (
        default_reparametrisation(model)
        if reparametrisation is None
        else reparametrisation
    )
    point_key, combo_key = jax.random.split(key)
    theta, rebuild = flatten(_perturb(model, point_key, 0.3))
    dim = int(theta.shape[0])

    def phi_flat(t):
        return ravel_pytree(phi(rebuild(t)))[0]

    levels = _lie_levels(phi_flat, theta, combo_key, max_levels, rtol)
    lie_rank = levels[-1]
    known_rank = complete = None
    if known:
        known_rank = _known_rank(known, rebuild, theta, rtol)
        complete = known_rank == dim - lie_rank
    return LawCount(dim, lie_rank, dim - lie_rank, tuple(levels), known_rank, complete)


def _lie_levels(phi_flat, theta, key, max_levels: int, rtol: float) -> list[int]:
    """Rank at θ of the values of all brackets up to each level (level k: D + 8
    random brackets of k + 1 generators), until the rank stops growing or
    reaches D."""
    dim = int(theta.shape[0])
    outputs = int(jax.eval_shape(phi_flat, theta).shape[0])
    values, levels = [], []
    for level, k in enumerate(jax.random.split(key, max_levels + 1)):
        samples = dim + 8
        coefficients = jax.random.normal(k, (samples, level + 1, outputs), theta.dtype)
        evaluate = jax.jit(jax.vmap(lambda c: _right_normed(phi_flat, c)(theta)))
        values.append(np.asarray(evaluate(coefficients)))
        levels.append(_rank(np.concatenate(values), rtol))
        if levels[-1] == dim or (len(levels) > 1 and levels[-1] == levels[-2]):
            break
    return levels


def _known_rank(known: dict, rebuild, theta, rtol: float) -> int:
    """Rank at θ of the stacked Jacobians of the known invariants."""
    jac = np.concatenate(
        [
            np.asarray(jax.jacrev(lambda t, q=q: as_vector(q, rebuild(t)))(theta))
            for q in known.values()
        ]
    )
    return _rank(jac, rtol)
