r"""sgd-vs-sde, part (a): SGD against gradient flow and its order-1 and order-2
SDEs on linear regression, from the exact first two moments of each.

Linear regression ℓᵢ(θ) = ½(xᵢᵀθ − yᵢ)² has per-example gradients affine in θ,
so the mean and second moment of SGD (a recursion) and of the SDEs (a linear
ODE) are exact (`flowgap.analysis.sgd_moments`, `sde_moments`). On a fixed
horizon T and a ladder of learning rates η it measures, at T:

- the relative covariance error ‖Cov_SGD − Cov_X‖_F/‖Cov_SGD‖_F of X = gradient
  flow (Cov = 0: error 1), the order-1 and the order-2 SDE;
- the weak error |E L(θ_SGD) − E L(X)| of the training loss, with
  E L = ½⟨A, S⟩ − cᵀm + ‖y‖²/2n for moments (m, S);

and fits each against η on log–log axes. A Monte Carlo check at one η draws
`paths` SGD runs and SDE paths (`stochastic_descent`, `stochastic_flow`) and
compares their sample covariances with the exact ones, entry by entry.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import analysis, dynamics, problems
from .._precision import attainable
from ._settings import SettingError

#: the approximations of SGD compared on the exact moments, with their orders
APPROXIMATIONS = {"gf": "gradient flow", "sde1": "SDE order 1", "sde2": "SDE order 2"}


def regression(key, s):
    """The regression problem of part (a): Gaussian X (n × d), Gaussian β*, and
    y = Xβ* + `noise`·N(0, 1)."""
    return problems.sparse_recovery(
        key, n=s["n"], d=s["d"], sparsity=s["d"], noise=s["noise"]
    )


def squared_error(theta, batch):
    """½ mean over the batch of (xᵢᵀθ − yᵢ)²: the model is θ itself."""
    inputs, targets = batch
    return 0.5 * jnp.mean((inputs @ theta - targets) ** 2)


def expected_loss(x, y, mean, second):
    """E L(θ) = ½⟨A, S⟩ − cᵀm + ‖y‖²/2n for θ with moments (m, S), A = XᵀX/n,
    c = Xᵀy/n (NumPy arrays on the host, JAX arrays when traced)."""
    n = x.shape[0]
    a, c = x.T @ x / n, x.T @ y / n
    return 0.5 * (a * second).sum() - c @ mean + 0.5 * (y @ y) / n


def _covariance(mean, second):
    """Cov = S − mmᵀ (NumPy)."""
    return second - np.outer(mean, mean)


def steps_for(horizon: float, lr: float) -> int:
    """K = T/η, which must be a whole number of steps (to 1e-9)."""
    steps = round(horizon / lr)
    if steps < 1 or abs(steps * lr - horizon) > 1e-9 * horizon:
        raise ValueError(
            f"the horizon T = {horizon:g} is not a whole number of steps of η = {lr:g}"
        )
    return steps


def longest_run(s) -> int:
    """SGD steps to the horizon at the smallest η of the ladder or the Monte
    Carlo check: every exact SGD recursion runs this long (one compiled program,
    η traced) and is read at its own k = T/η."""
    smallest = min(s["lr"] / 2 ** (s["rungs"] - 1), s["mc_lr"])
    return steps_for(s["horizon"], smallest)


def moments_at(problem, lr, s):
    """The exact moments (m, S) at T of SGD (`batch_size`, with replacement),
    gradient flow and the order-1 and order-2 SDEs: dict name → (m, S), NumPy."""
    x, y = problem.inputs, problem.targets
    theta0 = jnp.zeros(x.shape[1], x.dtype)
    common = dict(lr=lr, batch_size=s["batch_size"])
    means, seconds = analysis.sgd_moments(x, y, theta0, steps=longest_run(s), **common)
    k = steps_for(s["horizon"], lr)
    out = {"sgd": (np.asarray(means)[k], np.asarray(seconds)[k])}
    for order in (1, 2):
        means, seconds = analysis.sde_moments(
            x, y, theta0, t1=s["horizon"], order=order, **common
        )
        out[f"sde{order}"] = (np.asarray(means)[-1], np.asarray(seconds)[-1])
    # gradient flow is the order-1 SDE's mean (the drift is linear) with no spread
    mean = out["sde1"][0]
    out["gf"] = (mean, np.outer(mean, mean))
    return out


def _relative_covariance_error(reference, other) -> float:
    cov = _covariance(*reference)
    return float(np.linalg.norm(cov - _covariance(*other)) / np.linalg.norm(cov))


#: an error is resolved above this many precision floors (then fitted)
RESOLVED = 3


def precision_floors(x, y, reference, dtype) -> dict:
    """The errors the working precision alone can put into the two measures at
    one η, from SGD's exact moments (m, S) (`reference`): the moment solves hold
    S and m to the relative tolerance r = `attainable(1e-12, dtype)` (1e-12 in
    float64, 100·ε ≈ 1.2e-5 in float32), so

    - Cov = S − mmᵀ carries ‖δCov‖_F/‖Cov‖_F ≲ r·‖S‖_F/‖Cov‖_F: the
      cancellation amplifies r by ‖S‖/‖Cov‖, which grows like 1/η (the spread
      shrinks with η while the mean does not);
    - E L = ½⟨A, S⟩ − cᵀm + ‖y‖²/2n carries r·(½|⟨A, S⟩| + |cᵀm| + ‖y‖²/2n).

    The floor bounds the error's uncertainty, as a standard error bounds a Monte
    Carlo estimate's; as there (`analysis.weak_error_exponent`), an error counts
    as resolved above `RESOLVED` floors."""
    mean, second = reference
    n = x.shape[0]
    a, c = x.T @ x / n, x.T @ y / n
    r = attainable(1e-12, dtype)
    ratio = np.linalg.norm(second) / np.linalg.norm(_covariance(mean, second))
    terms = 0.5 * abs((a * second).sum()) + abs(c @ mean) + 0.5 * (y @ y) / n
    return dict(cov=r * ratio, weak=r * terms)


def _resolved_fit(lrs, errors, resolved) -> dict:
    """The log–log fit of the resolved errors (all of them when every point is
    resolved), with `points` fitted; NaN slope and interval with fewer than 3."""
    if resolved.sum() < 3:
        nan = float("nan")
        return dict(slope=nan, ci=(nan, nan), points=int(resolved.sum()))
    fit = analysis.loglog_slope(lrs[resolved], errors[resolved])
    return {**fit, "points": int(resolved.sum())}


def ladder(problem, s) -> dict:
    """Covariance and weak errors of each approximation over the ladder
    η_j = lr/2^j, with their log–log fits.

    **Returns:** `lrs`, `cov_error` and `weak_error` (name → errors per η),
    `expected_loss` (name → E L at T per η, SGD included), `floors` (`cov`,
    `weak` → `precision_floors` per η), `resolved` (`cov`/`weak` → name → bool
    per η: error above its floor), `cov_fits` and `weak_fits` (name →
    `loglog_slope` dict of the resolved points, with `points`)."""
    lrs = s["lr"] / 2.0 ** np.arange(s["rungs"])
    x, y = np.asarray(problem.inputs), np.asarray(problem.targets)
    cov_error = {name: [] for name in APPROXIMATIONS}
    losses = {name: [] for name in ("sgd", *APPROXIMATIONS)}
    floors = dict(cov=[], weak=[])
    for lr in lrs:
        moments = moments_at(problem, float(lr), s)
        for name in APPROXIMATIONS:
            cov_error[name].append(
                _relative_covariance_error(moments["sgd"], moments[name])
            )
        for name, value in moments.items():
            losses[name].append(float(expected_loss(x, y, *value)))
        for kind, floor in precision_floors(x, y, moments["sgd"], x.dtype).items():
            floors[kind].append(floor)
    table = analysis.weak_error_exponent(
        lrs, losses["sgd"], {name: losses[name] for name in APPROXIMATIONS}
    )
    errors = dict(cov={k: np.asarray(v) for k, v in cov_error.items()})
    errors["weak"] = table.errors
    floors = {kind: np.asarray(v) for kind, v in floors.items()}
    resolved = {
        kind: {name: e > RESOLVED * floors[kind] for name, e in errors[kind].items()}
        for kind in errors
    }
    fits = {
        kind: {
            name: _resolved_fit(lrs, e, resolved[kind][name])
            for name, e in errors[kind].items()
            if not (kind == "cov" and name == "gf")  # identically 1: no slope
        }
        for kind in errors
    }
    return dict(
        lrs=lrs,
        cov_error=errors["cov"],
        weak_error=errors["weak"],
        expected_loss={k: np.asarray(v) for k, v in losses.items()},
        floors=floors,
        resolved=resolved,
        cov_fits=fits["cov"],
        weak_fits=fits["weak"],
    )


def _finals(problem, s, lr, keys):
    """θ_T of `len(keys)` SGD runs and order-1 SDE paths, (N, d) each."""
    data = (problem.inputs, problem.targets)
    theta0 = jnp.zeros(problem.inputs.shape[1], problem.inputs.dtype)
    steps = steps_for(s["horizon"], lr)
    common = dict(lr=lr, batch_size=s["batch_size"])

    @jax.jit
    def sgd(keys):
        def one(key):
            run = dynamics.stochastic_descent(
                squared_error,
                theta0,
                data,
                steps=steps,
                save_every=steps,
                key=key,
                **common,
            )
            return run.final

        return jax.vmap(one)(keys)

    @jax.jit
    def sde(keys):
        def one(key):
            run = dynamics.stochastic_flow(
                squared_error,
                theta0,
                data,
                t1=s["horizon"],
                key=key,
                dt0=lr * s["sde_dt"],
                max_steps=round(steps / s["sde_dt"]) + 16,
                **common,
            )
            return run.final

        return jax.vmap(one)(keys)

    return dict(sgd=sgd(keys), sde1=sde(keys))


_sample_covariance = jax.jit(analysis.sample_covariance)


def monte_carlo_check(problem, s, key) -> dict:
    """SGD's and the order-1 SDE's sample covariance of θ_T over `paths` draws at
    η = `mc_lr` against their exact covariances, and their E L(θ_T) against the
    exact values: per method the entries (upper triangle) `exact`, `estimate`,
    `stderr`, the largest |z| = |estimate − exact|/stderr over the entries, and
    the loss's z."""
    lr = s["mc_lr"]
    moments = moments_at(problem, lr, s)
    finals = _finals(problem, s, lr, jax.random.split(key, s["paths"]))
    upper = np.triu_indices(problem.inputs.shape[1])
    x, y = np.asarray(problem.inputs), np.asarray(problem.targets)
    out = {}
    for name, samples in finals.items():
        samples = np.asarray(samples)
        estimate, stderr = map(np.asarray, _sample_covariance(samples))
        exact = _covariance(*moments[name])
        z = (estimate - exact) / stderr
        losses = 0.5 * np.mean((samples @ x.T - y) ** 2, axis=1)
        loss_se = np.std(losses, ddof=1) / np.sqrt(losses.size)
        loss_exact = expected_loss(x, y, *moments[name])
        out[name] = dict(
            exact=exact[upper],
            estimate=estimate[upper],
            stderr=stderr[upper],
            max_z=float(np.max(np.abs(z[upper]))),
            loss_z=float((np.mean(losses) - loss_exact) / loss_se),
        )
    return out


