r"""A small convex quadratic program over the positive semidefinite cone, in JAX:
the inner problem of the central flow (`CentralFlowField`).

$$\min_{X \succeq 0}\; f(X) = \tfrac14\langle X, \mathcal B[X]\rangle
  + \langle C, X\rangle, \qquad X, C \in \mathbb S^k,$$

with 𝓑 a self-adjoint positive semidefinite map on symmetric k×k matrices.

**Coordinates.** Symmetric matrices are handled as `svec` vectors of length
n = k(k+1)/2: the upper triangle row by row, off-diagonal entries times √2, so
that ⟨X, Y⟩ = svec(X)·svec(Y) (an orthonormal basis of 𝕊ᵏ). 𝓑 is the n×n PSD
matrix M with svec(𝓑[X]) = M·svec(X). In the central flow M is a Gram matrix,
M_pq = ⟨ĝ_p, Pĝ_q⟩, so it is PSD by construction.

**Optimality.** f is convex, so X is a minimiser iff the KKT conditions hold:

$$X \succeq 0,\qquad A(X) := \nabla f(X) = \tfrac12\mathcal B[X] + C \succeq 0,
  \qquad \langle X, A(X)\rangle = 0,$$

equivalently X = Π₊(X − τA(X)) for any τ > 0, Π₊ the projection onto the PSD
cone (clip the eigenvalues at 0). C ⪰ 0 gives X = 0 exactly.

**Method.** k = 1 has the closed form x = max(0, −2c/m). For k ≥ 2 the problem
is first scaled by the powers of two μ, γ just above λ_max(M) and ‖C‖_F
(exact, so solo and `vmap`ped solves round alike), to m = M/μ, c = C/γ with
λ_max(m) < 1, so Lip(∇f) < ½ and τ = 2 is a safe step; then one
`lax.while_loop` alternates

1. accelerated projected gradient (FISTA, step τ) with O'Donoghue and
   Candès's gradient restart, from X = 0 (the first step is Π₊(−τc), which is
   0 when C ⪰ 0 and ends the loop), until its gradient mapping is below
   `switch`;
2. semismooth Newton on F(Y) = Π₋(Y) + τA(Π₊(Y)) = 0 (X = Π₊(Y)), whose
   generalised Jacobian uses the divided differences of max(λ, 0) on the
   eigenvalues; least-squares steps (a singular M is allowed) with
   backtracking on ‖F‖. If a round stalls (non-strict complementarity and an
   ill-conditioned M slow it), FISTA resumes with a hundred times smaller
   `switch`, and so on, until ‖F‖/τ ≤ `tol` or `max_iter` iterations.

The reported residual is the natural residual of the scaled problem,
‖x − Π₊(x − τ∇f(x))‖/τ, i.e. relative to γ ≈ ‖C‖_F; it vanishes exactly at
the solution, and ‖X − X*‖ ≲ cond(M)·residual·γ/μ.

Everything is jittable and vmappable (no host callbacks). If M vanishes along a
direction in which C is not PSD, the problem is unbounded below (in the central
flow: an eigenvalue past 2/η that the third derivative cannot move, where GD
diverges). For M = 0 the solver returns X = 0, for a partly singular M its
last iterate after `max_iter`; in both cases the residual is of order one.
"""

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Float, Int

# FISTA's step on the scaled problem (λ_max(M) < 1): 2 ≤ 1/Lip(∇f)
_TAU = 2.0


class PSDQPSolution(eqx.Module):
    """`X` (k×k, PSD), `residual` (the relative natural residual of the module
    docstring) and `num_steps` (loop iterations: FISTA steps and Newton
    evaluations; 0 for the closed form)."""

    X: Float[Array, "k k"]
    residual: Float[Array, ""]
    num_steps: Int[Array, ""]


def _triu(k: int):
    rows, cols = np.triu_indices(k)
    scale = np.where(rows == cols, 1.0, np.sqrt(2.0))
    return rows, cols, scale


