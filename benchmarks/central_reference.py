r"""The central flow by the algorithm of the reference implementation
alex-damian/central_flows_jax, re-implemented on equal footing with flowgap's
`central_flow` for `bench_central.py`.

Explicit Euler with m substeps of dt = η/m per GD step, a `lax.fori_loop` under
`jax.jit` (m traced: one compiled program). Each substep: ∇L; Lanczos started from
the previous substep's top-k Ritz vectors (their sum; the first substep from
flowgap's start vector), as the reference warm-starts its LOBPCG; the
third-derivative products g_ab; C and 𝓑; then the update

$$\theta \leftarrow \theta - dt\,\Big[\nabla L + \tfrac12 \textstyle\sum_{ab}
X_{ab} g_{ab}\Big],\quad X = \arg\min_{X \succeq 0} \tfrac14\langle X,
\mathcal B[X]\rangle + \langle C, X\rangle,\quad C = \kappa(\tfrac2\eta I - R)
+ \alpha',\quad \kappa = 1/\eta .$$

The k×k QP goes to the host through `jax.pure_callback`, to a generic solver
(`HostQP`): scipy's `minimize(method="trust-exact")` over the Cholesky factor
X = LLᵀ, from L = I on the problem scaled to ‖𝓑‖ = ‖C‖ = 1, analytic gradient and
Hessian (on random instances it agrees with flowgap's JAX QP to 1e-11 at k = 1 and
about 1e-8 at k = 2, 3); like the reference it returns X = 0 without a solve when
C ⪰ 0. For k = 1 a closed form exists (flowgap uses it; `closed_form` here, for
the info rows); the generic host path is what the reference runs (it calls cvxpy
with CVXOPT, not a dependency here). The reference asks the constraint to hold one
substep ahead, i.e. κ = 1/dt, so its flow changes with m; here κ = 1/η as in
flowgap, so both converge to one flow and their errors can be compared.
"""

import math
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from scipy.optimize import minimize

from flowgap._lanczos import lanczos


def _svec(X):
    rows, cols = np.triu_indices(X.shape[0])
    return X[rows, cols] * np.where(rows == cols, 1.0, math.sqrt(2.0))


def _smat(x, k):
    rows, cols = np.triu_indices(k)
    x = x * np.where(rows == cols, 1.0, 1 / math.sqrt(2.0))
    X = np.zeros((k, k))
    X[rows, cols] = x
    X[cols, rows] = x
    return X


class HostQP:
    r"""min over X ⪰ 0 of ¼ svec(X)ᵀ M svec(X) + ⟨C, X⟩ with scipy, as the reference
    solves its QP with cvxpy: on the host, by a generic solver. X = LLᵀ with L
    lower triangular (Burer–Monteiro at full rank: every local minimum is global),
    `trust-exact` with analytic gradient and Hessian, from L = I on the problem
    scaled to ‖M‖_F = ‖C‖_F = 1. Counts its calls, solver runs and seconds."""

    def __init__(self, k: int):
        self.k = k
        self.rows, self.cols = np.tril_indices(k)
        n = len(self.rows)
        self.basis = np.zeros((n, k, k))
        self.basis[np.arange(n), self.rows, self.cols] = 1.0
        self.reset()

    def reset(self) -> None:
        self.calls = self.solves = 0
        self.seconds = 0.0

    def __call__(self, C, M):
        start = time.perf_counter()
        X = self.solve(np.asarray(C, np.float64), np.asarray(M, np.float64))
        self.calls += 1
        self.seconds += time.perf_counter() - start
        return X

    def solve(self, C, M):
        if np.linalg.eigvalsh(C).min() >= 0:
            return np.zeros_like(C)
        self.solves += 1
        c_scale, m_scale = np.linalg.norm(C), max(np.linalg.norm(M), 1e-300)
        m, c = M / m_scale, _svec(C) / c_scale
        k, basis = self.k, self.basis

        def parts(entries):
            L = np.zeros((k, k))
            L[self.rows, self.cols] = entries
            x = _svec(L @ L.T)
            return L, x, _smat(0.5 * m @ x + c, k)

        def fun(entries):
            _, x, _ = parts(entries)
            return 0.25 * x @ m @ x + c @ x

        def jac(entries):
            L, _, G = parts(entries)
            return (2 * G @ L)[self.rows, self.cols]

        def hess(entries):
            L, _, G = parts(entries)
            J = np.stack([_svec(E @ L.T + L @ E.T) for E in basis], 1)
            second = np.einsum("ab,iac,jbc->ij", G, basis, basis)
            return 0.5 * J.T @ m @ J + second + second.T

        start = np.eye(k)[self.rows, self.cols]
        res = minimize(
            fun, start, jac=jac, hess=hess, method="trust-exact",
            options=dict(gtol=1e-13),
        )  # fmt: skip
        L = np.zeros((k, k))
        L[self.rows, self.cols] = res.x
        return L @ L.T * (c_scale / m_scale)


def host_callback(qp: HostQP):
    """The QP on the host, as the reference solves it: (C, M) → X."""

    def solve(C, M):
        shape = jax.ShapeDtypeStruct(C.shape, C.dtype)
        return jax.pure_callback(qp, shape, C, M)

    return solve


def closed_form(C, M):
    """The k = 1 QP in JAX, x = max(0, −2c/m) (for the info rows only)."""
    return jnp.maximum(0.0, -2 * C / jnp.where(M > 0, M, 1.0)) * (M > 0)


def reference_solver(loss, model, solve_qp, t1: float, *, k: int, lanczos_steps: int):
    """`solve(θ₀, η, m)` → θ(t1): explicit Euler, m substeps per GD step, k
    eigenpairs by `lanczos_steps` Lanczos steps, the QP by `solve_qp(C, M)`."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    _, unravel = ravel_pytree(params)
    rows, cols = np.triu_indices(k)
    weight = np.where(rows == cols, 1.0, math.sqrt(2.0))

    def value(theta):
        return loss(eqx.combine(unravel(theta), static))

    def hvp(theta, v):
        return jax.jvp(jax.grad(value), (theta,), (v,))[1]

    def substep(theta, start, lr, dt):
        grad = jax.grad(value)(theta)
        values, vectors = lanczos(lambda v: hvp(theta, v), start, lanczos_steps)
        eigs, U = values[::-1][:k], vectors[:, ::-1][:, :k]

        def third(u, v):
            return jax.grad(lambda p: u @ hvp(p, v))(theta)

        ghat = jax.vmap(third)(U.T[rows], U.T[cols]) * weight[:, None]
        alpha = ghat @ grad
        C = jnp.diag((2 / lr - eigs) / lr) + jnp.zeros((k, k)).at[rows, cols].set(
            alpha / weight
        )
        C = jnp.triu(C) + jnp.triu(C, 1).T
        X = solve_qp(C, ghat @ ghat.T)
        theta = theta - dt * (grad + 0.5 * ghat.T @ (X[rows, cols] * weight))
        return theta, U.sum(axis=1)

    def solve(theta0, lr, m):
        steps = jnp.round(t1 / lr).astype(int)
        start = jax.random.normal(jax.random.key(0), theta0.shape, theta0.dtype)

        def body(_, carry):
            return substep(*carry, lr, lr / m)

        theta, _ = jax.lax.fori_loop(0, steps * m, body, (theta0, start))
        return theta

    return solve
