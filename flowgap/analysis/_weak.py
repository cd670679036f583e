import dataclasses
import math
import numbers
from collections.abc import Callable, Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PyTree

from .._checks import is_concrete, positive_int, prng_key
from ._fit import loglog_slope

_RESOLVED = 3.0  # errors within this many standard errors of 0 are noise


class MonteCarloEstimate(eqx.Module):
    r"""What `monte_carlo` returns: the sample mean of a pytree of arrays over N
    independent draws, with its standard error.

    **Fields:**

    - `mean`: $\bar x = \frac1N\sum_i x_i$, leaf by leaf (the sample's structure).
    - `stderr`: $s/\sqrt N$ with $s^2 = \frac1{N-1}\sum_i (x_i-\bar x)^2$ (ddof 1),
      the standard error of `mean`, same structure.
    - `count`: N.
    - `num_nonfinite`: how many of the N draws hold a NaN or ±inf in some leaf.
      They are not dropped: they propagate into `mean` and `stderr` (dropping
      them would bias the estimate towards the runs that stayed finite).

    Build one by hand to pass exact values or external estimates to
    `weak_error_exponent`.
    """

    mean: PyTree[ArrayLike]
    stderr: PyTree[ArrayLike]
    count: int = eqx.field(static=True)
    num_nonfinite: Int[ArrayLike, ""] = 0

    def __repr__(self) -> str:
        means, errs = jax.tree.leaves(self.mean), jax.tree.leaves(self.stderr)
        concrete = all(is_concrete(v) for v in means + errs)
        if concrete and len(means) == len(errs) == 1 and jnp.shape(means[0]) == ():
            mean = f"{float(means[0]):.6g} ± {float(errs[0]):.2g}"
        else:
            mean = eqx.tree_pformat(self.mean, short_arrays=True)
        text = f"MonteCarloEstimate(mean={mean}, count={self.count}"
        bad = self.num_nonfinite
        if not is_concrete(bad) or int(bad) > 0:
            text += f", num_nonfinite={bad if is_concrete(bad) else '?'}"
        return text + ")"


def monte_carlo(
    sample: Callable[..., PyTree[Array]],
    keys,
    *,
    batch_size: int | None = None,
) -> MonteCarloEstimate:
    r"""Monte Carlo estimate of E[x] for x = `sample`(key), over a batch of keys.

    $$\bar x = \frac1N\sum_{i=1}^N x(k_i),\qquad
      \mathrm{se}(\bar x) = \frac{s}{\sqrt N},\quad
      s^2 = \frac{1}{N-1}\sum_{i=1}^N\big(x(k_i) - \bar x\big)^2,$$

    elementwise over the leaves of the sample. By the central limit theorem
    $\bar x$ lies within 3 standard errors of E[x] with probability ≈ 99.7%
    per entry. For E[φ(θ_T)] under SGD or its SDE, pass
    `lambda k: phi(stochastic_descent(..., key=k).final)` (docs: theory/sgd).

    `sample` is vmapped over the keys inside one `eqx.filter_jit` (one compile,
    reused while `sample`, N and `batch_size` stay the same); with `batch_size`
    it is vmapped over chunks of that many keys in turn (`jax.lax.map`), so at
    most `batch_size` runs are held in memory at once. Only the N samples are
    stored, and the moments are computed from them in two passes.

    **Arguments:**

    - `sample`: key → pytree of arrays (all draws of the same structure).
    - `keys`: the N ≥ 2 keys, a key array with leading axis N (typed keys of
      shape (N,), e.g. `jax.random.split(key, N)`, or raw uint32 keys of shape
      (N, 2)); or a pair `(key, N)`, which means `jax.random.split(key, N)`.
    - `batch_size`: keys per vmapped chunk (default: all N at once).

    **Returns:** a `MonteCarloEstimate` (`mean`, `stderr`, `count`,
    `num_nonfinite`).
    """
    if not callable(sample):
        raise TypeError(f"`sample` must be callable, got {type(sample).__name__}.")
    keys = _key_batch(keys)
    if batch_size is not None:
        batch_size = positive_int("batch_size", batch_size)
        batch_size = None if batch_size >= keys.shape[0] else batch_size
    mean, stderr, bad = _moments(sample, keys, batch_size)
    return MonteCarloEstimate(
        mean=mean, stderr=stderr, count=keys.shape[0], num_nonfinite=bad
    )


