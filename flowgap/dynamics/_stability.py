"""Linear stability of gradient descent at initialisation."""

import warnings

import jax.numpy as jnp

from .._checks import positive_scalar


class StabilityWarning(UserWarning):
    """The learning rate exceeds the linear stability limit 2/sharpness."""


def check_stability(loss, model, *, lr, rates=None, warn: bool = True) -> float:
    r"""η·λ_max at θ₀, and a warning when GD is linearly unstable there.

    Near θ₀, GD with rates P is θ ← θ − ηP(g + H(θ − θ₀)); in the variables
    φ = P^{-1/2}θ its linear part is I − ηP^{1/2}HP^{1/2}, stable iff
    η·λ_max(P^{1/2}HP^{1/2}) < 2 (Cohen et al.'s 2/η threshold). λ_max comes from
    Lanczos on Hessian-vector products (`flowgap.analysis.sharpness`); no Hessian
    is formed.

    **Arguments:** `loss`, `model` (the initial model), `lr` (> 0, concrete),
    `rates` (as for `gradient_descent`), `warn` (issue a `StabilityWarning` when
    the product is ≥ 2).

    **Returns:** η·λ_max(P^{1/2}HP^{1/2}) at θ₀ (float).
    """
    from ..analysis import sharpness  # analysis builds on dynamics
    from ..invariants._flat import flat_rates, flatten

    lr = float(positive_scalar("lr", lr))
    theta0, rebuild = flatten(model)
    root = jnp.sqrt(flat_rates(rates, model))

    def scaled_loss(phi):
        return loss(rebuild(theta0 + root * phi))

    top = float(sharpness(scaled_loss, jnp.zeros_like(theta0)))
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
