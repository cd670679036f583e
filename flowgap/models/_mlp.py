import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import positive_int, positive_scalar
from .._custom_types import ScalarLike
from .._draw import compiled_draw, in_float64
from ._activations import KINKED, POSITIVELY_HOMOGENEOUS, activation_fn
from ._laws import direction_norms_law, rescaling_law
from ._weight_norm import WeightNorm


def _linear(d_in, d_out, key, dtype):
    return eqx.nn.Linear(d_in, d_out, key=key, dtype=dtype)


_draw_linear = compiled_draw(_linear)


def _scaled_linear(d_in, d_out, scale, key, dtype):
    # drawn in float64 and cast: the same init in every precision
    layer = in_float64(lambda dt: _draw_linear(d_in, d_out, key, dt), dtype, key)
    scale = jnp.asarray(scale, layer.weight.dtype)
    return eqx.tree_at(
        lambda lin: (lin.weight, lin.bias),
        layer,
        (scale * layer.weight, scale * layer.bias),
    )


def _direction_norms(model: "MLP") -> Float[Array, " units"]:
    return direction_norms_law([layer.v for layer in model.layers])


def _rescaling(model: "MLP") -> Float[Array, " units"]:
    layers = model.layers
    return rescaling_law(
        [
            (jnp.sum(a.weight**2, axis=1) + a.bias**2, b.weight)
            for a, b in zip(layers[:-1], layers[1:])
        ]
    )


class MLP(eqx.Module):
    r"""Fully connected network x ↦ A_D σ(⋯ σ(A₁x + b₁) ⋯) + b_D, optionally with
    every layer weight-normalised (`WeightNorm`, rows gᵢvᵢ/‖vᵢ‖).

    **Initialisation.** Each layer is `eqx.nn.Linear`'s default (weights and biases
    uniform on ±1/√fan_in) multiplied by `scale`; with weight normalisation the
    gains start at the resulting row norms, so both variants start at the same
    function.

    **Arguments:**

    - `in_dim`, `width`, `out_dim`: input size, hidden width, output size.
    - `depth`: number of hidden layers (≥ 1); there are `depth + 1` linear layers.
    - `activation`: a name from `flowgap.models.ACTIVATIONS`; smooth ones (tanh,
      gelu, softplus, silu, sigmoid) for curvature studies. With a kink (relu,
      leaky_relu) the net is non-smooth, and `gradient_flow` solves it with
      its non-smooth defaults (docs: non-smooth).
    - `weight_norm`: wrap every layer in `WeightNorm` (static).
    - `scale`: multiplier on the default init (may be traced).
    - `key`: PRNG key.
    """

    layers: tuple[eqx.nn.Linear | WeightNorm, ...]
    activation: str = eqx.field(static=True)

    def __init__(
        self,
        in_dim: int,
        width: int,
        out_dim: int,
        *,
        depth: int = 2,
        activation: str = "tanh",
        weight_norm: bool = False,
        scale: ScalarLike = 1.0,
        key: PRNGKeyArray,
        dtype=None,
    ):
        in_dim = positive_int("in_dim", in_dim)
        width = positive_int("width", width)
        out_dim = positive_int("out_dim", out_dim)
        depth = positive_int("depth", depth)
        activation_fn(activation)
        scale = positive_scalar("scale", scale)
        sizes = (in_dim,) + (width,) * depth + (out_dim,)
        keys = jax.random.split(key, len(sizes) - 1)
        layers = [
            _scaled_linear(a, b, scale, k, dtype)
            for k, a, b in zip(keys, sizes[:-1], sizes[1:])
        ]
        if weight_norm:
            layers = [WeightNorm(layer) for layer in layers]
        self.layers = tuple(layers)
        self.activation = activation

    def __call__(self, x: Float[Array, " in_dim"]) -> Float[Array, " out_dim"]:
        sigma = activation_fn(self.activation)
        for layer in self.layers[:-1]:
            x = sigma(layer(x))
        return self.layers[-1](x)

    # The model protocol (`flowgap.models.PROTOCOL`).

    def known_invariants(self, inputs=None, ratio=1.0) -> dict:
        """`weight_norm_directions` (‖vᵢ‖² of every unit) when weight-normalised;
        else `unit_rescaling` (‖incoming weights and bias‖² − ‖outgoing‖² of every
        hidden unit) for positively homogeneous σ; else none."""
        del inputs, ratio
        if all(isinstance(layer, WeightNorm) for layer in self.layers):
            return {"weight_norm_directions": _direction_norms}
        if self.activation in POSITIVELY_HOMOGENEOUS:
            return {"unit_rescaling": _rescaling}
        return {}

    def layer_blocks(self) -> tuple:
        """Each layer (weight and bias; gain and direction with weight norm)."""
        return tuple(lambda m, i=i: m.layers[i] for i in range(len(self.layers)))

    def non_smooth(self) -> tuple[str, ...]:
        """(σ,) for an activation with a kink (relu, leaky_relu), else ()."""
        return (self.activation,) if self.activation in KINKED else ()
