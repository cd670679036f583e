import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float


def effective_scale(
    scale: ArrayLike, r0: ArrayLike, r_inf: ArrayLike, ratio: ArrayLike
) -> Float[Array, "..."]:
    r"""Effective init scale of a polar diagonal network's gradient-flow limit
    (docs: theory/implicit-bias).

    $$\alpha_{\text{eff}} = \alpha\,\frac{r_\infty}{r_0}\,
    \exp\!\Big(-\frac{\rho}{2}\big(r_\infty^2 - r_0^2\big)\Big).$$

    Why: along the polar flow at rate ratio ρ (direction on the unit sphere), the
    projection onto null(X̃) of ln θ + (ρ/2)r²·1 (depth 2), or of
    exp(−(L−2)(ρ/2)r²)·θ^{⊙(2−L)} (depth L ≥ 3), is conserved (docs: theory/invariants).
    From the uniform start θ₀ = r₀⁻¹α·1 this says the limit w_∞ = r_∞θ_∞ obeys
    the same mirror law as the plain `DiagonalNet` flow from u = v = α_eff·1, so
    both interpolating limits coincide (any depth). This needs one radius for
    u and v: with the normalisation on u and v separately (`split=True`) each
    block's mirror integrates the residual weighted by its own r², so the split
    limit is not a plain-net limit (measured in `flowgap run wn-robust-bias`);
    per-block values (`r_inf` of shape (2,)) only describe each block's scale.

    Elementwise, broadcasting and traceable.

    **Arguments:** `scale` α (of the equivalent plain net), `r0` the initial radius
    (α√(2d), or α√d per block when split), `r_inf` the measured final radius,
    `ratio` ρ = η_θ/η_r.

    **Returns:** α_eff, the broadcast shape of the arguments.
    """
    scale, r0, r_inf, ratio = map(jnp.asarray, (scale, r0, r_inf, ratio))
    # exp of a difference of squares, formed as (r∞ − r₀)(r∞ + r₀) so it keeps
    # its relative accuracy when r∞ ≈ r₀.
    return scale * (r_inf / r0) * jnp.exp(-0.5 * ratio * (r_inf - r0) * (r_inf + r0))