def _key_batch(keys):
    """`keys` as typed PRNG keys of shape (N,), N ≥ 2."""
    if isinstance(keys, tuple):
        if len(keys) != 2:
            raise TypeError("`keys` as a tuple must be a pair (key, count).")
        count = keys[1]
        if isinstance(count, bool) or not isinstance(count, numbers.Integral):
            raise TypeError(f"`keys` = (key, count) needs an int count, got {count!r}.")
        if count < 2:
            raise ValueError(f"`keys` = (key, count) needs count ≥ 2, got {count}.")
        return jax.random.split(prng_key("keys", keys[0]), int(count))
    if not isinstance(keys, jax.Array | np.ndarray):
        raise TypeError(f"`keys` must be a batch of PRNG keys, got {type(keys)}.")
    if jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key) and keys.ndim == 1:
        batch = keys
    elif keys.dtype == np.uint32 and keys.ndim == 2 and keys.shape[1] == 2:
        batch = jax.random.wrap_key_data(keys)
    else:
        raise TypeError(
            "`keys` must be typed PRNG keys of shape (N,) or raw uint32 keys of "
            f"shape (N, 2), got dtype {keys.dtype} and shape {keys.shape}."
        )
    if batch.shape[0] < 2:
        raise ValueError(
            f"`keys` must hold at least 2 keys for a standard error, got "
            f"{batch.shape[0]}."
        )
    return batch


@eqx.filter_jit
def _moments(sample, keys, batch_size):
    """(mean, standard error, number of draws with a non-finite entry)."""
    if batch_size is None:
        draws = jax.vmap(sample)(keys)
    else:
        draws = jax.lax.map(sample, keys, batch_size=batch_size)
    n = keys.shape[0]
    mean = jax.tree.map(lambda x: jnp.mean(x, axis=0), draws)
    stderr = jax.tree.map(lambda x: jnp.std(x, axis=0, ddof=1) / math.sqrt(n), draws)
    finite = [
        jnp.isfinite(x).reshape(n, -1).all(axis=1) for x in jax.tree.leaves(draws)
    ]
    bad = jnp.sum(~jnp.stack(finite).all(axis=0)) if finite else jnp.asarray(0)
    return mean, stderr, bad


def sample_covariance(
    x: Float[ArrayLike, "..."],
) -> tuple[Float[Array, "dim dim"], Float[Array, "dim dim"]]:
    r"""Sample covariance of N draws of a D-vector, with the standard error of
    each entry.

    $$\hat C_{jk} = \frac{1}{N-1}\sum_i c_{ij}c_{ik},\quad c_i = x_i - \bar x,
      \qquad \mathrm{se}(\hat C_{jk}) = \frac{1}{\sqrt N}\,
      \operatorname{sd}_i\big(c_{ij}c_{ik}\big),$$

    with ddof 1 in both (Ĉ equals `np.cov(x, rowvar=False)`). The standard error
    is that of a mean of the N centred products p_i = c_ij c_ik: for Gaussian
    draws Var(p) = σ_j²σ_k² + σ_jk² (Isserlis). It is computed without forming
    the N×D×D products, from Σ_i p_i² = ((c⊙c)ᵀ(c⊙c))_jk.

    **Arguments:** `x`, shape (N, D) with N ≥ 2 (e.g. `jax.vmap(sample)(keys)`).

    **Returns:** (Ĉ, se(Ĉ)), each of shape (D, D).
    """
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"`x` must be (N, D) draws with N ≥ 2, got shape {x.shape}.")
    n = x.shape[0]
    c = x - jnp.mean(x, axis=0)
    products = c.T @ c
    squares = (c * c).T @ (c * c)
    # Var(p) = (Σp² − (Σp)²/N)/(N−1); no cancellation worth fearing, since
    # Var(p) ≥ mean(p)² for Gaussian draws.
    var = jnp.maximum(squares - products**2 / n, 0.0) / (n - 1)
    return products / (n - 1), jnp.sqrt(var / n)


