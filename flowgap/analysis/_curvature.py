r"""Curvature from Hessian–vector products: the sharpness λ_max(∇²L), along a
trajectory, and the predictor Hessian's spectral norm.

Each public function validates its options and calls one `eqx.filter_jit`-ed
core whose traced inputs are the loss (a bound method such as `problem.loss`, or
any Equinox module, carries its data as arrays), the model's arrays, `init`,
`key`, `tol` and `mask`: a second call with new parameter values, new data of the
same shape, a new key or a new tolerance reuses the compiled program. What fixes
the program's shape is static: the model's structure, `k`, `iters`, `method`,
`trainable`, and a loss that is a plain function (compared by identity, so a
closure re-created per call compiles again).
"""

import math
import numbers

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree
from jaxtyping import ArrayLike, Float, PRNGKeyArray, PyTree

from .._checks import as_scalar, is_concrete, one_of, positive_int, prng_key
from .._custom_types import ScalarLike
from .._lanczos import LanczosInfo, default_tol, lanczos_top
from .._lanczos import lanczos as lanczos  # `flowgap.analysis.lanczos`
from ..dynamics._common import split_model
from ..dynamics._compare import trainable_part

_MAX_STEPS = 64  # default Lanczos step limit: min(D, 64)


def _flat_problem(fn, model, trainable=None):
    """(θ, (t, v) ↦ ∇²F(t)v): F = fn∘model on the flat trainable parameters
    (`trainable` as in `eqx.partition`; default every floating-point array), the
    rest of the model held fixed; the Hessian-vector product is a jvp of the
    gradient (no Hessian is formed)."""
    params, static = split_model(model, trainable)
    theta, unravel = ravel_pytree(params)

    def value(t):
        out = fn(eqx.combine(unravel(t), static))
        if jnp.shape(out) != ():
            raise ValueError(
                f"the function must return a scalar, got shape {jnp.shape(out)}."
            )
        return out

    grad = jax.grad(value)
    return theta, lambda t, v: jax.jvp(grad, (t,), (v,))[1]


def _start(theta, init, key):
    """The start vector: `init`, or a normal draw from `key`."""
    return jax.random.normal(key, theta.shape, theta.dtype) if init is None else init


def _flat_spec(model, trainable):
    """(D, dtype) of the flat trainable parameters θ (as `ravel_pytree` makes
    them), read off the model without tracing it."""
    params, _ = split_model(model, trainable)
    leaves = jax.tree.leaves(params)
    return sum(jnp.size(leaf) for leaf in leaves), jnp.result_type(*leaves)


def _check_init(init, dim, dtype):
    if init is None:
        return None
    init = jnp.asarray(init, dtype)
    if init.shape != (dim,):
        raise ValueError(
            f"`init` must be a flat vector of the model's {dim} parameters, got "
            f"shape {init.shape}."
        )
    return init


def _check_tol(tol, dtype):
    """`tol` as an array of θ's dtype (√ε of it by default): always an array, so
    that a new tolerance is a new value of the same traced input."""
    if tol is None:
        return jnp.asarray(default_tol(dtype), dtype)
    if isinstance(tol, numbers.Real) and not isinstance(tol, bool):
        if not (math.isfinite(tol) and tol >= 0):
            raise ValueError(f"`tol` must be a finite number ≥ 0, got {tol!r}.")
        return jnp.asarray(tol, dtype)
    tol = as_scalar("tol", tol).astype(dtype)
    if is_concrete(tol):
        if not (bool(jnp.isfinite(tol)) and float(tol) >= 0):
            raise ValueError(f"`tol` must be a finite number ≥ 0, got {float(tol)!r}.")
        return tol
    return eqx.error_if(
        tol, ~(jnp.isfinite(tol) & (tol >= 0)), "`tol` must be finite and ≥ 0."
    )


def _options(k, iters, method, key):
    one_of("method", method, ("lanczos", "power"))
    k = positive_int("k", k)
    if k != 1 and method == "power":
        raise ValueError("`k` > 1 needs method='lanczos'.")
    iters = None if iters is None else positive_int("iters", iters)
    # the default key is an array too: passing a key never changes the program
    return k, iters, jax.random.key(0) if key is None else prng_key("key", key)


def _top_pairs(theta, hvp, v0, tol, *, k, iters, method, which="algebraic"):
    """(values (k,), vectors (D, k), `LanczosInfo`) of the operator v ↦ hvp(θ, v):
    residual-stopped Lanczos from v0, or `iters` power iterations."""
    dim = theta.shape[0]
    steps = min(dim, _MAX_STEPS) if iters is None else iters
    if method == "lanczos":
        steps = min(steps, dim)  # D steps span the whole space
        if k > steps:
            raise ValueError(f"`k` must be at most iters = {steps}, got {k}.")
        return lanczos_top(
            lambda v: hvp(theta, v), v0, steps, k=k, tol=tol, which=which
        )

    def power(v, _):
        w = hvp(theta, v)
        return w / jnp.linalg.norm(w), None

    v, _ = lax.scan(power, v0 / jnp.linalg.norm(v0), None, length=steps)
    w = hvp(theta, v)
    value = v @ w
    residual = jnp.linalg.norm(w - value * v)
    info = LanczosInfo(
        jnp.array(steps + 1, jnp.int32),
        residual[None],
        residual <= tol * jnp.abs(value),
    )
    return value[None], v[:, None], info


