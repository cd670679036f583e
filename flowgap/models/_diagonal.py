import functools

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._checks import positive_int, positive_scalar
from .._custom_types import ScalarLike
from ._laws import null_projector


def _balance(model: "DiagonalNet") -> Float[Array, " dim"]:
    r"""u ⊙ v at depth 2 (du/dt = −2u⊙g, dv/dt = +2v⊙g); u^{2−L} + v^{2−L} at
    depth L ≥ 3."""
    if model.depth == 2:
        return model.u * model.v
    return model.u ** (2 - model.depth) + model.v ** (2 - model.depth)


def _mirror(
    model: "DiagonalNet", inputs: Float[Array, "n dim"]
) -> Float[Array, " 2*dim"]:
    r"""(P ln u, P ln v) at depth 2, (P u^{2−L}, P v^{2−L}) at depth L ≥ 3, with P
    the projector onto null(X): the gradient in β lies in range(Xᵀ)."""
    projector = null_projector(jnp.asarray(inputs))
    if model.depth == 2:
        mirror_u, mirror_v = jnp.log(model.u), jnp.log(model.v)
    else:
        mirror_u, mirror_v = model.u ** (2 - model.depth), model.v ** (2 - model.depth)
    return jnp.concatenate([projector @ mirror_u, projector @ mirror_v])


class DiagonalNet(eqx.Module):
    r"""Diagonal linear network of depth L.

    $$f(x) = \langle \beta, x\rangle,\qquad \beta = u^{\odot L} - v^{\odot L},
    \qquad u, v \in \mathbb{R}^d.$$

    **Initialisation.** `u = v = scale · 1`, so β(0) = 0. `scale` is the init scale
    α of Woodworth et al. (2020): small α gives ℓ₁-like (sparse) implicit bias,
    large α gives ℓ₂-like.

    **Arguments:**

    - `dim`: input dimension d.
    - `depth`: L ≥ 2 (static).
    - `scale`: α > 0. May be a traced scalar, so sweeps over α compile once.
    - `dtype`: floating dtype of the parameters (default: JAX's default float).
    """

    u: Float[Array, " dim"]
    v: Float[Array, " dim"]
    depth: int = eqx.field(static=True)

    def __init__(self, dim: int, *, depth: int = 2, scale: ScalarLike, dtype=None):
        dim = positive_int("dim", dim)
        self.depth = positive_int("depth", depth, minimum=2)
        scale = positive_scalar("scale", scale)
        dtype = jnp.result_type(float) if dtype is None else dtype
        self.u = jnp.full((dim,), scale, dtype=dtype)
        self.v = jnp.full((dim,), scale, dtype=dtype)

    def end_to_end(self) -> Float[Array, " dim"]:
        """β = u^L − v^L, the linear map x ↦ ⟨β, x⟩ the network computes."""
        return self.u**self.depth - self.v**self.depth

    def __call__(self, x: Float[Array, " dim"]) -> Float[Array, ""]:
        return jnp.dot(self.end_to_end(), x)

    def known_invariants(self, inputs=None, ratio=1.0) -> dict:
        """`diagonal_balance` (u⊙v, or u^{2−L} + v^{2−L}) and, given `inputs`,
        `diagonal_mirror`: see `flowgap.invariants.diagonal_balance` and
        `diagonal_mirror`. (Model protocol, `flowgap.models.PROTOCOL`.)"""
        del ratio
        laws = {"diagonal_balance": _balance}
        if inputs is not None:
            laws["diagonal_mirror"] = functools.partial(_mirror, inputs=inputs)
        return laws

    def reparametrisation(self) -> Float[Array, " dim"]:
        """φ(θ) = β: the network is x ↦ ⟨β, x⟩. (Model protocol.)"""
        return self.end_to_end()