@dataclasses.dataclass(frozen=True)
class WeakErrorTable:
    """What `weak_error_exponent` returns.

    **Fields:**

    - `lrs`: the learning rates η, shape (m,).
    - `errors`: dict name → weak errors e(η), shape (m,).
    - `stderrs`: dict name → their Monte Carlo standard errors, shape (m,).
    - `resolved`: dict name → bool (m,), e > 3·stderr (the points fitted).
    - `fits`: dict name → the `loglog_slope` dict of the resolved points
      (`slope`, `intercept`, `stderr`, `ci`), plus `points` (how many were
      fitted) and `note` ("" or why points were left out or the fit is NaN).
    - `confidence`: the level of every `ci`.
    - `reference`, `approximations`: the values the errors were computed from,
      as given (e.g. the `MonteCarloEstimate`s, one per η).

    `summary()` (also the `repr`) prints the exponents and the errors.
    """

    lrs: np.ndarray
    errors: dict
    stderrs: dict
    resolved: dict
    fits: dict
    confidence: float
    reference: Sequence | None = None
    approximations: Mapping | None = None

    def summary(self) -> str:
        width = max(13, *(len(str(name)) for name in self.fits))
        ci = f"{self.confidence:.0%} CI"
        lines = [f"{'approximation':<{width}} {'p':>7} {ci:>18} {'points':>7}"]
        for name, fit in self.fits.items():
            low, high = fit["ci"]
            lines.append(
                f"{name!s:<{width}} {fit['slope']:>7.3f} [{low:>7.3f}, {high:>7.3f}] "
                f"{fit['points']:>3d} of {self.lrs.size}"
                + (f"  {fit['note']}" if fit["note"] else "")
            )
        lines.append("")
        lines.append(f"{'η':<10}" + "".join(f"  {n!s:>{width + 6}}" for n in self.fits))
        for i, lr in enumerate(self.lrs):
            cells = (
                f"{self.errors[n][i]:.2e} ± {self.stderrs[n][i]:.1e}"
                + (" " if self.resolved[n][i] else "*")
                for n in self.fits
            )
            lines.append(f"{lr:<10.4g}" + "".join(f"  {c:>{width + 6}}" for c in cells))
        lines.append("* within 3 Monte Carlo standard errors of 0: not fitted")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return "WeakErrorTable\n" + self.summary()


def weak_error_exponent(
    lrs: ArrayLike | Sequence,
    reference: ArrayLike | Sequence,
    approximations: Mapping[str, ArrayLike | Sequence],
    *,
    confidence: float = 0.95,
) -> WeakErrorTable:
    r"""Weak errors of approximations of a stochastic process against a reference,
    and their fitted order in the learning rate η.

    For a test function φ and a fixed horizon T, a process X approximates SGD
    θ_k to weak order p when

    $$e(\eta) = \big|\,\mathbb E\,\varphi(\theta_{T/\eta}) -
      \mathbb E\,\varphi(X_T)\big| \le C\eta^p .$$

    Li, Tai & E (2017, 2019): the SDE dX = −∇L dt + √η Σ^{1/2} dW has p = 1,
    and with the drift −∇(L + (η/4)‖∇L‖²) p = 2; the gradient flow (no noise) is
    order 1 (docs: theory/sgd). For each approximation this returns e(η) on the
    ladder `lrs` and the least-squares slope of log e against log η
    (`loglog_slope`, with a Student-t `confidence` interval).

    For a vector (or pytree) φ, e is the Euclidean norm of the difference d of
    the flattened means. Reference and approximation are independent estimates,
    so the standard error of d is σ = √(σ_ref² + σ_approx²) entrywise, and to
    first order (delta method) that of e = ‖d‖ is ‖d ⊙ σ‖ / ‖d‖ (σ itself for a
    scalar; ‖σ‖ when d = 0, where the first-order formula has no limit). A point
    is *resolved* when e > 3·se(e); an unresolved error is mostly Monte Carlo
    noise, whose size does not scale like η^p, so only resolved points are
    fitted. With fewer than three resolved points the slope and interval are NaN
    and the fit's `note` says so. Near e ≈ se the first-order standard error is
    optimistic for a vector φ (‖d‖ is biased up by about ‖σ‖²/2‖d‖).

    **Arguments:**

    - `lrs`: three or more distinct positive learning rates.
    - `reference`: one value of E φ per η (a list, or an array whose leading
      axis is η): a `MonteCarloEstimate`, or an exact value (a float, an array
      or a pytree of arrays, standard error 0).
    - `approximations`: dict name → a sequence like `reference`, e.g.
      `{"gradient flow": ..., "SDE order 1": ..., "SDE order 2": ...}`.
    - `confidence`: the level of the intervals.

    **Returns:** a `WeakErrorTable`.
    """
    lrs = _check_lrs(lrs)
    if not 0 < confidence < 1:
        raise ValueError(f"`confidence` must lie in (0, 1), got {confidence}.")
    ref = _flat_values("reference", reference, lrs.size)
    if not isinstance(approximations, Mapping) or not approximations:
        raise TypeError("`approximations` must be a non-empty dict name -> values.")
    errors, stderrs, resolved, fits = {}, {}, {}, {}
    for name, values in approximations.items():
        label = f"approximations[{name!r}]"
        approx = _flat_values(label, values, lrs.size)
        errors[name], stderrs[name] = _weak_errors(label, ref, approx)
        resolved[name] = errors[name] > _RESOLVED * stderrs[name]
        fits[name] = _fit(lrs, errors[name], resolved[name], confidence)
    return WeakErrorTable(
        lrs,
        errors,
        stderrs,
        resolved,
        fits,
        float(confidence),
        reference=list(reference),
        approximations={name: list(v) for name, v in approximations.items()},
    )


