r"""Exact first and second moments of SGD on linear regression, and of its
stochastic modified equations (docs: theory/sgd).

Linear regression with n examples: $\ell_i(\theta) = \tfrac12(x_i^\top\theta -
y_i)^2$, $L = \frac1n\sum_i \ell_i$, per-example gradients $g_i(\theta) = A_i\theta
- c_i$ with $A_i = x_ix_i^\top$, $c_i = x_iy_i$, and $\nabla L = A\theta - c$ with
$A = \frac1n\sum_i A_i$, $c = \frac1n\sum_i c_i$. Everything is quadratic in θ, so
the mean $m = \mathbb E\,\theta$ and second moment $S = \mathbb E\,\theta\theta^\top$
obey closed equations, for SGD (a recursion) and for its SDE (a linear ODE).
"""

import math
import numbers

import diffrax
import equinox as eqx
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, ArrayLike, Float, Real

from .._checks import as_scalar, is_concrete, one_of, positive_int, positive_scalar
from .._precision import attainable_tolerances
from ..dynamics._flow_options import check_ts

Moments = tuple[Float[Array, "saves d"], Float[Array, "saves d d"]]


def _check_problem(inputs, targets, theta0):
    """(X, y, θ₀) as float arrays of shapes (n, d), (n,), (d,)."""
    arrays = [jnp.asarray(a) for a in (inputs, targets, theta0)]
    dtype = jnp.result_type(*arrays)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    x, y, theta0 = (a.astype(dtype) for a in arrays)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"`inputs` must have shape (n, d), got {x.shape}.")
    n, d = x.shape
    if y.shape != (n,):
        raise ValueError(f"`targets` must have shape (n,) = ({n},), got {y.shape}.")
    if theta0.shape != (d,):
        raise ValueError(f"`theta0` must have shape (d,) = ({d},), got {theta0.shape}.")
    return x, y, theta0


def _check_batch_size(batch_size, n: int) -> int:
    batch_size = positive_int("batch_size", batch_size)
    if batch_size > n:
        raise ValueError(
            f"`batch_size` must be at most the number of examples n = {n}, got "
            f"{batch_size}."
        )
    return batch_size


def _check_label_noise(value, dtype):
    """δ ≥ 0, finite: checked now if concrete, else via `eqx.error_if`."""
    arr = as_scalar("label_noise", value).astype(dtype)
    if is_concrete(arr):
        if not (math.isfinite(float(arr)) and float(arr) >= 0):
            raise ValueError(
                f"`label_noise` must be a finite number ≥ 0, got {float(arr)!r}."
            )
        return arr
    return eqx.error_if(
        arr, ~(jnp.isfinite(arr) & (arr >= 0)), "`label_noise` must be finite, ≥ 0."
    )


def _sampling_factor(n: int, b: int, replace) -> float:
    r"""κ with $\Sigma_b = \kappa\,\mathrm{Cov}_i(g_i)$: 1/b with replacement,
    $\frac{n-b}{b(n-1)}$ for a uniform b-subset (0 when b = n)."""
    if not isinstance(replace, bool):
        raise TypeError(f"`replace` must be True or False, got {replace!r}.")
    if replace:
        return 1.0 / b
    return 0.0 if b == n else (n - b) / (b * (n - 1))


def _mean_field(x, y):
    """A = XᵀX/n and c = Xᵀy/n, so ∇L(θ) = Aθ − c."""
    n = x.shape[0]
    return x.T @ x / n, x.T @ y / n


