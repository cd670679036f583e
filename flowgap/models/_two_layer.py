import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import positive_int, positive_scalar
from .._custom_types import ScalarLike
from ._activations import activation_fn


class TwoLayer(eqx.Module):
    r"""Two-layer network without biases, f(x) = W₂ σ(W₁ x).

    Unit i is wᵢ = (row i of W₁, column i of W₂). For positively homogeneous σ
    (linear, ReLU, leaky ReLU) the loss is invariant to wᵢ ↦ (a·W₁[i], W₂[:, i]/a),
    which is what the per-unit rescaling laws of science.md §4 come from.

    **Initialisation.** Every entry of `w1` and `w2` is i.i.d. N(0, scale²): `scale`
    is the raw entry standard deviation, with no fan-in factor, as in the small-init
    (saddle-to-saddle) literature. For a conventional init use
    `scale = 1/sqrt(in_dim)`.

    **Arguments:**

    - `in_dim`, `width`, `out_dim`: d, m, k.
    - `activation`: a name from `flowgap.models.ACTIVATIONS` (static).
    - `scale`: entry standard deviation (may be traced).
    - `key`: PRNG key.
    """

    w1: Float[Array, "width in_dim"]
    w2: Float[Array, "out_dim width"]
    activation: str = eqx.field(static=True)

    def __init__(
        self,
        in_dim: int,
        width: int,
        out_dim: int,
        *,
        activation: str,
        scale: ScalarLike,
        key: PRNGKeyArray,
        dtype=None,
    ):
        in_dim = positive_int("in_dim", in_dim)
        width = positive_int("width", width)
        out_dim = positive_int("out_dim", out_dim)
        activation_fn(activation)
        self.activation = activation
        scale = positive_scalar("scale", scale)
        dtype = jnp.result_type(float) if dtype is None else dtype
        k1, k2 = jax.random.split(key)
        self.w1 = scale * jax.random.normal(k1, (width, in_dim), dtype)
        self.w2 = scale * jax.random.normal(k2, (out_dim, width), dtype)

    def hidden(self, x: Float[Array, " in_dim"]) -> Float[Array, " width"]:
        """σ(W₁x)."""
        return activation_fn(self.activation)(self.w1 @ x)

    def __call__(self, x: Float[Array, " in_dim"]) -> Float[Array, " out_dim"]:
        return self.w2 @ self.hidden(x)
