r"""Lanczos on a symmetric linear operator given by its matrix-vector product (a
Hessian-vector product, in flowgap): the base of every curvature computation.

Two drivers share one step (full reorthogonalisation, twice): `lanczos` takes a
fixed number of steps (a `lax.scan`, reverse-differentiable; the central flows and
the stability check use it), and `lanczos_top` stops as soon as the wanted Ritz
pairs have converged (a `lax.while_loop`).
"""

import equinox as eqx
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Bool, Float, Int


def _step(matvec, basis, j, beta_prev):
    """Lanczos step j: α_j = v_jᵀAv_j, the next basis vector v_{j+1} (row j + 1 of
    `basis`, zero on breakdown) and β_j = ‖w‖ (zero on breakdown)."""
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
    return basis, alpha, jnp.where(ok, beta, 0.0)


def _first_basis(v0, steps: int):
    return (
        jnp.zeros((steps + 1, v0.shape[0]), v0.dtype)
        .at[0]
        .set(v0 / jnp.linalg.norm(v0))
    )


def lanczos(matvec, v0, iters: int):
    r"""Lanczos with full reorthogonalisation on a symmetric operator.

    Builds an orthonormal Krylov basis V (iters × D) and the tridiagonal
    T = VᵀAV; the Ritz values (eigenvalues of T, ascending) approximate A's
    extreme eigenvalues, exactly once iters = D. On breakdown (an invariant
    subspace is found) the remaining basis vectors are zero and contribute Ritz
    values 0. Always `iters` steps (a `lax.scan`, so reverse-mode
    differentiable); `lanczos_top` stops once the top pairs have converged.

    **Returns:** (Ritz values, Ritz vectors as columns of shape (D, iters)).
    """

    def step(carry, j):
        basis, beta_prev = carry
        basis, alpha, beta = _step(matvec, basis, j, beta_prev)
        return (basis, beta), (alpha, beta)

    (basis, _), (alphas, betas) = lax.scan(
        step, (_first_basis(v0, iters), jnp.zeros((), v0.dtype)), jnp.arange(iters)
    )
    tri = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
    values, vectors = jnp.linalg.eigh(tri)
    return values, basis[:iters].T @ vectors


class LanczosInfo(eqx.Module):
    r"""How a Lanczos run ended (`lanczos_top`; `return_info=True` in
    `flowgap.analysis.sharpness`, `track_sharpness`, `predictor_hessian_norm`).

    **Fields:**

    - `num_hvps`: matrix–vector (Hessian–vector) products used: one per Lanczos
      step (`iters` + 1 for `method="power"`).
    - `residuals`: ‖Ay − θy‖ for each returned Ritz pair (θ, y), from the
      Lanczos estimate |β_m e_mᵀs| (exact in exact arithmetic: the basis is
      orthonormal); shape (k,).
    - `converged`: every residual ≤ tol·|θ| (else the step limit was reached).
    """

    num_hvps: Int[Array, ""]
    residuals: Float[Array, " k"]
    converged: Bool[Array, ""]


def default_tol(dtype) -> float:
    """√ε of `dtype` (1.5e-8 in float64, 3.5e-4 in float32): `lanczos_top`'s
    default relative residual."""
    return float(jnp.finfo(dtype).eps) ** 0.5