def measure(s, key) -> tuple[list, dict, dict]:
    """Part (a): its rows, fits and curves (keys `moments/...`)."""
    k_problem, k_paths = jax.random.split(key)
    problem = regression(k_problem, s)
    found = ladder(problem, s)
    check = monte_carlo_check(problem, s, k_paths)
    rows = [
        dict(
            part="moments",
            lr=float(lr),
            steps=steps_for(s["horizon"], float(lr)),
            **{f"cov_{n}": float(found["cov_error"][n][j]) for n in APPROXIMATIONS},
            **{f"weak_{n}": float(found["weak_error"][n][j]) for n in APPROXIMATIONS},
            below_floor=_below_floor(found, j),
        )
        for j, lr in enumerate(found["lrs"])
    ]
    rows += _fit_rows(found)
    rows += [
        dict(
            part="monte-carlo",
            method=name,
            lr=s["mc_lr"],
            paths=s["paths"],
            max_z=value["max_z"],
            loss_z=value["loss_z"],
        )
        for name, value in check.items()
    ]
    fits = dict(
        cov_slope={n: f["slope"] for n, f in found["cov_fits"].items()},
        weak_slope={n: f["slope"] for n, f in found["weak_fits"].items()},
        mc_max_z=max(v["max_z"] for v in check.values()),
    )
    return rows, fits, _curves(found, check)


