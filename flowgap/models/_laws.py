"""Formulas shared by the models' `known_invariants` (docs: theory/invariants)."""

import jax.numpy as jnp
from jaxtyping import Array, Float


def balancedness_law(weights) -> Float[Array, " entries"]:
    r"""W_{j+1}ᵀW_{j+1} − W_jW_jᵀ (j = 1…N−1) for the factors (W₁, …, W_N) of a
    product W_N⋯W₁, flattened and concatenated. Conserved since
    L(W_{j+1}A⁻¹, AW_j) = L for every invertible A."""
    return jnp.concatenate(
        [
            (weights[j + 1].T @ weights[j + 1] - weights[j] @ weights[j].T).ravel()
            for j in range(len(weights) - 1)
        ]
    )


def rescaling_law(pairs) -> Float[Array, " units"]:
    r"""Per hidden unit, ‖incoming‖² − ‖outgoing‖², from pairs (‖incoming‖² per
    unit, outgoing matrix with one column per unit). Conserved when the loss is
    invariant to (incoming, outgoing) ↦ (a·incoming, outgoing/a), a > 0."""
    return jnp.concatenate(
        [incoming_sq - jnp.sum(outgoing**2, axis=0) for incoming_sq, outgoing in pairs]
    )


def direction_norms_law(directions) -> Float[Array, " units"]:
    r"""‖vᵢ‖² of every row vᵢ of every matrix in `directions`, concatenated.
    Conserved for weight-normalised rows gᵢvᵢ/‖vᵢ‖, since ∇_vL ⊥ v."""
    return jnp.concatenate([jnp.sum(v**2, axis=1) for v in directions])


def null_projector(matrix: Float[Array, "n d"]) -> Float[Array, "d d"]:
    """P = I − X⁺X, the orthogonal projector onto null(X)."""
    eye = jnp.eye(matrix.shape[1], dtype=matrix.dtype)
    return eye - jnp.linalg.pinv(matrix) @ matrix
