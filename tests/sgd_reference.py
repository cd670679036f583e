r"""Independent references for the moments of SGD on linear regression (numpy
and scipy only; no JAX, no flowgap).

They take a different route from the library's: one SGD step is the random
affine map θ ↦ (I − ηÂ)θ + η ĉ, with (Â, ĉ) the batch means of (A_i, c_i), and its
moments are averaged over the batch law from the inclusion probabilities of the
examples (E z_i and E z_i z_j for z_i the number of times example i is drawn),
without ever forming a gradient covariance.
"""

import itertools

import numpy as np
from scipy.integrate import solve_ivp
from scipy.linalg import expm


def _per_example(X, y):
    """A_i = x_i x_iᵀ, c_i = x_i y_i, shapes (n, d, d) and (n, d)."""
    return np.einsum("ia,ib->iab", X, X), X * y[:, None]


def _inclusion(n, b, replace):
    """(p, q, r) = (E z_i, E z_i z_j for i ≠ j, E z_i²), z_i the number of times
    example i is in a batch of b."""
    if replace:
        # z ~ Multinomial(b, 1/n)
        p = b / n
        return p, b * (b - 1) / n**2, p + b * (b - 1) / n**2
    if n == 1:
        return 1.0, 0.0, 1.0
    return b / n, b * (b - 1) / (n * (n - 1)), b / n


def _pair_sum(left, right, p_same, p_diff):
    """Σ_i Σ_j E[z_i z_j] left_i @ right_j, for (n, ...) stacks of matrices."""
    total = np.einsum("iab,jbc->ac", left, right)
    diagonal = np.einsum("iab,ibc->ac", left, right)
    return p_diff * (total - diagonal) + p_same * diagonal


def _step_moments(As, cs, m, S, lr, b, replace, noise_sd):
    """(m', S') after one SGD step from θ with moments (m, S)."""
    n, d = cs.shape
    p, q, r = _inclusion(n, b, replace)
    eye = np.eye(d)
    # Â = Σ z_i A_i / b, ĉ = Σ z_i c_i / b; M = I − ηÂ, θ' = Mθ + ηĉ
    EA = p * As.sum(0) / b
    Ec = p * cs.sum(0) / b
    EM = eye - lr * EA
    AS = np.einsum("iab,bc->iac", As, S)
    EASA = _pair_sum(AS, As, r, q) / b**2
    EMSM = S - lr * (EA @ S + S @ EA) + lr**2 * EASA
    Am = np.einsum("iab,b->ia", As, m)
    EAmc = _pair_sum(Am[:, :, None], cs[:, None, :], r, q) / b**2
    EMmc = np.outer(m, Ec) - lr * EAmc
    Ecc = _pair_sum(cs[:, :, None], cs[:, None, :], r, q) / b**2
    # label noise: −(1/b)Σ ε_j x_j, of covariance δ²/b² Σ_j A_{i_j}
    noise = noise_sd**2 * EA / b
    S_new = EMSM + lr * (EMmc + EMmc.T) + lr**2 * (Ecc + noise)
    return EM @ m + lr * Ec, S_new


def sgd_moments_reference(X, y, theta0, lr, b, steps, replace, label_noise=0.0):
    """Means (steps + 1, d) and second moments (steps + 1, d, d) of SGD with
    b draws with replacement, or an independent uniform b-subset, per step."""
    X, y, theta0 = (np.asarray(a, dtype=float) for a in (X, y, theta0))
    As, cs = _per_example(X, y)
    means, seconds = [theta0], [np.outer(theta0, theta0)]
    for _ in range(steps):
        m, S = _step_moments(
            As, cs, means[-1], seconds[-1], lr, b, replace, label_noise
        )
        means.append(m)
        seconds.append(S)
    return np.array(means), np.array(seconds)