def _below_floor(found, j: int) -> list[str]:
    """The entries of row `j` within `RESOLVED` precision floors (e.g. "cov
    SDE1"): not fitted."""
    return [
        f"{'cov' if kind == 'cov' else 'E L'} {name.upper()}"
        for kind, by_name in found["resolved"].items()
        for name, resolved in by_name.items()
        if not resolved[j] and not (kind == "cov" and name == "gf")
    ]


def _fit_rows(found) -> list:
    rows = []
    for quantity, fits in (("covariance", "cov_fits"), ("E L", "weak_fits")):
        for name, fit in found[fits].items():
            rows.append(
                dict(
                    part="moments-fit",
                    quantity=quantity,
                    method=APPROXIMATIONS[name],
                    slope=fit["slope"],
                    ci=tuple(fit["ci"]),
                    points=f"{fit['points']} of {len(found['lrs'])}",
                )
            )
    return rows


def _curves(found, check) -> dict:
    curves = {"lrs": found["lrs"]}
    for name in APPROXIMATIONS:
        curves[f"cov_error/{name}"] = found["cov_error"][name]
        curves[f"weak_error/{name}"] = found["weak_error"][name]
    for name, value in found["expected_loss"].items():
        curves[f"expected_loss/{name}"] = value
    for name, value in check.items():
        for field in ("exact", "estimate", "stderr"):
            curves[f"mc/{name}/{field}"] = value[field]
    return {f"moments/{k}": np.asarray(v) for k, v in curves.items()}