class _Tridiagonal(eqx.Module):
    """σ·T_n, the leading n × n block of the Lanczos matrix times a sign σ = ±1,
    stored in arrays of the maximal size m (rows ≥ n are padding, decoupled from
    the block)."""

    alphas: Array  # (m,): the diagonal
    betas: Array  # (m,): betas[i] couples rows i and i + 1
    n: Array  # steps taken

    @property
    def active(self):
        return jnp.arange(self.alphas.shape[0]) < self.n

    @property
    def couplings(self):
        """The n − 1 off-diagonal entries of the block, zero elsewhere: (m − 1,)."""
        inside = jnp.arange(self.betas.shape[0] - 1) < self.n - 1
        return jnp.where(inside, self.betas[:-1], 0.0)

    @property
    def last_beta(self):
        """|β_{n−1}|, the coupling to the next basis vector (the residual scale)."""
        return jnp.abs(self.betas[self.n - 1])

    def signed(self, sign):
        return _Tridiagonal(sign * self.alphas, sign * self.betas, self.n)

    def bound(self):
        """max|α| + 2 max|β| ≥ ‖T_n‖ (Gershgorin)."""
        a = jnp.where(self.active, self.alphas, 0.0)
        return jnp.max(jnp.abs(a)) + 2 * jnp.max(jnp.abs(self.couplings), initial=0.0)

    def matvec(self, x):
        """T_n x, for x supported on the block."""
        b = self.couplings
        zero = jnp.zeros((1,), x.dtype)
        diagonal = jnp.where(self.active, self.alphas, 0.0) * x
        return (
            diagonal
            + jnp.concatenate([b * x[1:], zero])
            + jnp.concatenate([zero, b * x[:-1]])
        )

    def inverse_iteration(self, x, shift):
        """(T_n − shift·I)⁻¹x, normalised (a tridiagonal solve, O(m)); x is
        kept where the solve fails (shift is an eigenvalue of T_n)."""
        b = self.couplings
        zero = jnp.zeros((1,), x.dtype)
        d = jnp.where(self.active, self.alphas - shift, 1.0)
        y = lax.linalg.tridiagonal_solve(
            jnp.concatenate([zero, b]), d, jnp.concatenate([b, zero]), x[:, None]
        )[:, 0]
        norm = jnp.linalg.norm(y)
        ok = jnp.isfinite(norm) & (norm > 0)
        return jnp.where(ok, y / jnp.where(ok, norm, 1.0), x)

    def follow(self, x, rho):
        """The top eigenpair of T_n from (x, ρ), that of T_{n−1} (x has a zero in
        the new row): one inverse iteration shifted to Weyl's bound
        max(ρ, α_{n−1}) + |β_{n−2}| ≥ λ_max(T_n), which favours the top pair over
        the one below (interlacing puts ρ between the two), then two
        Rayleigh-quotient iterations (cubic convergence). Returns (x, ρ,
        ‖T_n x − ρx‖)."""
        j = self.n - 1
        coupling = jnp.abs(self.betas[jnp.maximum(j - 1, 0)]) * (j > 0)
        upper = jnp.maximum(rho, self.alphas[j]) + coupling
        x = self.inverse_iteration(x, upper)
        for _ in range(2):
            x = self.inverse_iteration(x, x @ self.matvec(x))
        tx = self.matvec(x)
        rho = x @ tx
        return x, rho, jnp.linalg.norm(tx - rho * x)

    def eigh(self):
        """All eigenpairs of T_n as an m × m eigenproblem: the padding rows hold
        −(2·bound + tiny) < every eigenvalue of T_n, so T_n's eigenvalues are the
        last n, ascending, with eigenvectors supported on the block."""
        b = self.couplings
        pad = -(2 * self.bound() + jnp.finfo(b.dtype).tiny)
        diagonal = jnp.where(self.active, self.alphas, pad)
        tri = jnp.diag(diagonal) + jnp.diag(b, 1) + jnp.diag(b, -1)
        values, vectors = jnp.linalg.eigh(tri)
        return values, vectors * self.active[:, None]


def _ritz(tri: _Tridiagonal, k: int, which: str, tol):
    """T_n's eigenpairs (ascending, see `_Tridiagonal.eigh`), and the k wanted
    Ritz pairs (θ, s), wanted first, with their residuals |β_{n−1} s_{n−1}| and
    whether all are ≤ tol·|θ|."""
    values, vectors = tri.eigh()
    key = values if which == "algebraic" else jnp.abs(values)
    inside = jnp.arange(values.shape[0]) >= values.shape[0] - tri.n
    index = lax.top_k(jnp.where(inside, key, -jnp.inf), k)[1]
    wanted, s = values[index], vectors[:, index]
    residuals = tri.last_beta * jnp.abs(s[tri.n - 1])
    converged = jnp.all(residuals <= tol * jnp.abs(wanted))
    return (values, vectors), (wanted, s, residuals, converged)


