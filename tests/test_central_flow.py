"""The central flow (`CentralFlowField`, `central_flow`) and its semidefinite QP
(`solve_psd_qp`): exact gradient flow below the edge, closed-form toys at the
edge (k = 1 and k = 2), the QP against independent references, vmap, bad input.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from flowgap.dynamics._central import CentralFlowField, central_flow
from flowgap.dynamics._flow import gradient_flow
from flowgap.dynamics._psd_qp import _iterative, solve_psd_qp

# ---------------------------------------------------------------- the toys
# L(θ) = Σ_i ½ y_i x_i² − c_i y_i on θ = (x_1, y_1, x_2, y_2, …). From x = 0,
# x stays 0 (∂L/∂x_i = y_i x_i), H = diag(y_1, 0, y_2, 0, …), so the top
# eigenvalues are the y_i with eigenvectors e_{x_i}, and gradient flow sharpens
# linearly: ẏ_i = c_i. With g_ii = ∇(e_{x_i}ᵀHe_{x_i}) = e_{y_i} and g_ij = 0
# (i ≠ j), α'_ii = ⟨e_{y_i}, ∇L⟩ = −c_i and 𝓑 = diag on the diagonal entries, so
# the QP decouples: σ_i² = X_ii = max(0, −2C_ii) = 2 max(0, c_i − κ(2/η − y_i)),
# and ẏ_i = c_i − σ_i²/2 = min(c_i, κ(2/η − y_i)). Hence, with
# t_i* = (2/η − c_i/κ − y_i(0))/c_i (activation: the sharpening rate c_i equals
# κ times the gap),
#   y_i(t) = y_i(0) + c_i t                        for t ≤ t_i*,
#   y_i(t) = 2/η − (c_i/κ) e^{−κ(t − t_i*)}        for t ≥ t_i*,
#   σ_i²(t) = 2 c_i (1 − e^{−κ(t − t_i*)})₊,
# and the predicted loss is L + ½ Σ_i σ_i² y_i with L = −Σ_i c_i y_i.


_TRACES = []  # one entry per trace of the toy loss (≈ per compilation)


def _toy_loss(theta):
    _TRACES.append(1)
    x, y = theta[0::2], theta[1::2]
    rates = jnp.array([1.0, 0.5])[: x.shape[0]]
    return jnp.sum(0.5 * y * x**2 - rates * y)


def _toy_exact(ts, lr, y0, c):
    kappa = 1 / lr  # the default stabilisation
    ts = np.asarray(ts)[:, None]
    y0, c = np.asarray(y0)[None], np.asarray(c)[None]
    tstar = (2 / lr - c / kappa - y0) / c
    after = ts >= tstar
    decay = np.exp(-kappa * np.where(after, ts - tstar, 0.0))
    y = np.where(after, 2 / lr - c / kappa * decay, y0 + c * ts)
    sigma2 = np.where(after, 2 * c * (1 - decay), 0.0)
    loss = -np.sum(c * y, axis=1)
    return y, sigma2, loss + 0.5 * np.sum(sigma2 * y, axis=1)


# k = 1, from y = 1: with η = 0.5 (2/η = 4, κ = 2) activation at y = 3.5, t = 2.5
_ONE_RUN = dict(t1=8.0, ts=jnp.linspace(0.0, 8.0, 33), rtol=1e-10, atol=1e-12)


def _check_one(traj, lr):
    y, sigma2, predicted = _toy_exact(_ONE_RUN["ts"], lr, [1.0], [1.0])
    y, sigma2 = y[:, 0], sigma2[:, 0]
    # The field is continuous but its derivative jumps at activation; at
    # rtol 1e-10 the kink costs ~4e-9 in y and 4κ·that in σ² (measured), so
    # 1e-6 (the brief's bound) holds with a wide margin.
    assert traj.successful
    assert np.all(np.abs(traj.models[:, 0]) < 1e-12)  # x stays at 0
    assert np.allclose(traj.models[:, 1], y, rtol=0, atol=1e-6)
    assert np.allclose(traj.aux["sharpness"], y, rtol=0, atol=1e-6)
    assert np.allclose(traj.aux["sigma_trace"], sigma2, rtol=0, atol=1e-6)
    assert np.allclose(traj.aux["predicted_loss"], predicted, rtol=0, atol=1e-6)
    # once active (σ² > 0), held below 2/η, approaching it as e^{−κ(t − t*)}/κ
    active = sigma2 > 1e-3
    assert np.all(traj.aux["sigma_trace"][active] > 0) and active.sum() > 10
    gap = 2 / lr - traj.aux["sharpness"][active]
    assert np.all(gap > 0) and np.all(np.diff(gap) < 0) and gap[-1] < 1e-3
    assert np.all(traj.aux["qp_residual"] <= 1e-14)  # closed form: round-off


# k = 2 runs share one compiled program (same shapes; η and tolerances traced)
_TWO_THETA0 = jnp.array([0.0, 1.0, 0.0, 0.5])
_TWO_RUN = dict(t1=9.0, ts=jnp.linspace(0.0, 9.0, 37), rtol=1e-10, atol=1e-12)


def test_below_the_edge_it_is_gradient_flow():
    # 2/η = 40 against a sharpness ≤ 10: C ≥ κ·30 = 600 ≫ |α'| ~ 1, so X = 0
    # exactly and the field is −∇L bit for bit; 1e-10 is loose on purpose.
    # From x ≠ 0 the toy is a coupled nonlinear flow (x decays while y grows).
    theta0 = jnp.array([0.3, 1.0, 0.2, 0.5])
    central = central_flow(_toy_loss, theta0, lr=0.05, k=2, **_TWO_RUN)
    plain = gradient_flow(_toy_loss, theta0, **_TWO_RUN)
    assert np.allclose(central.models, plain.models, rtol=0, atol=1e-10)
    assert np.all(central.aux["sigma_trace"] == 0)
    assert np.array_equal(central.aux["predicted_loss"], central.loss)
    assert np.all(central.aux["sharpness"] < 0.3 * 2 / 0.05)
    assert central.aux["eigs"].shape == (37, 2)
    # 1 gradient + 4 HVPs (lanczos_steps capped at D = 4) + 3 third derivatives
    evals = central.stats["num_field_evals"] * (1 + 4 + 3)
    assert central.stats["num_grad_evals"] == evals


def test_one_eigenvalue_at_the_edge_matches_the_closed_form():
    _check_one(central_flow(_toy_loss, jnp.array([0.0, 1.0]), lr=0.5, **_ONE_RUN), 0.5)


def test_two_eigenvalues_at_the_edge_match_the_closed_form():
    # k = 2 goes through the iterative QP (FISTA + Newton); the edges activate
    # at t = 2.5 and 6.5 and never cross (y_1 > y_2)
    traj = central_flow(_toy_loss, _TWO_THETA0, lr=0.5, k=2, **_TWO_RUN)
    y, sigma2, predicted = _toy_exact(_TWO_RUN["ts"], 0.5, [1.0, 0.5], [1.0, 0.5])
    # tolerances as in the k = 1 test; measured ≤ 1.4e-8 in y, 9e-8 in L̄
    assert traj.successful
    assert np.allclose(traj.models[:, 1::2], y, rtol=0, atol=1e-6)
    assert np.allclose(traj.aux["eigs"], y, rtol=0, atol=1e-6)
    assert np.allclose(traj.aux["sigma_trace"], sigma2.sum(1), rtol=0, atol=1e-6)
    assert np.allclose(traj.aux["predicted_loss"], predicted, rtol=0, atol=1e-6)
    assert np.all(traj.aux["qp_residual"] <= 1e-12)  # the solver's target


def test_vmap_over_learning_rates_matches_solo_runs():
    lrs = jnp.array([0.45, 0.5, 0.55])  # activation at t = 2.99, 2.5, 2.09

    def run(lr):
        return central_flow(_toy_loss, jnp.array([0.0, 1.0]), lr=lr, **_ONE_RUN)

    batched = jax.vmap(run)(lrs)
    solos = [run(lrs[0])]  # compiled now, or already by the k = 1 test
    traces = len(_TRACES)
    solos += [run(lr) for lr in lrs[1:]]
    assert len(_TRACES) == traces  # η is traced: a new η never recompiles
    for i, (lr, solo) in enumerate(zip(lrs, solos)):
        _check_one(jax.tree.map(lambda x: x[i], batched), float(lr))
        _check_one(solo, float(lr))
        # Not bit for bit: gradient_flow itself differs from its solo run in the
        # last bit under vmap (XLA fuses the batched program differently), and at
        # an activation kink such a bit can change an accepted step, after which
        # the runs agree only to the solver's accuracy (each is within ~3e-8 of
        # the closed form at rtol 1e-10), hence 1e-7. Measured here: 2e-31, in
        # the round-off that x carries; a k = 2 run measured 8e-10.
        assert np.allclose(batched.models[i], solo.models, rtol=0, atol=1e-7)
        for name, value in solo.aux.items():
            assert np.allclose(batched.aux[name][i], value, rtol=0, atol=1e-7), name
        assert np.array_equal(batched.ts[i], solo.ts)


# ------------------------------------------------------- the QP, in svec order
# svec: upper triangle row by row, off-diagonal entries times √2 (written out
# here independently of the module).


_CASES = 9
# one compiled program per k (instances batched), shared by the QP tests
_batched_qp = jax.jit(jax.vmap(solve_psd_qp))
_DEFAULTS = dict(tol=1e-12, max_iter=5000, switch=1e-4, round_evals=30)


def _svec(X):
    rows, cols = np.triu_indices(X.shape[0])
    return X[rows, cols] * np.where(rows == cols, 1.0, np.sqrt(2.0))


def _smat(x, k):
    rows, cols = np.triu_indices(k)
    X = np.zeros((k, k))
    X[rows, cols] = x / np.where(rows == cols, 1.0, np.sqrt(2.0))
    return X + np.triu(X, 1).T


def _objective(M, C, X):
    x = _svec(X)
    return 0.25 * x @ M @ x + np.sum(C * X)


def _instance(rng, k, cond):
    n = k * (k + 1) // 2
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    M = q @ np.diag(np.geomspace(1.0, 1.0 / cond, n)) @ q.T
    C = rng.normal(size=(k, k))
    return M, C + C.T


def _planted(rng, k, rank):
    """M, C with a known solution X*: pick X* ⪰ 0 of the given rank and
    Z ⪰ 0 with X*Z = 0 (strictly complementary), set C = Z − ½𝓑[X*]; then
    A(X*) = Z and the KKT conditions hold exactly; M ≻ 0 makes X* unique."""
    M, _ = _instance(rng, k, 100.0)
    Q, _ = np.linalg.qr(rng.normal(size=(k, k)))
    ones = np.arange(k) < rank
    X = Q @ np.diag(np.where(ones, rng.uniform(0.5, 2, k), 0)) @ Q.T
    Z = Q @ np.diag(np.where(ones, 0, rng.uniform(0.5, 2, k))) @ Q.T
    return M, Z - 0.5 * _smat(M @ _svec(X), k), X


def _burer_monteiro(M, C, L0):
    """min over L (k×r) of f(LLᵀ) with scipy's BFGS from L0."""
    k, r = L0.shape

    def f(p):
        L = p.reshape(k, r)
        X = L @ L.T
        G = _smat(0.5 * M @ _svec(X), k) + C  # ∇f(X)
        return _objective(M, C, X), (2 * G @ L).ravel()

    options = dict(gtol=1e-14, maxiter=10_000)
    result = scipy.optimize.minimize(f, L0.ravel(), jac=True, options=options)
    return result.x.reshape(k, r), result.fun