def svec(X: Float[Array, "k k"]) -> Float[Array, " n"]:
    """The upper triangle of symmetric X, off-diagonals times √2 (isometric)."""
    rows, cols, scale = _triu(X.shape[-1])
    return X[rows, cols] * scale


def smat(x: Float[Array, " n"], k: int) -> Float[Array, "k k"]:
    """The inverse of `svec`."""
    rows, cols, scale = _triu(k)
    index = np.zeros((k, k), dtype=int)
    index[rows, cols] = index[cols, rows] = np.arange(rows.size)
    return x[index] / scale[index]


def _psd_part(y, k):
    """svec(Π₊(smat(y))), with the eigen-decomposition it came from."""
    values, vectors = jnp.linalg.eigh(smat(y, k))
    return svec((vectors * jnp.maximum(values, 0)) @ vectors.T), values, vectors


def _residual(m, c, x, tau, k):
    step = x - tau * (0.5 * m @ x + c)
    return jnp.linalg.norm(x - _psd_part(step, k)[0]) / tau


def _psd_jacobian(values, vectors, k):
    """The derivative of y ↦ svec(Π₊(smat(y))) at smat(y) = Q diag(λ) Qᵀ, as an
    n×n matrix: H ↦ Q(Ω∘(QᵀHQ))Qᵀ with Ω_ij the divided difference of
    max(λ, 0) at (λ_i, λ_j) (1 or 0 on ties: an element of the Clarke
    Jacobian)."""
    n = k * (k + 1) // 2
    plus = jnp.maximum(values, 0)
    gap = values[:, None] - values[None, :]
    tie = jnp.broadcast_to(values[:, None] > 0, gap.shape).astype(values.dtype)
    safe = jnp.where(gap == 0, 1.0, gap)
    omega = jnp.where(gap == 0, tie, (plus[:, None] - plus[None, :]) / safe)
    basis = jax.vmap(lambda e: smat(e, k))(jnp.eye(n, dtype=values.dtype))
    rotate = jax.vmap(lambda b: svec(vectors.T @ b @ vectors))(basis).T  # T h
    rows, cols, _ = _triu(k)
    weights = omega[rows, cols]  # (Ω∘Z) in svec coordinates: entrywise
    return rotate.T @ (weights[:, None] * rotate)


class _State(NamedTuple):
    i: Array  # loop iterations (FISTA steps and Newton evaluations)
    newton: Array  # in the Newton phase
    switch: Array  # FISTA's gradient mapping at which Newton takes over
    x: Array  # FISTA: iterate (PSD, svec) ...
    z: Array  # ... extrapolated point ...
    t: Array  # ... and momentum parameter
    y: Array  # Newton: the unconstrained point, X = Π₊(Y) ...
    p: Array  # ... Π₊(y) ...
    d: Array  # ... the current direction ...
    alpha: Array  # ... its step length ...
    size: Array  # ... ‖F(y)‖ ...
    evals: Array  # ... and evaluations in this round
    done: Array


def _fista_update(s, new, tol):
    """FISTA from the extrapolated point z to new = Π₊(z − τ∇f(z)), with
    gradient restart; hands over to Newton once the gradient mapping
    ‖z − new‖/τ is below `switch` (done below `tol`)."""
    gap = jnp.linalg.norm(s.z - new) / _TAU
    restart = jnp.dot(s.z - new, new - s.x) > 0
    t_next = 0.5 * (1 + jnp.sqrt(1 + 4 * s.t**2))
    z = new + jnp.where(restart, 0.0, (s.t - 1) / t_next) * (new - s.x)
    return s._replace(
        x=new,
        z=z,
        t=jnp.where(restart, 1.0, t_next),
        newton=gap <= s.switch,
        p=new,
        d=jnp.zeros_like(new),
        alpha=jnp.ones_like(s.alpha),
        size=jnp.full_like(s.size, jnp.inf),
        evals=jnp.zeros_like(s.evals),
        done=gap <= tol,
    )


