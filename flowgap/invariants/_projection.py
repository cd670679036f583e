import jax.numpy as jnp
from jaxtyping import Array, Float


def null_projector(matrix: Float[Array, "n d"]) -> Float[Array, "d d"]:
    """P = I − X⁺X, the orthogonal projector onto null(X).

    Vectors in range(Xᵀ) (every gradient of a loss of Xβ) are killed by P, which is
    why P·(mirror coordinates) is conserved by the flow.
    """
    return (
        jnp.eye(matrix.shape[1], dtype=matrix.dtype) - jnp.linalg.pinv(matrix) @ matrix
    )