def _reference(M, C, starts=6, seed=0):
    """An independent solution with scipy: Burer–Monteiro X = LLᵀ (L k×k, BFGS
    from several starts) finds the face; its rank r counts the eigenvalues above
    1e-6·‖C‖/λ_max(M) (X* scales as ‖C‖/λ_max(M)). BFGS stalls near 1e-8 (the
    landscape is flat at a rank-deficient X*), so the stationarity equations
    A(LLᵀ)L = 0 are then solved for L k×r by Levenberg–Marquardt from the
    truncated factor, a zero-residual problem it solves to round-off."""
    k = C.shape[0]
    rng = np.random.default_rng(seed)
    runs = [_burer_monteiro(M, C, rng.normal(size=(k, k))) for _ in range(starts)]
    L = min(runs, key=lambda run: run[1])[0]
    values, vectors = np.linalg.eigh(L @ L.T)
    scale = np.linalg.norm(C) / np.linalg.eigvalsh(M).max()
    keep = values > 1e-6 * scale
    if not keep.any():
        return np.zeros((k, k))
    r = int(keep.sum())

    def stationarity(p):
        L = p.reshape(k, r)
        return ((_smat(0.5 * M @ _svec(L @ L.T), k) + C) @ L).ravel()

    L0 = vectors[:, keep] * np.sqrt(values[keep])
    tight = dict(xtol=1e-15, ftol=1e-15, gtol=1e-15)
    L = scipy.optimize.least_squares(stationarity, L0.ravel(), method="lm", **tight)
    L = L.x.reshape(k, r)
    return L @ L.T


