"""Lanczos on a symmetric linear operator given by its matrix-vector product (a
Hessian-vector product, in flowgap): the base of every curvature computation."""

import jax.numpy as jnp
from jax import lax


def lanczos(matvec, v0, iters: int):
    r"""Lanczos with full reorthogonalisation on a symmetric operator.

    Builds an orthonormal Krylov basis V (iters × D) and the tridiagonal
    T = VᵀAV; the Ritz values (eigenvalues of T, ascending) approximate A's
    extreme eigenvalues, exactly once iters = D. On breakdown (an invariant
    subspace is found) the remaining basis vectors are zero and contribute Ritz
    values 0.

    **Returns:** (Ritz values, Ritz vectors as columns of shape (D, iters)).
    """
    dim = v0.shape[0]
    basis = jnp.zeros((iters + 1, dim), v0.dtype).at[0].set(v0 / jnp.linalg.norm(v0))

    def step(carry, j):
        basis, beta_prev = carry
        v = basis[j]
        w = matvec(v)
        alpha = w @ v
        w = w - alpha * v - beta_prev * basis[jnp.maximum(j - 1, 0)] * (j > 0)
        for _ in range(2):  # full reorthogonalisation, twice (Kahan–Parlett)
            w = w - basis.T @ (basis @ w)
        beta = jnp.linalg.norm(w)
        scale = jnp.maximum(jnp.abs(alpha), 1.0)
        ok = beta > 1e-12 * scale
        basis = basis.at[j + 1].set(jnp.where(ok, w / jnp.where(ok, beta, 1.0), 0.0))
        beta = jnp.where(ok, beta, 0.0)
        return (basis, beta), (alpha, beta)

    (basis, _), (alphas, betas) = lax.scan(
        step, (basis, jnp.zeros((), v0.dtype)), jnp.arange(iters)
    )
    tri = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
    values, vectors = jnp.linalg.eigh(tri)
    return values, basis[:iters].T @ vectors
