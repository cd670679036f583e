import functools

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import positive_int, positive_scalar
from .._custom_types import ScalarLike


class DeepLinear(eqx.Module):
    r"""Deep linear network f(x) = W_N ⋯ W₁ x (matrix factorisation).

    `weights` is a tuple (W₁, …, W_N) with the input side first; W_j has shape
    (dims[j], dims[j−1]). Gradient flow conserves the balancedness matrices
    W_{j+1}ᵀW_{j+1} − W_jW_jᵀ.

    **Initialisation.** Every entry of every W_j is i.i.d. N(0, scale²): `scale`
    is the raw entry standard deviation (small `scale` gives the incremental,
    low-rank-first learning of Li, Luo & Lyu 2021).

    **Arguments:**

    - `dims`: (d_in, h₁, …, d_out), at least two entries.
    - `scale`: entry standard deviation (may be traced).
    - `key`: PRNG key.
    """

    weights: tuple[Float[Array, "_ _"], ...]

    def __init__(self, dims, *, scale: ScalarLike, key: PRNGKeyArray, dtype=None):
        dims = tuple(dims)
        if len(dims) < 2:
            raise ValueError(
                f"`dims` must list at least input and output sizes, got {dims}."
            )
        dims = tuple(positive_int("dims", d) for d in dims)
        scale = positive_scalar("scale", scale)
        dtype = jnp.result_type(float) if dtype is None else dtype
        keys = jax.random.split(key, len(dims) - 1)
        self.weights = tuple(
            scale * jax.random.normal(k, (d_out, d_in), dtype)
            for k, d_in, d_out in zip(keys, dims[:-1], dims[1:])
        )

    def end_to_end(self) -> Float[Array, "out in"]:
        """W_N ⋯ W₁."""
        return functools.reduce(
            lambda acc, w: w @ acc, self.weights[1:], self.weights[0]
        )

    def __call__(self, x: Float[Array, " in"]) -> Float[Array, " out"]:
        return self.end_to_end() @ x