def _epoch_map(As, cs, permutation, lr, b):
    """(M, v) with θ_after = M θ_before + v for one epoch taken in this order."""
    d = cs.shape[1]
    M, v = np.eye(d), np.zeros(d)
    for start in range(0, (len(permutation) // b) * b, b):
        batch = list(permutation[start : start + b])
        step = np.eye(d) - lr * As[batch].mean(0)
        M, v = step @ M, step @ v + lr * cs[batch].mean(0)
    return M, v


def sgd_epoch_moments_reference(X, y, theta0, lr, b, epochs):
    """Exact moments at epoch boundaries (epoch 0..`epochs`) of SGD taking, each
    epoch, a uniform random permutation π of the n examples in blocks
    π[0:b], π[b:2b], …, dropping the last n − ⌊n/b⌋·b: the epoch map θ ↦ M_πθ + v_π
    averaged over all n! permutations (n ≤ 7)."""
    X, y, theta0 = (np.asarray(a, dtype=float) for a in (X, y, theta0))
    n, d = X.shape
    if n > 7:
        raise ValueError("the enumeration is over n! permutations: keep n ≤ 7")
    As, cs = _per_example(X, y)
    maps = [_epoch_map(As, cs, p, lr, b) for p in itertools.permutations(range(n))]
    Ms = np.array([M for M, _ in maps])
    vs = np.array([v for _, v in maps])
    means, seconds = [theta0], [np.outer(theta0, theta0)]
    for _ in range(epochs):
        m, S = means[-1], seconds[-1]
        Mm = Ms @ m
        cross = np.einsum("pa,pb->ab", Mm, vs) / len(maps)
        S_new = (
            np.einsum("pab,bc,pdc->ad", Ms, S, Ms) / len(maps)
            + cross
            + cross.T
            + np.einsum("pa,pb->ab", vs, vs) / len(maps)
        )
        means.append(Mm.mean(0) + vs.mean(0))
        seconds.append(S_new)
    return np.array(means), np.array(seconds)


def _moment_rhs(As, cs, lr, b, replace, order, noise_sd):
    """The vectorised moment ODE of the SDE, on y = [m; vec S]."""
    n, d = cs.shape
    A, c = As.mean(0), cs.mean(0)
    if order == 2:
        drift_A, drift_c = A + lr / 2 * A @ A, c + lr / 2 * A @ c
    else:
        drift_A, drift_c = A, c
    if replace:
        factor = 1 / b
    else:
        factor = 0.0 if b == n else (n - b) / (b * (n - 1))

    def rhs(t, state):
        m, S = state[:d], state[d:].reshape(d, d)
        # E g_i g_iᵀ = A_i S A_i − A_i m c_iᵀ − c_i mᵀ A_i + c_i c_iᵀ
        Amc = np.einsum("iab,b,ic->iac", As, m, cs)
        Egg = np.einsum("iab,bc,icd->iad", As, S, As) - Amc - Amc.transpose(0, 2, 1)
        Egg = (Egg + np.einsum("ia,ib->iab", cs, cs)).mean(0)
        Amc_bar = np.outer(A @ m, c)
        Egbar = A @ S @ A - Amc_bar - Amc_bar.T + np.outer(c, c)
        sigma = factor * (Egg - Egbar) + noise_sd**2 * A / b
        dm = drift_c - drift_A @ m
        dS = (
            -drift_A @ S
            - S @ drift_A
            + np.outer(drift_c, m)
            + np.outer(m, drift_c)
            + lr * sigma
        )
        return np.concatenate([dm, dS.ravel()])

    return rhs


def sde_moments_reference(X, y, theta0, lr, b, ts, order, replace, label_noise=0.0):
    """Means (len(ts), d) and second moments (len(ts), d, d) of the order-1 or
    order-2 stochastic modified equation, by scipy's DOP853 at 1e-12."""
    X, y, theta0 = (np.asarray(a, dtype=float) for a in (X, y, theta0))
    d = X.shape[1]
    As, cs = _per_example(X, y)
    ts = np.asarray(ts, dtype=float)
    start = np.concatenate([theta0, np.outer(theta0, theta0).ravel()])
    sol = solve_ivp(
        _moment_rhs(As, cs, lr, b, replace, order, label_noise),
        (0.0, ts[-1]),
        start,
        method="DOP853",
        t_eval=ts,
        rtol=1e-12,
        atol=1e-12,
    )
    assert sol.success, sol.message
    return sol.y[:d].T, sol.y[d:].T.reshape(len(ts), d, d)


def sde_moments_exact(X, y, theta0, lr, b, ts, order, replace, label_noise=0.0):
    """The same moments in closed form: the moment ODE is linear with constant
    coefficients, ż = Gz + f, so [z; 1](t) = expm(t·[[G, f], [0, 0]]) [z₀; 1],
    with G and f read off the right-hand side by probing it at 0 and the unit
    vectors."""
    X, y, theta0 = (np.asarray(a, dtype=float) for a in (X, y, theta0))
    d = X.shape[1]
    size = d + d * d
    rhs = _moment_rhs(*_per_example(X, y), lr, b, replace, order, label_noise)
    f = rhs(0.0, np.zeros(size))
    generator = np.zeros((size + 1, size + 1))
    generator[:size, :size] = np.stack([rhs(0.0, e) - f for e in np.eye(size)], 1)
    generator[:size, size] = f
    start = np.concatenate([theta0, np.outer(theta0, theta0).ravel(), [1.0]])
    z = np.array([expm(t * generator) @ start for t in np.asarray(ts, float)])
    return z[:, :d], z[:, d:size].reshape(len(z), d, d)