def _newton_update(s, trial, p, values, vectors, m, c, tol, round_evals):
    """Semismooth Newton on F(y) = y − p(y) + τ(½m p(y) + c), p = svec∘Π₊∘smat,
    at the trial point y + αd: accepted if ‖F‖ decreases (Armijo), else the
    step is halved. ‖F‖/τ bounds the natural residual of p(y) (Π₊ is
    non-expansive). A stalled round returns to FISTA, from p(y) when that is
    better, with a hundred times smaller `switch`."""
    k = values.shape[0]
    f = trial - p + _TAU * (0.5 * m @ p + c)
    size = jnp.linalg.norm(f)
    accept = size <= (1 - 1e-4 * s.alpha) * s.size
    eye = jnp.eye(c.shape[0], dtype=c.dtype)
    jac = eye - (eye - 0.5 * _TAU * m) @ _psd_jacobian(values, vectors, k)
    step = jnp.linalg.lstsq(jac, -f, rcond=1e-13)[0]
    y, p, d, size = jax.tree.map(
        lambda new, old: jnp.where(accept, new, old),
        (trial, p, step, size),
        (s.y, s.p, s.d, s.size),
    )
    alpha = jnp.where(accept, 1.0, 0.5 * s.alpha)
    stalled = (alpha < 1e-3) | (s.evals + 1 >= round_evals)
    restart = stalled & (size / _TAU < s.switch)
    return s._replace(
        y=y,
        p=p,
        d=d,
        alpha=alpha,
        size=size,
        evals=s.evals + 1,
        newton=~stalled,
        switch=jnp.where(stalled, 1e-2 * s.switch, s.switch),
        x=jnp.where(restart, p, s.x),
        z=jnp.where(restart, p, s.z),
        t=jnp.where(stalled, 1.0, s.t),
        done=size <= _TAU * tol,
    )


def _hybrid(m, c, k, tol, max_iter, switch, round_evals):
    """FISTA and Newton rounds in one `lax.while_loop` on the scaled problem
    (λ_max(m) < 1, so Lip(∇f) < ½ and FISTA's step is τ = 2). Starts at X = 0:
    the first step is Π₊(−τC), 0 when C ⪰ 0, which ends the loop.

    Each iteration makes one eigendecomposition, of the point the current phase
    needs, and both updates are formed from it: two LAPACK calls that could run
    at once can deadlock jaxlib's CPU thread pool under `vmap` (batched `eigh`
    waits on workers that the other call holds)."""

    def body(s):
        fista_point = s.z - _TAU * (0.5 * m @ s.z + c)
        point = jnp.where(s.newton, s.y + s.alpha * s.d, fista_point)
        p, values, vectors = _psd_part(point, k)
        newton = _newton_update(s, point, p, values, vectors, m, c, tol, round_evals)
        fista = _fista_update(s, p, tol)
        fista = fista._replace(y=p - _TAU * (0.5 * m @ p + c))
        s = jax.tree.map(lambda a, b: jnp.where(s.newton, a, b), newton, fista)
        return s._replace(i=s.i + 1)

    zero = jnp.zeros_like(c)
    one = jnp.ones((), c.dtype)
    false = jnp.array(False)
    init = _State(
        jnp.array(0), false, switch * one, zero, zero, one, zero, zero, zero, one,
        jnp.inf * one, jnp.array(0), false,
    )  # fmt: skip
    s = lax.while_loop(lambda s: ~s.done & (s.i < max_iter), body, init)
    return s.x, s.p, s.i


def _check(M, C):
    if C.ndim != 2 or C.shape[0] != C.shape[1]:
        raise ValueError(f"`C` must be a square k×k matrix, got shape {C.shape}.")
    n = C.shape[0] * (C.shape[0] + 1) // 2
    if M.shape != (n, n):
        raise ValueError(
            f"`M` must be n×n with n = k(k+1)/2 = {n} (svec coordinates) for a "
            f"{C.shape[0]}×{C.shape[0]} `C`, got shape {M.shape}."
        )