@eqx.filter_jit
def _hessian_top(fn, model, init, key, tol, *, k, iters, method, trainable):
    theta, hvp = _flat_problem(fn, model, trainable)
    v0 = _start(theta, init, key)
    values, vectors, info = _top_pairs(
        theta, hvp, v0, tol, k=k, iters=iters, method=method
    )
    return values[0] if k == 1 else values, vectors, info


def _returned(value, vectors, info, return_vectors, return_info):
    out = (value,) + ((vectors,) if return_vectors else ())
    out += (info,) if return_info else ()
    return out if len(out) > 1 else value


def sharpness(
    loss,
    model: PyTree,
    *,
    k: int = 1,
    iters: int | None = None,
    tol: ScalarLike | None = None,
    method: str = "lanczos",
    init: Float[ArrayLike, " dim"] | None = None,
    key: PRNGKeyArray | None = None,
    return_vectors: bool = False,
    return_info: bool = False,
    trainable=None,
):
    r"""Sharpness λ_max(∇²L(θ)), from Hessian-vector products only.

    `method="lanczos"` (default): Lanczos with full reorthogonalisation
    (`lanczos_top`), stopped at the first step where the top `k` Ritz pairs
    (θ_i, y_i) all have residual ‖∇²L y_i − θ_i y_i‖ ≤ `tol`·|θ_i| (the test of
    scipy's `eigsh`), or after `iters` steps (default min(D, 64); exact once
    iters = D). The default tol = √ε (1.5e-8 in float64, 3.5e-4 in float32)
    leaves λ_max exact to rounding: its error is ≤ residual²/gap, with gap the
    distance to the next eigenvalue. `method="power"`: `iters` power iterations
    (default min(D, 64)), which find the eigenvalue of largest magnitude (equal
    to λ_max when the Hessian's top eigenvalue dominates, as near a minimum).
    `init` warm-starts from a previous top eigenvector (flat, in
    `jax.flatten_util.ravel_pytree` order of the trainable parameters), as
    along a trajectory; GD is stable near θ while λ_max < 2/η.

    θ is the trainable part of `model`: the floating-point arrays selected by
    `trainable` (a filter as in `eqx.partition`, as given to the trainers; default
    every floating-point array). Frozen arrays, integer arrays, functions and
    static fields are held fixed, so ∇²L is the Hessian in θ alone.

    Compiled once per model structure (and `k`, `iters`, `method`,
    `trainable`): new parameter values, new data carried by `loss` (e.g.
    `problem.loss`, a bound method of an Equinox module), a new `init`, `key` or
    `tol` reuse it. Traceable and vmappable; not reverse-differentiable with
    `method="lanczos"` (its loop stops on a traced test).

    **Returns:** λ_max as a scalar array, or the top `k` eigenvalues (descending)
    when k > 1; with `return_vectors=True`, also the eigenvectors as columns
    (D, k); with `return_info=True`, last, a `LanczosInfo` (`num_hvps`: the
    Hessian–vector products used; `residuals`; `converged`).
    """
    k, iters, key = _options(k, iters, method, key)
    dim, dtype = _flat_spec(model, trainable)
    values, vectors, info = _hessian_top(
        loss,
        model,
        _check_init(init, dim, dtype),
        key,
        _check_tol(tol, dtype),
        k=k,
        iters=iters,
        method=method,
        trainable=trainable,
    )
    return _returned(values, vectors, info, return_vectors, return_info)


def _flat_mask(mask, theta, trainable):
    """`mask` (a model-shaped pytree of 0/1 floating arrays) on the trainable
    arrays, flattened in the order of θ; None stays None."""
    if mask is None:
        return None
    flat, _ = ravel_pytree(trainable_part(mask, trainable))
    if flat.shape != theta.shape:
        raise ValueError(
            "`mask` must be shaped like the model: a floating array for each of its "
            f"trainable arrays ({theta.shape[0]} entries in all), got {flat.shape[0]} "
            "entries; build it e.g. with `jax.tree.map(jnp.zeros_like, "
            "eqx.filter(model, eqx.is_inexact_array))` and `eqx.tree_at`."
        )
    return flat.astype(theta.dtype)


@eqx.filter_jit
def _predictor_norm(model, x, init, key, mask, tol, *, iters, trainable):
    def f(m):
        out = m(x)
        if jnp.size(out) != 1:
            raise ValueError(
                f"`model` must have a single output for `predictor_hessian_norm`, got "
                f"shape {jnp.shape(out)}."
            )
        return jnp.reshape(out, ())

    theta, hvp = _flat_problem(f, model, trainable)
    flat_mask = _flat_mask(mask, theta, trainable)
    # without a mask the weight is 1.0, and × 1.0 is exact: results are unchanged
    weight = 1.0 if flat_mask is None else flat_mask

    def masked(t, v):
        return weight * hvp(t, weight * v)

    values, _, info = _top_pairs(
        theta,
        masked,
        weight * _start(theta, init, key),
        tol,
        k=1,
        iters=iters,
        method="lanczos",
        which="magnitude",
    )
    return jnp.abs(values[0]), info


