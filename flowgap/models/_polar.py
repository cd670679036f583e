import functools

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._checks import positive_int, positive_scalar
from .._custom_types import ScalarLike
from ._laws import null_projector


def _unit(x: Float[Array, "... k"]) -> Float[Array, "... k"]:
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def _direction_norm(model: "PolarDiagonalNet") -> Float[Array, "*radii"]:
    """‖θ‖² of the stored direction (per block when `split`)."""
    return jnp.sum(model.direction**2, axis=-1)


def _mirror(
    model: "PolarDiagonalNet", inputs: Float[Array, "n dim"], ratio
) -> Float[Array, " 2*dim"]:
    r"""P(ln θ̂ + (ρ/2)r²/‖θ‖²) at depth 2, P(exp(−(L−2)(ρ/2)r²/‖θ‖²) θ̂^{2−L}) at
    depth L ≥ 3, P the projector onto null([X, −X]); derived in
    `flowgap.invariants.polar_mirror`."""
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


class PolarDiagonalNet(eqx.Module):
    r"""Diagonal linear network in polar (weight-normalised) coordinates.

    Stack w = (u; v) ∈ ℝ^{2d} and write w = r·θ̂ with r > 0 and θ̂ on the unit
    sphere. Then

    $$\beta = r^L\,(\hat\theta_u^{\odot L} - \hat\theta_v^{\odot L}).$$

    With `split=True` the normalisation is placed on u and v separately:
    u = r_u θ̂_u, v = r_v θ̂_v, two radii (field `radius` of shape (2,)) and two
    directions (field `direction` of shape (2, d), row 0 for u, row 1 for v).

    **How the direction stays on the sphere.** The stored `direction` θ need not
    have unit norm: the network always uses θ̂ = θ/‖θ‖ (Salimans–Kingma). The loss is
    therefore invariant to the scale of θ, so ∇_θL = ‖θ‖⁻¹(I − θ̂θ̂ᵀ)∇_θ̂L is
    tangent to the sphere, and

    - the gradient flow keeps ‖θ‖ = 1 exactly and is the Riemannian flow
      dθ/dt = −η_θ(I − θθᵀ)∇_θL (docs: theory/models; `flowgap.gradient_flow`);
    - plain gradient descent on (r, θ) is the Salimans–Kingma discrete variant, in
      which ‖θ‖ grows: ‖θ_{k+1}‖² = ‖θ_k‖² + η²‖∇_θL‖²;
    - gradient descent followed by renormalisation is the projected variant
      ("rPGD"): pass `projection=PolarDiagonalNet.normalised` to
      `flowgap.gradient_descent`.

    **Rates.** The radius is trained at rate η_r and the direction at rate η_θ; the
    ratio ρ = η_θ/η_r enters through `rates=model.rates(ratio=ρ)` (1 on `radius`,
    ρ on `direction`), the same for gradient descent and gradient flow.

    **Initialisation.** The same point as `DiagonalNet(dim, scale=α)`: θ uniform
    (all entries 1/√(2d)) and r₀ = α√(2d); with `split=True`, θ_u = θ_v = 1/√d and
    r_u = r_v = α√d.

    **Arguments:**

    - `dim`: input dimension d.
    - `depth`: L ≥ 2 (static).
    - `scale`: α > 0, the init scale of the equivalent `DiagonalNet` (may be traced).
    - `split`: if True, separate polar pairs on u and v (static).
    - `dtype`: floating dtype of the parameters.
    """

    radius: Float[Array, "*radii"]
    direction: Float[Array, "*radii dirdim"]
    depth: int = eqx.field(static=True)
    split: bool = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        *,
        depth: int = 2,
        scale: ScalarLike,
        split: bool = False,
        dtype=None,
    ):
        dim = positive_int("dim", dim)
        self.depth = positive_int("depth", depth, minimum=2)
        if not isinstance(split, bool):
            raise TypeError(f"`split` must be a bool, got {type(split).__name__}.")
        self.split = split
        scale = positive_scalar("scale", scale)
        dtype = jnp.result_type(float) if dtype is None else dtype
        block = dim if split else 2 * dim
        shape = (2,) if split else ()
        self.radius = jnp.full(shape, scale * jnp.sqrt(block), dtype=dtype)
        self.direction = jnp.full(shape + (block,), 1 / jnp.sqrt(block), dtype=dtype)

    def uv(self) -> tuple[Float[Array, " dim"], Float[Array, " dim"]]:
        """The plain-network weights (u, v) this point represents."""
        w = self.radius[..., None] * _unit(self.direction)
        if self.split:
            return w[0], w[1]
        half = w.shape[-1] // 2
        return w[:half], w[half:]

    def end_to_end(self) -> Float[Array, " dim"]:
        """β = r^L(θ̂_u^L − θ̂_v^L)."""
        u, v = self.uv()
        return u**self.depth - v**self.depth

    def __call__(self, x: Float[Array, " dim"]) -> Float[Array, ""]:
        return jnp.dot(self.end_to_end(), x)

    def known_invariants(self, inputs=None, ratio=1.0) -> dict:
        """`polar_direction_norm` (‖θ‖²) and, given `inputs` and `split=False`,
        `polar_mirror` at rate ratio `ratio` = ρ: see `flowgap.invariants`.
        (Model protocol, `flowgap.models.PROTOCOL`.)"""
        laws = {"polar_direction_norm": _direction_norm}
        if inputs is not None and not self.split:
            ratio = positive_scalar("ratio", ratio)
            laws["polar_mirror"] = functools.partial(
                _mirror, inputs=inputs, ratio=ratio
            )
        return laws

    def normalised(self) -> "PolarDiagonalNet":
        """The same point with the stored direction rescaled to unit norm (rPGD)."""
        return eqx.tree_at(lambda m: m.direction, self, _unit(self.direction))

    def rates(self, ratio: ScalarLike = 1.0) -> "PolarDiagonalNet":
        """Rate pytree for `gradient_descent`/`gradient_flow`: 1 on `radius`,
        `ratio` = ρ = η_θ/η_r on `direction`."""
        ratio = positive_scalar("ratio", ratio)
        one = jnp.ones((), dtype=ratio.dtype)
        return eqx.tree_at(
            lambda m: (m.radius, m.direction), self, (one, ratio.astype(one.dtype))
        )
