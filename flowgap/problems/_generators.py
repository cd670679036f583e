"""Synthetic problems. Every draw takes an explicit key: same key, same bits.

Each generator draws in float64 and casts to `dtype`, so a seed gives the same
problem in every precision, rounded (`flowgap._draw.draws_in_float64`)."""

import jax
import jax.numpy as jnp
from jaxtyping import PRNGKeyArray

from .._checks import as_scalar, positive_int
from .._draw import draws_in_float64
from ..models import TwoLayer
from ._regression import RegressionProblem


def _dtype(dtype):
    return jnp.result_type(float) if dtype is None else dtype


def _noisy(key, clean, noise):
    noise = as_scalar("noise", noise)
    return clean + noise * jax.random.normal(key, clean.shape, clean.dtype)


@draws_in_float64
def sparse_recovery(
    key: PRNGKeyArray, *, n: int, d: int, sparsity: int, noise=0.0, dtype=None
) -> RegressionProblem:
    r"""Compressed sensing: X ∈ ℝ^{n×d} with i.i.d. N(0, 1) entries, an s-sparse
    β* (support uniform without replacement, non-zeros i.i.d. N(0, 1)), and
    y = Xβ* + noise·N(0, I). `truth` is β*.
    """
    n, d = positive_int("n", n), positive_int("d", d)
    s = positive_int("sparsity", sparsity)
    if s > d:
        raise ValueError(f"`sparsity` must be at most d = {d}, got {s}.")
    dtype = _dtype(dtype)
    kx, ks, kv, kn = jax.random.split(key, 4)
    x = jax.random.normal(kx, (n, d), dtype)
    support = jax.random.choice(ks, d, (s,), replace=False)
    beta = jnp.zeros(d, dtype).at[support].set(jax.random.normal(kv, (s,), dtype))
    return RegressionProblem(x, _noisy(kn, x @ beta, noise), beta)


@draws_in_float64
def low_rank(
    key: PRNGKeyArray,
    *,
    d_in: int,
    d_out: int,
    rank: int,
    n: int | None = None,
    noise=0.0,
    dtype=None,
) -> RegressionProblem:
    r"""Low-rank target W* = A Bᵀ/√rank (A, B with i.i.d. N(0, 1) entries), rank r.

    With `n=None` this is matrix factorisation: inputs are the basis vectors
    (X = I, n = d_in), so L(W) = (1/2d_in)‖W − W*‖_F² for a linear model W.
    With an integer n it is low-rank regression (sensing by Gaussian inputs):
    xᵢ ~ N(0, I), yᵢ = W*xᵢ. `truth` is W*.
    """
    d_in, d_out = positive_int("d_in", d_in), positive_int("d_out", d_out)
    rank = positive_int("rank", rank)
    if rank > min(d_in, d_out):
        raise ValueError(f"`rank` must be at most min(d_in, d_out), got {rank}.")
    dtype = _dtype(dtype)
    ka, kb, kx, kn = jax.random.split(key, 4)
    a = jax.random.normal(ka, (d_out, rank), dtype)
    b = jax.random.normal(kb, (d_in, rank), dtype)
    w = a @ b.T / jnp.sqrt(rank)
    if n is None:
        x = jnp.eye(d_in, dtype=dtype)
    else:
        x = jax.random.normal(kx, (positive_int("n", n), d_in), dtype)
    return RegressionProblem(x, _noisy(kn, x @ w.T, noise), w)


@draws_in_float64
def teacher_student(
    key: PRNGKeyArray,
    *,
    n: int,
    d: int,
    teacher_width: int,
    out_dim: int = 1,
    activation: str = "relu",
    decay=1.0,
    teacher_scale=1.0,
    noise=0.0,
    dtype=None,
) -> RegressionProblem:
    r"""Teacher–student regression with anisotropic Gaussian inputs.

    xᵢ ~ N(0, Σ), Σ = diag(λ₁, …, λ_d) with λ_j = j^(−decay); the teacher is a
    `TwoLayer(d, teacher_width, out_dim, activation=..., scale=teacher_scale)`;
    yᵢ = teacher(xᵢ) + noise·N(0, I), shape (n, out_dim). `truth` is the teacher.
    """
    n, d = positive_int("n", n), positive_int("d", d)
    decay = as_scalar("decay", decay)
    dtype = _dtype(dtype)
    kx, kt, kn = jax.random.split(key, 3)
    spectrum = jnp.arange(1, d + 1, dtype=dtype) ** (-decay)
    x = jax.random.normal(kx, (n, d), dtype) * jnp.sqrt(spectrum)
    teacher = TwoLayer(
        d,
        teacher_width,
        out_dim,
        activation=activation,
        scale=teacher_scale,
        key=kt,
        dtype=dtype,
    )
    y = jax.vmap(teacher)(x)
    return RegressionProblem(x, _noisy(kn, y, noise), teacher)


@draws_in_float64
def whitened(
    key: PRNGKeyArray, *, n: int, d: int, noise=0.0, dtype=None
) -> RegressionProblem:
    r"""Whitened linear regression: XᵀX/n = I exactly (X = √n·Q with Q the
    orthonormal factor of a Gaussian matrix; needs n ≥ d), β* ~ N(0, I),
    y = Xβ* + noise·N(0, I). `truth` is β*.
    """
    n, d = positive_int("n", n), positive_int("d", d)
    if n < d:
        raise ValueError(f"`n` must be at least d = {d} for XᵀX/n = I, got {n}.")
    dtype = _dtype(dtype)
    kx, kb, kn = jax.random.split(key, 3)
    q, _ = jnp.linalg.qr(jax.random.normal(kx, (n, d), dtype))
    x = jnp.sqrt(n) * q
    beta = jax.random.normal(kb, (d,), dtype)
    return RegressionProblem(x, _noisy(kn, x @ beta, noise), beta)


@draws_in_float64
def random_labels(
    key: PRNGKeyArray, *, n: int, d: int, out_dim: int = 1, dtype=None
) -> RegressionProblem:
    r"""Memorisation: inputs xᵢ ~ N(0, I_d) and targets yᵢ ~ N(0, I_out_dim),
    independent of each other, so nothing generalises and a network fits the
    labels one by one. Fitting them sharpens the loss steadily (progressive
    sharpening), which makes it the standard small test bed for gradient descent
    at the edge of stability. `truth` is None.
    """
    n, d = positive_int("n", n), positive_int("d", d)
    out_dim = positive_int("out_dim", out_dim)
    dtype = _dtype(dtype)
    kx, ky = jax.random.split(key)
    x = jax.random.normal(kx, (n, d), dtype)
    return RegressionProblem(x, jax.random.normal(ky, (n, out_dim), dtype))