def _expected_noise(x, y, mean, second, kappa, noise_var):
    r"""$\mathbb E\,\Sigma(\theta)$ over θ with moments (m, S): the per-step gradient
    noise covariance, $\kappa\,\mathrm{Cov}_i(g_i) + \tfrac{\delta^2}{b}A$.

    $\mathbb E\,\frac1n\sum_i g_ig_i^\top = \frac1n\sum_i w_iA_i$ with
    $w_i = \mathbb E(x_i^\top\theta - y_i)^2 = x_i^\top Sx_i - 2y_ix_i^\top m + y_i^2$
    (as $g_i = (x_i^\top\theta - y_i)x_i$), and
    $\mathbb E\,\bar g\bar g^\top = ASA - Amc^\top - cm^\top A + cc^\top$. Label
    noise adds $-\frac1b\sum_j\varepsilon_jx_j$ to ĝ, of covariance
    $\frac{\delta^2}{b^2}\sum_j A_{i_j}$, whose mean over the batch is
    $\delta^2A/b$; `noise_var` is δ²/b.
    """
    a, c = _mean_field(x, y)
    n = x.shape[0]
    w = jnp.einsum("id,de,ie->i", x, second, x) - 2 * y * (x @ mean) + y**2
    per_example = (x.T * w) @ x / n
    am = a @ mean
    full = a @ second @ a - jnp.outer(am, c) - jnp.outer(c, am) + jnp.outer(c, c)
    return kappa * (per_example - full) + noise_var * a


@eqx.filter_jit
def _recursion(x, y, theta0, lr, kappa, noise_var, steps: int):
    """(m_k, S_k) for k = 0..steps, one `lax.scan` step per SGD step."""
    a, c = _mean_field(x, y)
    contraction = jnp.eye(a.shape[0], dtype=a.dtype) - lr * a

    def step(carry, _):
        mean, second = carry
        drift = jnp.outer(contraction @ mean, c)
        noise = _expected_noise(x, y, mean, second, kappa, noise_var)
        new_second = (
            contraction @ second @ contraction.T
            + lr * (drift + drift.T)
            + lr**2 * (jnp.outer(c, c) + noise)
        )
        new_mean = contraction @ mean + lr * c
        return (new_mean, new_second), (new_mean, new_second)

    start = (theta0, jnp.outer(theta0, theta0))
    _, (means, seconds) = lax.scan(step, start, None, length=steps)
    return (
        jnp.concatenate([theta0[None], means]),
        jnp.concatenate([start[1][None], seconds]),
    )


def sgd_moments(
    inputs: Real[ArrayLike, "n d"],
    targets: Real[ArrayLike, " n"],
    theta0: Real[ArrayLike, " d"],
    *,
    lr: Real[ArrayLike, ""],
    batch_size: int,
    steps: int,
    replace: bool = True,
    label_noise: Real[ArrayLike, ""] = 0.0,
) -> Moments:
    r"""The exact mean and second moment of SGD on linear regression, at every step.

    SGD with batch size b and step η, $\theta_{k+1} = \theta_k - \eta\hat g_k$, ĝ
    the mean of $g_i$ over the batch $B_k$, has $\mathbb E[\hat g\mid\theta] =
    A\theta - c$ and $\mathrm{Cov}[\hat g\mid\theta] = \Sigma_b(\theta) =
    \kappa\,\mathrm{Cov}_i(g_i(\theta))$, with the population covariance
    $\mathrm{Cov}_i(g_i) = \frac1n\sum_ig_ig_i^\top - \bar g\bar g^\top$ and
    κ = 1/b with replacement (b i.i.d. uniform draws), $\kappa =
    \frac{n-b}{b(n-1)}$ for a uniform b-subset. Label noise δ (targets
    $y_i + \varepsilon$, ε ~ N(0, δ²) fresh per draw and step) adds $\delta^2A/b$.
    Hence, with $D = I - \eta A$,

    $$m_{k+1} = Dm_k + \eta c,\qquad
    S_{k+1} = DS_kD^\top + \eta(Dm_kc^\top + cm_k^\top D^\top) + \eta^2cc^\top
    + \eta^2\,\mathbb E\,\Sigma_b(\theta_k),$$

    where $\mathbb E\,\Sigma_b$ is exact in (m_k, S_k): the per-example second
    moments are $\mathbb E\,g_ig_i^\top = w_iA_i$ with $w_i = x_i^\top Sx_i
    - 2y_ix_i^\top m + y_i^2$ (docs: theory/sgd).

    `replace=False` here means batches that are independent uniform b-subsets at
    every step. `stochastic_descent(replace=False)` instead walks epochs of
    random permutations, whose batches within an epoch are dependent: for it this
    recursion is exact for the law of one step (and for every step when
    ⌊n/b⌋ = 1), not over several steps of an epoch. There even the mean differs,
    by O(η²) per epoch (random reshuffling's implicit regulariser), and at epoch
    boundaries the covariance is O(η³) over a fixed time instead of O(η), since
    an epoch's first-order update does not depend on the order of its batches.

    **Arguments:**

    - `inputs`, `targets`: X of shape (n, d) and y of shape (n,).
    - `theta0`: the initial parameters θ₀, shape (d,) (deterministic).
    - `lr`: η > 0 (traced: a sweep over η does not recompile).
    - `batch_size`: b in 1..n. `steps`: the number of SGD steps ≥ 1.
    - `replace`: with-replacement draws, or independent b-subsets.
    - `label_noise`: δ ≥ 0, the standard deviation of the label noise.

    **Returns:** `(means, second_moments)`, shapes (steps + 1, d) and
    (steps + 1, d, d): $m_k$ and $S_k = \mathbb E\,\theta_k\theta_k^\top$ for
    k = 0..steps (on the clock t = kη).
    """
    x, y, theta0 = _check_problem(inputs, targets, theta0)
    n = x.shape[0]
    b = _check_batch_size(batch_size, n)
    steps = positive_int("steps", steps)
    kappa = _sampling_factor(n, b, replace)
    lr = positive_scalar("lr", lr).astype(x.dtype)
    noise_var = _check_label_noise(label_noise, x.dtype) ** 2 / b
    return _recursion(x, y, theta0, lr, jnp.asarray(kappa, x.dtype), noise_var, steps)