def _power_of_two_above(x):
    """The least power of two > x (1 where x ≤ 0 or is not finite): scaling by
    it is exact, and a last-bit change in x (batched and unbatched reductions
    can round differently) almost never changes it."""
    exponent = jnp.frexp(jnp.where(x > 0, x, 1.0))[1]
    return jnp.where(jnp.isfinite(x), jnp.ldexp(jnp.ones_like(x), exponent), 1.0)


def _scales(M, c):
    """Powers of two just above λ_max(M) and ‖C‖_F: the scaled problem has
    λ_max(m) ∈ [½, 1) (so Lip(∇f) < ½) and ‖c‖ ∈ [½, 1)."""
    return (
        _power_of_two_above(jnp.linalg.eigvalsh(M)[-1]),
        _power_of_two_above(jnp.linalg.norm(c)),
    )


def _closed_form(M, C):
    """k = 1: minimise ¼mx² + cx over x ≥ 0, so x = max(0, −2c/m)."""
    m, c = M[0, 0], C[0, 0]
    m_scale, c_scale = _scales(M, C[0])
    x = jnp.where((m > 0) & (c < 0), -2 * c / jnp.where(m > 0, m, 1.0), 0.0)
    res = _residual(M / m_scale, C[0] / c_scale, x[None] * m_scale / c_scale, _TAU, 1)
    return PSDQPSolution(x.reshape(1, 1), res, jnp.array(0))


def _iterative(M, C, tol, max_iter, switch, round_evals):
    """The hybrid loop on the problem scaled by `_scales`; of FISTA's iterate
    and Newton's Π₊(y), the one with the smaller natural residual is returned
    (ties: FISTA's, which is exactly 0 when C ⪰ 0). M = 0 gives X = 0, as the
    closed form does at k = 1 (the loop is handed c = 0 and stops at once)."""
    k = C.shape[0]
    c = svec(C)
    m_scale, c_scale = _scales(M, c)
    m, c = M / m_scale, c / c_scale
    bounded = jnp.any(M != 0)
    x, p, steps = _hybrid(
        m, jnp.where(bounded, c, 0.0), k, tol, max_iter, switch, round_evals
    )
    candidates = jnp.stack([x, p])
    res = jax.vmap(lambda z: _residual(m, c, z, _TAU, k))(candidates)
    best = jnp.argmin(res)
    X = smat(candidates[best], k) * (c_scale / m_scale)
    return PSDQPSolution(X, res[best], steps)


def solve_psd_qp(
    M: Float[Array, "n n"],
    C: Float[Array, "k k"],
    *,
    tol: float = 1e-12,
    max_iter: int = 5000,
    switch: float = 1e-4,
    round_evals: int = 30,
) -> PSDQPSolution:
    r"""Solve min_{X ⪰ 0} ¼⟨X, 𝓑[X]⟩ + ⟨C, X⟩ (see the module docstring).

    **Arguments:**

    - `M`: 𝓑 in svec coordinates, an n×n symmetric PSD matrix, n = k(k+1)/2.
    - `C`: the linear term, a symmetric k×k matrix (symmetrised here).
    - `tol`: target relative KKT residual (default 1e-12, a few hundred float64
      ulps of the scaled problem).
    - `max_iter`: cap on the loop's iterations (FISTA steps and Newton
      evaluations); `switch`: FISTA's gradient mapping at which Newton takes
      over (first round); `round_evals`: Newton evaluations (steps and
      backtracks) per round before FISTA resumes.

    **Returns:** a `PSDQPSolution` (X, residual, num_steps). k = 1 uses the
    closed form x = max(0, −2c/m) (x = 0 when m = 0).
    """
    M, C = jnp.asarray(M), jnp.asarray(C)
    _check(M, C)
    M, C = 0.5 * (M + M.T), 0.5 * (C + C.T)
    if C.shape[0] == 1:
        return _closed_form(M, C)
    return _iterative(M, C, tol, max_iter, switch, round_evals)