def _errors_at(problem, lr, steps, batch_size: int, s):
    """At the horizon k·η (k = `steps`, traced): the order-1 and order-2 SDEs'
    relative covariance errors and weak errors in E L, and gradient flow's weak
    error, against SGD with `batch_size` (static)."""
    x, y = problem.inputs, problem.targets
    theta0 = jnp.zeros(x.shape[1], x.dtype)
    common = dict(lr=lr, batch_size=batch_size)
    means, seconds = analysis.sgd_moments(
        x, y, theta0, steps=s["sweep_max_steps"], **common
    )
    sgd = (means[steps], seconds[steps])
    cov = analysis.covariance(*sgd)
    loss = expected_loss(x, y, *sgd)
    out = {}
    for order in (1, 2):
        mean, second = analysis.sde_moments(
            x, y, theta0, t1=steps * lr, order=order, **common
        )
        other = (mean[-1], second[-1])
        out[f"cov_error_order{order}"] = jnp.linalg.norm(
            cov - analysis.covariance(*other)
        ) / jnp.linalg.norm(cov)
        out[f"weak_error_order{order}"] = jnp.abs(loss - expected_loss(x, y, *other))
        if order == 1:
            flow = (other[0], jnp.outer(other[0], other[0]))
            out["weak_error_gf"] = jnp.abs(loss - expected_loss(x, y, *flow))
            out["cov_ratio"] = jnp.trace(cov) / jnp.trace(analysis.covariance(*other))
    return out


def point(settings, *, key, lr, batch_size):
    """One `flowgap sweep` point: the regression problem drawn by `key`, SGD with
    step `lr` and batch size `batch_size` (with replacement) against its SDEs at
    the horizon k·η, k = round(`horizon`/η), from the exact moments.

    The batch size fixes array shapes, so it cannot be traced: the program holds
    one branch per batch size in `sweep_batch_sizes` (`lax.switch`; vmapped,
    every branch runs and the point's batch size selects one), so the whole grid
    still compiles once; a batch size outside that list is an error.

    **Returns:** `cov_error` (the order-1 SDE's ‖Cov_SGD − Cov_SDE‖_F/‖Cov_SGD‖_F,
    the sweep's metric), `cov_error_order2`, `weak_error_order1`,
    `weak_error_order2`, `weak_error_gf` (|E L_SGD − E L_X| at the horizon),
    `cov_ratio` (tr Cov_SGD / tr Cov_SDE1), `steps` and `status` (0, or
    `diverged` where SGD's moments are not finite, as past its stability bound).
    """
    s = settings
    problem = regression(key, s)
    sizes = [int(b) for b in s["sweep_batch_sizes"]]
    if any(b != int(b) or not 1 <= b <= s["n"] for b in s["sweep_batch_sizes"]):
        raise SettingError(
            f"setting `sweep_batch_sizes` must hold whole numbers in 1..n = {s['n']}"
        )
    index = jnp.argmin(jnp.abs(jnp.asarray(sizes, lr.dtype) - batch_size))
    steps = jnp.round(s["horizon"] / lr).astype(jnp.int32)
    bad = (jnp.asarray(sizes)[index] != batch_size) | (steps < 1)
    bad = bad | (steps > s["sweep_max_steps"])
    steps = eqx.error_if(
        steps,
        bad,
        "a sweep point's batch_size is not in `sweep_batch_sizes`, or horizon/lr "
        "is not within 1..`sweep_max_steps` steps",
    )
    branches = [functools.partial(_errors_at, batch_size=b, s=s) for b in sizes]
    out = jax.lax.switch(index, branches, problem, lr, steps)
    finite = jnp.all(jnp.stack([jnp.isfinite(v) for v in out.values()]))
    diverged = dynamics.status_code(dynamics.RESULTS.diverged)
    return dict(
        cov_error=out.pop("cov_error_order1"),
        **out,
        steps=steps,
        status=jnp.where(finite, 0, diverged),
    )
