import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import positive_int, positive_scalar
from .._custom_types import ScalarLike
from .._draw import normal
from ._activations import (
    KINKED,
    POSITIVELY_HOMOGENEOUS,
    activation_fn,
    slope_at_zero,
)
from ._laws import balancedness_law, rescaling_law


def _rescaling(model: "TwoLayer") -> Float[Array, " width"]:
    return rescaling_law([(jnp.sum(model.w1**2, axis=1), model.w2)])


def _balancedness(model: "TwoLayer") -> Float[Array, " entries"]:
    return balancedness_law((model.w1, model.w2))


class TwoLayer(eqx.Module):
    r"""Two-layer network without biases, f(x) = W₂ σ(W₁ x).

    Unit i is wᵢ = (row i of W₁, column i of W₂). For positively homogeneous σ
    (linear, ReLU, leaky ReLU) the loss is invariant to wᵢ ↦ (a·W₁[i], W₂[:, i]/a),
    which is what the per-unit rescaling laws come from (docs: theory/invariants).

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
        # drawn in float64 and cast: the same init in every precision
        scale = jnp.asarray(scale, dtype)
        self.w1 = scale * normal(k1, (width, in_dim), dtype)
        self.w2 = scale * normal(k2, (out_dim, width), dtype)

    def hidden(self, x: Float[Array, " in_dim"]) -> Float[Array, " width"]:
        """σ(W₁x)."""
        return activation_fn(self.activation)(self.w1 @ x)

    def __call__(self, x: Float[Array, " in_dim"]) -> Float[Array, " out_dim"]:
        return self.w2 @ self.hidden(x)

    # The model protocol (`flowgap.models.PROTOCOL`).

    def known_invariants(self, inputs=None, ratio=1.0) -> dict:
        """`unit_rescaling` (‖W₁[i]‖² − ‖W₂[:, i]‖²) for positively homogeneous σ,
        and `balancedness` (W₂ᵀW₂ − W₁W₁ᵀ, of which it is the diagonal) for linear
        σ; none otherwise."""
        del inputs, ratio
        laws = {}
        if self.activation in POSITIVELY_HOMOGENEOUS:
            laws["unit_rescaling"] = _rescaling
        if self.activation == "linear":
            laws["balancedness"] = _balancedness
        return laws

    def reparametrisation(self) -> Float[Array, " entries"] | None:
        """φ(θ) = W₂W₁ (linear σ), the per-unit rank-one matrices W₂[:, i]W₁[i]
        (ReLU, leaky ReLU), None otherwise."""
        if self.activation == "linear":
            return (self.w2 @ self.w1).ravel()
        if self.activation in POSITIVELY_HOMOGENEOUS:
            return jnp.einsum("ki,ij->ikj", self.w2, self.w1).ravel()
        return None

    def layer_blocks(self) -> tuple:
        """(W₁, W₂)."""
        return (lambda m: m.w1, lambda m: m.w2)

    def non_smooth(self) -> tuple[str, ...]:
        """(σ,) for an activation with a kink (relu, leaky_relu), else ()."""
        return (self.activation,) if self.activation in KINKED else ()

    def saddle_units(self) -> tuple[int, float, tuple[int, int]]:
        """(width, σ'(0), (out_dim, in_dim)); unit i is (W₁[i], W₂[:, i])."""
        width, in_dim = self.w1.shape
        return width, slope_at_zero(self.activation), (self.w2.shape[0], in_dim)

    def add_unit(self, index: int, left, right, size) -> "TwoLayer":
        r"""(W₁[i], W₂[:, i]) = √(size/σ'(0))·(right, left) for i = `index`, so the
        linearisation σ'(0)W₂W₁ gains size·left·rightᵀ."""
        s = jnp.sqrt(size / slope_at_zero(self.activation))
        model = eqx.tree_at(lambda m: m.w1, self, self.w1.at[index].set(s * right))
        return eqx.tree_at(lambda m: m.w2, model, model.w2.at[:, index].set(s * left))