def _is_kkt(M, C, X, tol):
    A = _smat(0.5 * M @ _svec(X), C.shape[0]) + C
    scale = np.linalg.norm(C)
    return (
        np.linalg.eigvalsh(X).min() >= -tol * scale
        and np.linalg.eigvalsh(A).min() >= -tol * scale
        and abs(np.sum(X * A)) <= tol * scale**2
    )


@pytest.mark.parametrize("k", [1, 2, 3])
def test_qp_matches_planted_solutions(k):
    rng = np.random.default_rng(k)
    cases = [_planted(rng, k, i % (k + 1)) for i in range(_CASES)]
    M, C, X = map(np.stack, zip(*cases))
    solution = _batched_qp(jnp.asarray(M), jnp.asarray(C))
    # rank 0: C = Z ≻ 0, so the first step is Π₊(−τC) = 0 and X is exactly 0
    zero = np.arange(_CASES) % (k + 1) == 0
    assert np.all(solution.X[zero] == 0) and np.all(solution.residual[zero] == 0)
    # cond(M) = 100, residual ≤ 1e-12: X within ~1e-10; 1e-8 is the brief's bound
    assert np.allclose(solution.X, X, rtol=0, atol=1e-8)
    for i in range(len(cases)):
        gap = _objective(M[i], C[i], np.asarray(solution.X[i])) - _objective(
            M[i], C[i], X[i]
        )
        assert abs(gap) <= 1e-8


