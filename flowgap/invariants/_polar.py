import jax.numpy as jnp
from jaxtyping import Array, Float

from .._checks import positive_scalar
from ..models import PolarDiagonalNet
from ._diagonal import _require
from ._projection import null_projector


def polar_direction_norm(model) -> Float[Array, "*radii"]:
    r"""‖θ‖² of the stored direction (per block when `split`).

    The network uses θ/‖θ‖, so L(aθ) = L(θ) (a scale symmetry) and ∇_θL ⊥ θ: the
    flow conserves ‖θ‖² (= 1 from the initialisation); Salimans–Kingma gradient
    steps grow it by η²ρ²‖∇_θL‖² each.
    """
    _require(model, PolarDiagonalNet, "polar_direction_norm")
    return jnp.sum(model.direction**2, axis=-1)


def polar_mirror(
    model, inputs: Float[Array, "n dim"], ratio=1.0
) -> Float[Array, " 2*dim"]:
    r"""Mirror law of the polar diagonal network trained at rate ratio ρ = η_θ/η_r
    (`rates=model.rates(ρ)`), science.md §4.

    With X̃ = [X, −X] and P the projector onto null(X̃), on the unit sphere:

    - depth 2: Q = P(ln θ + (ρ/2) r² 1);
    - depth L ≥ 3: Q = P(exp(−(L−2)(ρ/2) r²) θ^{⊙(2−L)}).

    Derivation (depth L): with z = X̃ᵀ(residual)/n and c = Σθᵢᴸzᵢ, the flow is
    dr/dt = −L r^{L−1} c and dθ/dt = −ρL rᴸ(θ^{L−1}⊙z − cθ); then dQ/dt is a
    multiple of z ∈ range(X̃ᵀ), which P kills.

    The stored θ may be off the unit sphere (the flow conserves ‖θ‖, and
    Salimans–Kingma steps grow it); the network uses θ̂ = θ/‖θ‖, which then moves at
    the effective ratio ρ/‖θ‖². Q is written in θ̂ with that ratio, so it is
    conserved by the flow from any start. Not defined for `split=True`.
    """
    _require(model, PolarDiagonalNet, "polar_mirror")
    if model.split:
        raise ValueError("`polar_mirror` is derived for the stacked (split=False) net.")
    ratio = positive_scalar("ratio", ratio)
    x = jnp.asarray(inputs)
    projector = null_projector(jnp.concatenate([x, -x], axis=1))
    norm_sq = jnp.sum(model.direction**2)
    unit = model.direction / jnp.sqrt(norm_sq)
    half_rho_r2 = 0.5 * (ratio / norm_sq) * model.radius**2
    if model.depth == 2:
        mirror = jnp.log(unit) + half_rho_r2
    else:
        mirror = jnp.exp(-(model.depth - 2) * half_rho_r2) * unit ** (2 - model.depth)
    return projector @ mirror