def lanczos_top(
    matvec, v0, max_steps: int, *, k: int = 1, tol=None, which: str = "algebraic"
):
    r"""Lanczos with full reorthogonalisation, stopped on the residual.

    Step n gives the tridiagonal T_n = VᵀAV and Ritz pairs (θ, y = Vs),
    T_n s = θs, whose residual is (exactly, for an orthonormal basis V)
    $$\lVert Ay - \theta y\rVert = |\beta_n\, e_n^\top s|.$$
    The run stops at the first n where the k wanted pairs (the largest θ for
    `which="algebraic"`, the largest |θ| for `"magnitude"`) all have residual
    ≤ `tol`·|θ| (the test of scipy's `eigsh`), or at `max_steps` (exact once it
    equals the dimension). Then |θ − λ| ≤ residual²/gap for the nearest
    eigenvalue λ of A (gap: from θ to the rest of A's spectrum): with the
    default tol = √ε the Ritz value is exact to rounding unless the relative gap
    is below √ε, and the Ritz vector is within √ε/gap of the eigenvector.
    Breakdown (an invariant subspace) gives zero residuals and stops the run.

    T_n's eigenpairs cost O(m³) (m = `max_steps`), more than a Hessian–vector
    product of a small network, so they are not formed every step: the wanted
    end's top pair is followed from step to step by inverse and Rayleigh-quotient
    iterations on T_n (tridiagonal solves, O(m)), and T_n is diagonalised only
    to confirm a pair that passes the test (for all k pairs), or to restart the
    following when it loses the top pair.

    Two nested `lax.while_loop`s (steps; checks): traceable and vmappable (under
    `jax.vmap` each run stops at its own step, and T_n is diagonalised every
    step), not reverse-differentiable (use `lanczos`).

    **Arguments:** `matvec` (v ↦ Av, A symmetric), `v0` (start vector, nonzero),
    `max_steps` (≤ the dimension), `k` (≤ `max_steps`), `tol` (relative
    residual ≥ 0, may be traced; default √ε of v0's dtype; 0 runs until
    `max_steps` or breakdown), `which`.

    **Returns:** (Ritz values (k,), wanted first; Ritz vectors (D, k);
    `LanczosInfo`).
    """
    if which not in ("algebraic", "magnitude"):
        raise ValueError(f"`which` must be 'algebraic' or 'magnitude', got {which!r}.")
    if not 1 <= k <= max_steps:
        raise ValueError(f"`k` must be from 1 to max_steps = {max_steps}, got {k}.")
    m, dtype = max_steps, v0.dtype
    tol = jnp.asarray(default_tol(dtype) if tol is None else tol, dtype)
    lock = default_tol(dtype)  # a followed pair is trusted to √ε·‖T‖
    # the ends followed: the top of T, and for "magnitude" the top of −T too
    signs = (1.0, -1.0) if which == "magnitude" else (1.0,)

    def step(state):
        """One Lanczos step and the followed pairs; stops the inner loop when
        the wanted pair passes the test or a followed pair is lost."""
        tri, basis, xs, rhos, _ = state
        j = tri.n
        beta_prev = jnp.where(j > 0, tri.betas[jnp.maximum(j - 1, 0)], 0.0)
        basis, alpha, beta = _step(matvec, basis, j, beta_prev)
        tri = _Tridiagonal(
            tri.alphas.at[j].set(alpha), tri.betas.at[j].set(beta), j + 1
        )
        new = [tri.signed(s).follow(x, r) for s, x, r in zip(signs, xs, rhos)]
        new_xs, new_rhos, errors = (jnp.stack(part) for part in zip(*new))
        slack = lock * tri.bound()
        lost = jnp.any((errors > slack) | (new_rhos < rhos - slack))
        want = 0 if which == "algebraic" else jnp.argmax(new_rhos)
        residual = jnp.hypot(errors[want], tri.last_beta * new_xs[want, j])
        passed = (residual <= tol * jnp.abs(new_rhos[want])) & (tri.n >= k)
        return tri, basis, new_xs, new_rhos, passed | lost

    def steps(state):
        """Lanczos steps until a check is due (or the last step), then T_n's
        eigenpairs: the k wanted Ritz pairs, and a restart of the following."""
        tri, basis, xs, rhos, _, _ = state
        tri, basis, xs, rhos, _ = lax.while_loop(
            lambda inner: (inner[0].n < m) & ~inner[4],
            step,
            (tri, basis, xs, rhos, jnp.array(False)),
        )
        (values, vectors), ritz = _ritz(tri, k, which, tol)
        bottom = m - tri.n  # T_n's eigenvalues are the last n, ascending
        xs = jnp.stack([vectors[:, m - 1], vectors[:, bottom]])[: len(signs)]
        rhos = jnp.stack([values[m - 1], -values[bottom]])[: len(signs)]
        return tri, basis, xs, rhos, ritz, ritz[3]

    zeros = jnp.zeros((m,), dtype)
    ritz = (
        jnp.zeros((k,), dtype),
        jnp.zeros((m, k), dtype),
        jnp.zeros((k,), dtype),
        jnp.array(False),
    )
    state = (
        _Tridiagonal(zeros, zeros, jnp.array(0, jnp.int32)),
        _first_basis(v0, m),
        jnp.zeros((len(signs), m), dtype).at[:, 0].set(1.0),
        jnp.full((len(signs),), -jnp.inf, dtype),
        ritz,
        jnp.array(False),
    )
    tri, basis, _, _, ritz, _ = lax.while_loop(
        lambda outer: (outer[0].n < m) & ~outer[5], steps, state
    )
    values, s, residuals, converged = ritz
    return values, basis[:m].T @ s, LanczosInfo(tri.n, residuals, converged)