@pytest.mark.parametrize("k", [1, 2, 3])
def test_qp_matches_scipy_on_random_instances(k):
    rng = np.random.default_rng(10 + k)
    cases = [_instance(rng, k, cond) for cond in (1.0, 10.0, 1e3) for _ in range(3)]
    assert len(cases) == _CASES  # one compiled batch per k for both QP tests
    M, C = map(np.stack, zip(*cases))
    solution = _batched_qp(jnp.asarray(M), jnp.asarray(C))
    ranks = set()
    for i in range(len(cases)):
        X = np.asarray(solution.X[i])
        reference = _reference(M[i], C[i])
        assert _is_kkt(M[i], C[i], reference, 1e-9)  # the reference is optimal
        assert _is_kkt(M[i], C[i], X, 1e-10)
        # both exact to round-off: measured ≤ 7e-12 with |X| up to 500
        assert np.allclose(X, reference, rtol=0, atol=1e-8)
        objective = _objective(M[i], C[i], X)
        assert abs(objective - _objective(M[i], C[i], reference)) <= 1e-8
        ranks.add(int(np.sum(np.linalg.eigvalsh(X) > 1e-8)))
    assert len(ranks) > 1 or k == 1  # several faces of the cone are exercised


def test_qp_general_solver_matches_the_closed_form_at_k1():
    # k = 1: x = max(0, −2c/m); the iterative path must agree to round-off
    rng = np.random.default_rng(0)
    m = rng.uniform(0.1, 10.0, _CASES)
    c = rng.normal(size=_CASES)
    M, C = jnp.asarray(m)[:, None, None], jnp.asarray(c)[:, None, None]
    closed = _batched_qp(M, C)
    general = jax.jit(jax.vmap(functools.partial(_iterative, **_DEFAULTS)))(M, C)
    assert np.allclose(closed.X[:, 0, 0], np.maximum(0, -2 * c / m), rtol=1e-14)
    assert np.allclose(general.X, closed.X, rtol=1e-12, atol=1e-14)
    assert np.all(closed.X[c > 0] == 0) and np.all(general.X[c > 0] == 0)


def test_qp_unbounded_is_flagged():
    # M = 0 with C ⋡ 0: no X holds the eigenvalue (a quadratic loss past 2/η,
    # where GD diverges). X = 0 at every k, and the residual is |C|/γ ∈ [½, 1).
    for k in (1, 2):
        n = k * (k + 1) // 2
        M = jnp.zeros((_CASES, n, n))
        C = jnp.broadcast_to(-jnp.eye(k), (_CASES, k, k))
        solution = _batched_qp(M, C)
        assert np.all(solution.X == 0) and np.all(solution.residual >= 0.5)


# ----------------------------------------------------------------- bad input


@pytest.mark.parametrize("lr", [0.0, -0.1, float("inf")])
def test_bad_lr_is_named(lr):
    with pytest.raises(ValueError, match="`lr`"):
        central_flow(_toy_loss, jnp.array([0.0, 1.0]), lr=lr, t1=1.0)


@pytest.mark.parametrize("k", [0, 9])
def test_bad_k_is_named(k):
    with pytest.raises(ValueError, match="`k`"):
        central_flow(_toy_loss, jnp.zeros(20), lr=0.1, t1=1.0, k=k)
    with pytest.raises(ValueError, match="`k`"):
        CentralFlowField(0.1, k)


def test_other_bad_input_is_named():
    theta0 = jnp.array([0.0, 1.0])
    with pytest.raises(TypeError, match="`k`|'k'"):  # ours, or the type hook's
        CentralFlowField(0.1, 1.5)
    with pytest.raises(ValueError, match="`k`"):  # k > D = 2
        central_flow(_toy_loss, theta0, lr=0.1, t1=1.0, k=3)
    with pytest.raises(ValueError, match="`lanczos_steps`"):
        CentralFlowField(0.1, 3, lanczos_steps=2)
    with pytest.raises(ValueError, match="`stabilisation`"):
        CentralFlowField(0.1, 1, stabilisation=-1.0)
    with pytest.raises(TypeError, match="`field`"):
        central_flow(_toy_loss, theta0, lr=0.1, t1=1.0, field=None)
    with pytest.raises(ValueError, match="`M`"):
        solve_psd_qp(jnp.eye(2), jnp.eye(2))
