import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from .._checks import one_of, positive_int
from .._lanczos import lanczos
from ..dynamics._common import split_model
from ..dynamics._compare import trainable_part


def _flat_problem(fn, model, trainable=None):
    """(θ, v ↦ ∇²F(θ)v): F = fn∘model on the flat trainable parameters (`trainable`
    as in `eqx.partition`; default every floating-point array), the rest of the
    model held fixed; the Hessian-vector product is a jvp of the gradient (no
    Hessian is formed)."""
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
    if init is not None:
        init = jnp.asarray(init, theta.dtype)
        if init.shape != theta.shape:
            raise ValueError(
                f"`init` must be a flat vector of the model's {theta.shape[0]} "
                f"parameters, got shape {init.shape}."
            )
        return init
    key = jax.random.key(0) if key is None else key
    return jax.random.normal(key, theta.shape, theta.dtype)


def hessian_extremes(
    fn,
    model,
    *,
    k=1,
    iters=None,
    method="lanczos",
    init=None,
    key=None,
    trainable=None,
):
    """Top-k eigenpairs of ∇²(fn∘model) in the trainable parameters (see
    `sharpness`); returns (values descending, vectors (D, k))."""
    one_of("method", method, ("lanczos", "power"))
    k = positive_int("k", k)
    theta, hvp = _flat_problem(fn, model, trainable)
    dim = theta.shape[0]
    iters = min(dim, 64) if iters is None else positive_int("iters", iters)
    if method == "lanczos":
        if k > min(iters, dim):
            raise ValueError(f"`k` must be at most iters = {min(iters, dim)}, got {k}.")
        values, vectors = lanczos(
            lambda v: hvp(theta, v), _start(theta, init, key), min(iters, dim)
        )
        return values[::-1][:k], vectors[:, ::-1][:, :k]
    if k != 1:
        raise ValueError("`k` > 1 needs method='lanczos'.")

    def power(v, _):
        w = hvp(theta, v)
        return w / jnp.linalg.norm(w), None

    v0 = _start(theta, init, key)
    v, _ = lax.scan(power, v0 / jnp.linalg.norm(v0), None, length=iters)
    return (v @ hvp(theta, v))[None], v[:, None]


def sharpness(
    loss,
    model,
    *,
    k: int = 1,
    iters=None,
    method="lanczos",
    init=None,
    key=None,
    return_vectors: bool = False,
    trainable=None,
):
    r"""Sharpness λ_max(∇²L(θ)), from Hessian-vector products only.

    `method="lanczos"` (default): Lanczos with full reorthogonalisation,
    `iters` = min(D, 64) steps; exact once iters = D, and the top Ritz values
    converge first. `method="power"`: power iteration, which finds the eigenvalue of
    largest magnitude (equal to λ_max when the Hessian's top eigenvalue dominates,
    as near a minimum). `init` warm-starts from a previous top eigenvector (flat, in
    `jax.flatten_util.ravel_pytree` order of the trainable parameters), as along
    a trajectory; GD is stable near θ while λ_max < 2/η.

    θ is the trainable part of `model`: the floating-point arrays selected by
    `trainable` (a filter as in `eqx.partition`, as given to the trainers; default
    every floating-point array). Frozen arrays, integer arrays, functions and
    static fields are held fixed, so ∇²L is the Hessian in θ alone.

    **Returns:** λ_max as a scalar array, or the top `k` eigenvalues (descending)
    when k > 1; with `return_vectors=True`, also the eigenvectors as columns.
    """
    values, vectors = hessian_extremes(
        loss,
        model,
        k=k,
        iters=iters,
        method=method,
        init=init,
        key=key,
        trainable=trainable,
    )
    values = values[0] if k == 1 else values
    return (values, vectors) if return_vectors else values


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


def predictor_hessian_norm(
    model, x, *, iters=None, init=None, key=None, mask=None, trainable=None
):
    r"""‖∇²_θ f(θ; x)‖₂, the spectral norm of the predictor's Hessian in the
    parameters at one input x (the quantity bounded for weight-normalised networks,
    Cisneros-Velarde et al. 2024), as max(|λ_max|, |λ_min|) of Lanczos on
    Hessian-vector products. f must be scalar (a single output). θ is the part of
    `model` selected by `trainable` (a filter as in `eqx.partition`; default every
    floating-point array); the rest is held fixed.

    `mask` (optional) restricts θ to a block B of the parameters: a pytree shaped
    like `model` (e.g. `jax.tree.map(jnp.zeros_like, eqx.filter(model,
    eqx.is_inexact_array))` with the block set to 1 by `eqx.tree_at`) holding 1 on
    B and 0 elsewhere. Lanczos then runs on M∇²f M, M = diag(mask), whose spectral
    norm is that of the diagonal block ∇²_B f (the other parameters held fixed).
    The mask is traced, so several blocks can be measured under one `jax.vmap`
    with a single compilation.
    """

    def f(m):
        out = m(x)
        if jnp.size(out) != 1:
            raise ValueError(
                f"`model` must have a single output for `predictor_hessian_norm`, got "
                f"shape {jnp.shape(out)}."
            )
        return jnp.reshape(out, ())

    theta, hvp = _flat_problem(f, model, trainable)
    dim = theta.shape[0]
    iters = min(dim, 64) if iters is None else positive_int("iters", iters)
    flat_mask = _flat_mask(mask, theta, trainable)
    # without a mask the weight is 1.0, and × 1.0 is exact: results are unchanged
    weight = 1.0 if flat_mask is None else flat_mask

    def matvec(v):
        return weight * hvp(theta, weight * v)

    values, _ = lanczos(matvec, weight * _start(theta, init, key), min(iters, dim))
    return jnp.max(jnp.abs(values))


def track_sharpness(loss, trajectory, *, iters=None, key=None, trainable=None):
    r"""λ_max(∇²L) at every save of `trajectory`, in the parameters selected by
    `trainable` (as given to the trainer; default every floating-point array),
    each Lanczos run warm-started from the previous save's top eigenvector (one
    compiled scan over the saves). Non-finite saves (after a stop) give NaN.

    **Returns:** array of shape (saves,).
    """
    theta0, _ = _flat_problem(loss, trajectory[0], trainable)
    v0 = _start(theta0, None, key)
    # scan over the array leaves only: functions and static fields have no time axis
    saves, static = eqx.partition(trajectory.models, eqx.is_array)
    return _track(loss, v0, saves, static, iters, trainable)


@eqx.filter_jit
def _track(loss, v0, saves, static, iters, trainable):
    def body(v, save):
        model = eqx.combine(save, static)
        values, vectors = hessian_extremes(
            loss, model, k=1, iters=iters, init=v, trainable=trainable
        )
        finite = jnp.isfinite(values[0])
        return jnp.where(finite, vectors[:, 0], v), jnp.where(
            finite, values[0], jnp.nan
        )

    return lax.scan(body, v0, saves)[1]
