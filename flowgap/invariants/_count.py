import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .._checks import positive_int
from ..models import POSITIVELY_HOMOGENEOUS, DeepLinear, DiagonalNet, TwoLayer
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
    """φ with f(θ, x) = f̃(φ(θ), x) for the flowgap models that have a standard one:
    β for diagonal nets, W_N⋯W₁ for deep linear nets, W₂W₁ for a linear
    `TwoLayer`, and the per-unit rank-one matrices W₂[:, i]W₁[i] for ReLU/leaky ReLU
    (Marcotte, Gribonval & Peyré 2023)."""
    if isinstance(model, DiagonalNet):
        return lambda m: m.end_to_end()
    if isinstance(model, DeepLinear):
        return lambda m: m.end_to_end().ravel()
    if isinstance(model, TwoLayer) and model.activation == "linear":
        return lambda m: (m.w2 @ m.w1).ravel()
    if isinstance(model, TwoLayer) and model.activation in POSITIVELY_HOMOGENEOUS:
        return lambda m: jnp.einsum("ki,ij->ikj", m.w2, m.w1).ravel()
    raise ValueError(
        f"no standard reparametrisation φ for `model` of type {type(model).__name__}"
        f"{' with ' + repr(model.activation) if hasattr(model, 'activation') else ''}; "
        "pass `reparametrisation=` (a function model -> array)."
    )


def _bracket(f_fields, g_fields, pairs):
    """θ ↦ the brackets [Xᵢ, Yⱼ](θ) = ∂Yⱼ(θ)Xᵢ(θ) − ∂Xᵢ(θ)Yⱼ(θ) for (i, j) in
    `pairs`, from jvps only: one jvp of Y per distinct i, one of X per distinct j."""
    pairs = np.asarray(pairs)
    left, at_left = np.unique(pairs[:, 0], return_inverse=True)
    right, at_right = np.unique(pairs[:, 1], return_inverse=True)

    def fields(theta):
        f, g = f_fields(theta), g_fields(theta)
        dg_f = jax.vmap(lambda v: jax.jvp(g_fields, (theta,), (v,))[1])(f[left])
        df_g = jax.vmap(lambda v: jax.jvp(f_fields, (theta,), (v,))[1])(g[right])
        return dg_f[at_left, pairs[:, 1]] - df_g[at_right, pairs[:, 0]]

    return fields


def _all_pairs(a: int, b: int) -> np.ndarray:
    return np.stack(np.meshgrid(np.arange(a), np.arange(b), indexing="ij"), -1).reshape(-1, 2)


def _rank(matrix, rtol) -> int:
    s = np.linalg.svd(np.asarray(matrix), compute_uv=False)
    return int(np.sum(s > rtol * s[0])) if s.size and s[0] > 0 else 0


def _independent(candidates, basis, rtol):
    """Indices of rows of `candidates` (fields sampled at several points, one row
    each) that are ℝ-linearly independent of `basis` and of each other."""
    chosen, rows = [], [] if basis is None else list(basis)
    scale = max([np.linalg.norm(r) for r in rows] + [np.abs(candidates).max(), 1e-300])
    q = np.linalg.qr(np.array(rows).T)[0] if rows else np.zeros((candidates.shape[1], 0))
    for i, row in enumerate(candidates):
        residual = row - q @ (q.T @ row)
        residual = residual - q @ (q.T @ residual)  # re-orthogonalise
        norm = np.linalg.norm(residual)
        if norm > rtol * scale:
            q = np.column_stack([q, residual / norm])
            chosen.append(i)
    return chosen, q


def count_conservation_laws(
    model,
    *,
    key,
    reparametrisation=None,
    known=None,
    points: int = 3,
    max_levels: int = 6,
    rtol: float = 1e-8,
) -> LawCount:
    r"""Number of independent conservation laws of the flow, valid for every data
    set and loss (Marcotte, Gribonval & Peyré 2023; science.md §4).

    Write the model as f(φ(θ), x). With W_φ = span{∇φᵢ}, the count is
    D − dim Lie(W_φ)(θ) at a generic θ. Lie(W_φ) is generated numerically: start
    from the fields ∇φᵢ (rows of the Jacobian of φ), add brackets
    [X, Y] = (∂Y)X − (∂X)Y of the generators with the newest fields (jvps, no
    symbolic algebra), keep only fields ℝ-linearly independent on `points` random
    points, and stop when the rank at the generic point stops growing.

    **Arguments:**

    - `model`: the model; generic points are θ ⊙ exp(0.3·ε) around it.
    - `key`: PRNG key for the generic points.
    - `reparametrisation`: φ as a function model → array (default:
      `default_reparametrisation(model)`).
    - `known`: optional dict name → (model → array) of known invariants (e.g.
      `flowgap.invariants.known(model)`), whose Jacobian rank is compared.
    - `points`, `max_levels`, `rtol`: sampling, bracket depth and rank tolerance.

    **Returns:** a `LawCount`.
    """
    points = positive_int("points", points)
    max_levels = positive_int("max_levels", max_levels)
    phi = default_reparametrisation(model) if reparametrisation is None else reparametrisation
    keys = jax.random.split(key, points)
    thetas = jnp.stack([flatten(_perturb(model, k, 0.3))[0] for k in keys])
    _, rebuild = flatten(model)
    dim = int(thetas.shape[1])

    generators = jax.jacrev(lambda t: ravel_pytree(phi(rebuild(t)))[0])

    def sampled(fields):
        values = np.asarray(jax.jit(jax.vmap(fields))(thetas))  # (points, fields, D)
        return np.concatenate(list(values), axis=1), values[0]

    stacked, at_first = sampled(generators)
    chosen, basis_q = _independent(stacked, None, rtol)
    generators = _select(generators, chosen)
    newest, sizes = generators, (len(chosen), len(chosen))
    collected = [at_first[chosen]]
    levels = [_rank(np.concatenate(collected), rtol)]
    while levels[-1] < dim and len(levels) <= max_levels:
        pairs = _all_pairs(*sizes)
        stacked, at_first = sampled(_bracket(generators, newest, pairs))
        chosen, basis_q = _independent(stacked, _rows(basis_q), rtol)
        if not chosen:
            break
        # Only the chosen brackets are carried to the next level (ℝ-linear
        # combinations of them add nothing new), so each level stays small.
        newest = _bracket(generators, newest, pairs[chosen])
        sizes = (sizes[0], len(chosen))
        collected.append(at_first[chosen])
        levels.append(_rank(np.concatenate(collected), rtol))
        if levels[-1] == levels[-2]:
            break
    lie_rank = levels[-1]
    known_rank = complete = None
    if known:
        theta, rebuild_point = thetas[0], rebuild
        jac = np.concatenate(
            [
                np.asarray(jax.jacrev(lambda t, q=q: as_vector(q, rebuild_point(t)))(theta))
                for q in known.values()
            ]
        )
        known_rank = _rank(jac, rtol)
        complete = known_rank == dim - lie_rank
    return LawCount(dim, lie_rank, dim - lie_rank, tuple(levels), known_rank, complete)


def _select(fields, rows):
    index = jnp.asarray(rows, dtype=int)
    return lambda theta: fields(theta)[index]


def _rows(q):
    """The orthonormal basis (columns of q) as rows, to extend."""
    return list(np.asarray(q).T)
