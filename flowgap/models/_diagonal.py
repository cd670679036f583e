import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._checks import positive_int, positive_scalar
from .._custom_types import ScalarLike


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