def predictor_hessian_norm(
    model: PyTree,
    x: Float[ArrayLike, "..."],
    *,
    iters: int | None = None,
    tol: ScalarLike | None = None,
    init: Float[ArrayLike, " dim"] | None = None,
    key: PRNGKeyArray | None = None,
    mask: PyTree | None = None,
    return_info: bool = False,
    trainable=None,
):
    r"""‖∇²_θ f(θ; x)‖₂, the spectral norm of the predictor's Hessian in the
    parameters at one input x (the quantity bounded for weight-normalised networks,
    Cisneros-Velarde et al. 2024), as the Ritz value of largest magnitude,
    max(|λ_max|, |λ_min|), of Lanczos on Hessian-vector products, stopped as in
    `sharpness` (residual ≤ `tol`·|θ|, default √ε, or `iters` steps, default
    min(D, 64)). f must be scalar (a single output). θ is the part of `model`
    selected by `trainable` (a filter as in `eqx.partition`; default every
    floating-point array); the rest is held fixed.

    `mask` (optional) restricts θ to a block B of the parameters: a pytree shaped
    like `model` (e.g. `jax.tree.map(jnp.zeros_like, eqx.filter(model,
    eqx.is_inexact_array))` with the block set to 1 by `eqx.tree_at`) holding 1 on
    B and 0 elsewhere. Lanczos then runs on M∇²f M, M = diag(mask), whose spectral
    norm is that of the diagonal block ∇²_B f (the other parameters held fixed).
    The mask is traced, so several blocks can be measured under one `jax.vmap`
    with a single compilation; x, `init`, `key` and `tol` are traced too.

    **Returns:** the norm as a scalar array; with `return_info=True`, also a
    `LanczosInfo` (as in `sharpness`).
    """
    _, iters, key = _options(1, iters, "lanczos", key)
    dim, dtype = _flat_spec(model, trainable)
    norm, info = _predictor_norm(
        model,
        x,
        _check_init(init, dim, dtype),
        key,
        mask,
        _check_tol(tol, dtype),
        iters=iters,
        trainable=trainable,
    )
    return (norm, info) if return_info else norm


@eqx.filter_jit
def _track(loss, saves, static, key, tol, *, iters, trainable):
    first = eqx.combine(jax.tree.map(lambda a: a[0], saves), static)
    theta0, _ = _flat_problem(loss, first, trainable)
    v0 = _start(theta0, None, key)

    def body(v, save):
        theta, hvp = _flat_problem(loss, eqx.combine(save, static), trainable)

        def run():
            return _top_pairs(theta, hvp, v, tol, k=1, iters=iters, method="lanczos")

        def skip():  # a save after a stop: nothing to measure
            nan = jnp.full((1,), jnp.nan, theta.dtype)
            return (
                nan,
                v[:, None],
                LanczosInfo(jnp.array(0, jnp.int32), nan, jnp.array(False)),
            )

        values, vectors, info = lax.cond(jnp.all(jnp.isfinite(theta)), run, skip)
        finite = jnp.isfinite(values[0])
        value = jnp.where(finite, values[0], jnp.nan)
        return jnp.where(finite, vectors[:, 0], v), (value, info)

    return lax.scan(body, v0, saves)[1]


def track_sharpness(
    loss,
    trajectory,
    *,
    iters: int | None = None,
    tol: ScalarLike | None = None,
    key: PRNGKeyArray | None = None,
    return_info: bool = False,
    trainable=None,
):
    r"""λ_max(∇²L) at every save of `trajectory`, in the parameters selected by
    `trainable` (as given to the trainer; default every floating-point array),
    each Lanczos run stopped as in `sharpness` (`tol`, `iters`) and warm-started
    from the previous save's top eigenvector, so that a slowly moving eigenvector
    converges in a few steps. One compiled scan over the saves, compiled once per
    model structure and number of saves (new trajectories, data, keys and `tol`
    reuse it). Non-finite saves (after a stop) give NaN and use no products.

    **Returns:** array of shape (saves,); with `return_info=True`, also a
    `LanczosInfo` whose fields have a leading saves axis (`num_hvps` (saves,)).
    """
    _, iters, key = _options(1, iters, "lanczos", key)
    # scan over the array leaves only: functions and static fields have no time axis
    saves, static = eqx.partition(trajectory.models, eqx.is_array)
    tol = _check_tol(tol, _flat_spec(trajectory.models, trainable)[1])
    values, info = _track(
        loss, saves, static, key, tol, iters=iters, trainable=trainable
    )
    return (values, info) if return_info else values