def _moment_field(t, state, args):
    r"""$\dot m = -(\tilde Am - \tilde c)$,
    $\dot S = -(\tilde AS + S\tilde A) + \tilde cm^\top + m\tilde c^\top
    + \eta\,\mathbb E\,\Sigma_b$."""
    mean, second = state
    x, y, drift_a, drift_c, lr, kappa, noise_var = args
    noise = _expected_noise(x, y, mean, second, kappa, noise_var)
    as_ = drift_a @ second
    cm = jnp.outer(drift_c, mean)
    return (
        drift_c - drift_a @ mean,
        -(as_ + as_.T) + cm + cm.T + lr * noise,
    )


@eqx.filter_jit
def _moment_ode(x, y, theta0, lr, kappa, noise_var, t1, ts, order, tols, max_steps):
    a, c = _mean_field(x, y)
    # ∇(L + η/4‖∇L‖²) = (A + η/2 A²)θ − (c + η/2 Ac). `order` enters as a number,
    # so both orders share one compiled solve.
    correction = 0.5 * lr * (order - 1)
    a, c = a + correction * a @ a, c + correction * a @ c
    rtol, atol = tols
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(_moment_field),
        diffrax.Dopri8(),
        t0=jnp.zeros((), x.dtype),
        t1=t1,
        dt0=None,
        y0=(theta0, jnp.outer(theta0, theta0)),
        args=(x, y, a, c, lr, kappa, noise_var),
        saveat=diffrax.SaveAt(ts=ts),
        # steps land on the saves: Dopri8's dense output between steps is only
        # ~1e-10 accurate here, against ~1e-14 at its steps
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol, step_ts=ts),
        max_steps=max_steps,
    )
    return sol.ys


