"""Linear stability of gradient descent at initialisation."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._checks import positive_scalar
from .._lanczos import lanczos
from ._common import split_model
from ._flat import FlatLayout
from ._rates import check_rates, restrict_rates


class StabilityWarning(UserWarning):
    """The learning rate exceeds the linear stability limit 2/sharpness."""


def check_stability(
    loss, model, *, lr, rates=None, warn: bool = True, trainable=None
) -> float:
    r"""η·λ_max at θ₀, and a warning when GD is linearly unstable there.

    Near θ₀, GD with rates P is θ ← θ − ηP(g + H(θ − θ₀)); in the variables
    φ = P^{-1/2}θ its linear part is I − ηP^{1/2}HP^{1/2}, stable iff
    η·λ_max(P^{1/2}HP^{1/2}) < 2 (Cohen et al.'s 2/η threshold). λ_max comes from
    Lanczos with full reorthogonalisation on Hessian-vector products (min(D, 64)
    steps from a fixed random start); no Hessian is formed.

    **Arguments:** `loss`, `model` (the initial model), `lr` (> 0, concrete),
    `rates` and `trainable` (as for `gradient_descent`), `warn` (issue a
    `StabilityWarning` when the product is ≥ 2).

    **Returns:** η·λ_max(P^{1/2}HP^{1/2}) at θ₀ (float).
    """
    lr = float(positive_scalar("lr", lr))
    top = _top_eigenvalue(loss, model, rates, trainable)
    product = lr * top
    if warn and product >= 2:
        warnings.warn(
            f"`lr` = {lr:g} exceeds the stability limit 2/sharpness = {2 / top:.4g} at "
            f"initialisation (lr·sharpness = {product:.3g} ≥ 2): GD will leave the "
            "flow and may diverge or enter the edge of stability.",
            StabilityWarning,
            stacklevel=2,
        )
    return product


def stable_learning_rate(
    loss, model, *, fraction=0.5, rates=None, trainable=None
) -> Float[Array, ""]:
    r"""A gradient-descent learning rate at `fraction` of the linear stability
    limit at the model's parameters θ:

    $$\eta = \text{fraction}\cdot\frac{2}{\lambda_{\max}(P^{1/2}HP^{1/2})},
    \qquad H = \nabla^2 L(\theta),$$

    the threshold of `check_stability` (docs: theory/curvature, "Sharpness and
    the 2/η threshold"). λ_max comes from Lanczos on Hessian-vector products
    (min(D, 64) steps from a fixed random start, exact up to round-off once
    D ≤ 64, a lower bound on λ_max otherwise); no Hessian is formed. Traceable:
    the model, the rates and `fraction` may be traced (e.g. under `jax.vmap` over
    init scales).

    **Arguments:** `loss`, `model` (the parameters where the curvature is
    taken), `fraction` (> 0; below 1 for a stable step), `rates` and `trainable`
    (as for `gradient_descent`).

    **Returns:** η, a scalar array; inf where λ_max ≤ 0 (no curvature limits
    the step).
    """
    fraction = positive_scalar("fraction", fraction)
    top = _scaled_sharpness(loss, model, rates, trainable)
    safe = jnp.where(top > 0, top, 1.0)
    return jnp.where(top > 0, fraction * 2 / safe, jnp.inf).astype(top.dtype)


def _top_eigenvalue(loss, model, rates, trainable) -> float:
    """λ_max(P^{1/2}HP^{1/2}) at the model's trainable parameters θ₀, as a
    float."""
    return float(_scaled_sharpness(loss, model, rates, trainable))


def _scaled_sharpness(loss, model, rates, trainable):
    """λ_max(P^{1/2}HP^{1/2}) at the model's trainable parameters θ₀: the top
    eigenvalue of the Hessian of φ ↦ L(θ₀ + P^{1/2}φ) at φ = 0 (traceable)."""
    params, static = split_model(model, trainable)
    layout = FlatLayout.of(params)
    theta0 = layout.ravel(params)
    rates = restrict_rates(check_rates(rates, model), params)
    if rates is None:
        root = jnp.ones_like(theta0)
    else:
        full = jax.tree.map(lambda r, p: jnp.broadcast_to(r, p.shape), rates, params)
        root = jnp.sqrt(layout.ravel(full))
    return _top(loss, theta0, static, layout, root)


@eqx.filter_jit
def _top(loss, theta0, static, layout, root):
    def scaled_loss(phi):
        return loss(eqx.combine(layout.unravel(theta0 + root * phi), static))

    grad = jax.grad(scaled_loss)
    phi0 = jnp.zeros_like(theta0)
    v0 = jax.random.normal(jax.random.key(0), theta0.shape, theta0.dtype)
    values, _ = lanczos(
        lambda v: jax.jvp(grad, (phi0,), (v,))[1], v0, min(theta0.shape[0], 64)
    )
    return values[-1]