def _check_lrs(lrs) -> np.ndarray:
    lrs = np.asarray(lrs, dtype=float)
    if lrs.ndim != 1 or lrs.size < 3:
        raise ValueError(
            f"`lrs` must list at least three learning rates, got shape {lrs.shape}."
        )
    if not np.all(np.isfinite(lrs) & (lrs > 0)):
        raise ValueError(f"`lrs` must be positive and finite, got {lrs}.")
    if np.unique(lrs).size != lrs.size:
        raise ValueError(f"`lrs` must be distinct, got {lrs}.")
    return lrs


def _flat_values(name: str, values, size: int) -> list:
    """[(leaf shapes, flattened mean, flattened stderr)] per learning rate."""
    array = isinstance(values, np.ndarray | jax.Array)
    if not (isinstance(values, Sequence) or (array and values.ndim > 0)):
        raise TypeError(f"`{name}` must be a sequence with one value per η.")
    if len(values) != size:
        raise ValueError(
            f"`{name}` must hold one value per learning rate ({size}), got "
            f"{len(values)}."
        )
    flat = []
    for value in values:
        if isinstance(value, MonteCarloEstimate):
            means, errs = jax.tree.leaves(value.mean), jax.tree.leaves(value.stderr)
        else:
            means = jax.tree.leaves(value)
            errs = [np.zeros(np.shape(m)) for m in means]
        means = [np.asarray(m, dtype=float) for m in means]
        errs = [np.asarray(e, dtype=float) for e in errs]
        if not means or [m.shape for m in means] != [e.shape for e in errs]:
            raise ValueError(f"`{name}` holds an empty or inconsistent estimate.")
        flat.append(
            (
                [m.shape for m in means],
                np.concatenate([m.ravel() for m in means]),
                np.concatenate([e.ravel() for e in errs]),
            )
        )
    return flat


def _weak_errors(name: str, ref: list, approx: list) -> tuple[np.ndarray, np.ndarray]:
    """e = ‖d‖ and its first-order standard error ‖d ⊙ σ‖/‖d‖ per η."""
    errors, stderrs = [], []
    for i, ((shape_r, m_r, s_r), (shape_a, m_a, s_a)) in enumerate(zip(ref, approx)):
        if shape_r != shape_a:
            raise ValueError(
                f"`{name}`[{i}] has leaf shapes {shape_a}, but `reference`[{i}] "
                f"has {shape_r}."
            )
        d, sigma = m_r - m_a, np.hypot(s_r, s_a)
        e = float(np.linalg.norm(d))
        errors.append(e)
        stderrs.append(
            float(np.linalg.norm(d * sigma)) / e
            if e > 0
            else float(np.linalg.norm(sigma))
        )
    return np.array(errors), np.array(stderrs)


def _fit(lrs, errors, resolved, confidence: float) -> dict:
    """`loglog_slope` on the resolved points, or NaN with a note."""
    k, m = int(resolved.sum()), lrs.size
    note = f"{m - k} of {m} errors unresolved (e ≤ 3·stderr) or non-finite"
    if k < 3:
        nan = math.nan
        return dict(
            slope=nan,
            intercept=nan,
            stderr=nan,
            ci=(nan, nan),
            points=k,
            note=f"{note}: fewer than 3 resolved points, no fit",
        )
    fit = loglog_slope(lrs[resolved], errors[resolved], confidence=confidence)
    return dict(fit, points=k, note=f"{note}: not fitted" if k < m else "")