def sde_moments(
    inputs: Real[ArrayLike, "n d"],
    targets: Real[ArrayLike, " n"],
    theta0: Real[ArrayLike, " d"],
    *,
    lr: Real[ArrayLike, ""],
    batch_size: int,
    t1: Real[ArrayLike, ""],
    ts: Real[ArrayLike, " saves"] | None = None,
    order: int = 1,
    replace: bool = True,
    label_noise: Real[ArrayLike, ""] = 0.0,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 100_000,
) -> Moments:
    r"""The exact mean and second moment of SGD's stochastic modified equation on
    linear regression, on the clock t = kη (docs: theory/sgd).

    The SDE (Itô) $dX = -(\tilde AX - \tilde c)\,dt + \sqrt\eta\,
    \Sigma(X)^{1/2}dW$ has, at order 1, the drift $-\nabla L$ ($\tilde A = A$,
    $\tilde c = c$) and, at order 2, $-\nabla(L + \tfrac\eta4\lVert\nabla
    L\rVert^2)$: $\tilde A = A + \tfrac\eta2A^2$, $\tilde c = c + \tfrac\eta2Ac$.
    Its diffusion is SGD's gradient-noise covariance at both orders,
    $\Sigma = \kappa\,\mathrm{Cov}_i(g_i) + \delta^2A/b$ with the true
    per-example gradients (κ and δ as in `sgd_moments`). Its moments solve the
    linear ODE

    $$\dot m = -(\tilde Am - \tilde c),\qquad
    \dot S = -(\tilde AS + S\tilde A) + \tilde cm^\top + m\tilde c^\top
    + \eta\,\mathbb E\,\Sigma(X),$$

    solved with `diffrax.diffeqsolve` (Dopri8, PID control at `rtol`, `atol`,
    stepping onto every save time).
    Gradient flow is the order-1 mean with zero covariance.

    **Arguments:**

    - `inputs`, `targets`, `theta0`, `lr`, `batch_size`, `replace`,
      `label_noise`: as in `sgd_moments`.
    - `t1`: the final time > 0. `ts`: save times, non-decreasing, from 0 to at
      most t1 (default 0 and t1); SGD's step k is t = kη.
    - `order`: 1 or 2, the drift's order in η.
    - `rtol`, `atol`: the controller's tolerances (default 1e-12 both; for
      data coarser than float64, raised to the floor it can meet, rtol = 100·ε,
      1.2e-5 in float32). `max_steps`: the solver's cap (a solve that reaches it
      raises).

    **Returns:** `(means, second_moments)` at `ts`, shapes (len(ts), d) and
    (len(ts), d, d).
    """
    x, y, theta0 = _check_problem(inputs, targets, theta0)
    n = x.shape[0]
    b = _check_batch_size(batch_size, n)
    if isinstance(order, bool) or not isinstance(order, numbers.Integral):
        raise TypeError(f"`order` must be the integer 1 or 2, got {order!r}.")
    one_of("order", order, (1, 2))
    kappa = jnp.asarray(_sampling_factor(n, b, replace), x.dtype)
    lr = positive_scalar("lr", lr).astype(x.dtype)
    noise_var = _check_label_noise(label_noise, x.dtype) ** 2 / b
    t1 = positive_scalar("t1", t1).astype(x.dtype)
    ts = check_ts(ts, t1).astype(x.dtype)
    # 1e-12 is far below what float32 can meet: its solve would crawl on round-off
    default = attainable_tolerances(1e-12, 1e-12, x.dtype)
    rtol = default[0] if rtol is None else rtol
    atol = default[1] if atol is None else atol
    tols = (positive_scalar("rtol", rtol), positive_scalar("atol", atol))
    max_steps = positive_int("max_steps", max_steps)
    return _moment_ode(
        x,
        y,
        theta0,
        lr,
        kappa,
        noise_var,
        t1,
        ts,
        jnp.asarray(order, x.dtype),
        tols,
        max_steps,
    )


def covariance(
    means: Real[ArrayLike, "*saves d"], second_moments: Real[ArrayLike, "*saves d d"]
) -> Float[Array, "*saves d d"]:
    r"""$\mathrm{Cov}\,\theta = S - mm^\top$ at every save."""
    means, second_moments = jnp.asarray(means), jnp.asarray(second_moments)
    return second_moments - means[..., :, None] * means[..., None, :]
