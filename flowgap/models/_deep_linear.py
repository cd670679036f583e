import functools

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import positive_int, positive_scalar
from .._custom_types import ScalarLike
from .._draw import normal
from ._laws import balancedness_law


def _balancedness(model: "DeepLinear") -> Float[Array, " entries"]:
    return balancedness_law(model.weights)


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
            jnp.asarray(scale, dtype) * normal(k, (d_out, d_in), dtype)
            for k, d_in, d_out in zip(keys, dims[:-1], dims[1:])
        )

    def end_to_end(self) -> Float[Array, "out in"]:
        """W_N ⋯ W₁."""
        return functools.reduce(
            lambda acc, w: w @ acc, self.weights[1:], self.weights[0]
        )

    def __call__(self, x: Float[Array, " in"]) -> Float[Array, " out"]:
        return self.end_to_end() @ x

    # The model protocol (`flowgap.models.PROTOCOL`).

    def known_invariants(self, inputs=None, ratio=1.0) -> dict:
        """`balancedness` (W_{j+1}ᵀW_{j+1} − W_jW_jᵀ), given two or more layers."""
        del inputs, ratio
        return {"balancedness": _balancedness} if len(self.weights) >= 2 else {}

    def reparametrisation(self) -> Float[Array, " entries"]:
        """φ(θ) = W_N⋯W₁, raveled."""
        return self.end_to_end().ravel()

    def layer_blocks(self) -> tuple:
        """Each W_j."""
        return tuple(lambda m, i=i: m.weights[i] for i in range(len(self.weights)))

    def saddle_units(self) -> tuple[int, float, tuple[int, int]]:
        """(min hidden width, 1, (d_out, d_in)): unit j is the rank-one path
        through hidden index j of every layer."""
        if len(self.weights) < 2:
            raise ValueError(
                "`model` must be a DeepLinear with at least one hidden layer "
                "(len(dims) ≥ 3)."
            )
        width = min(w.shape[0] for w in self.weights[:-1])
        return width, 1.0, (self.weights[-1].shape[0], self.weights[0].shape[1])

    def add_unit(self, index: int, left, right, size) -> "DeepLinear":
        r"""W₁[j] = s·right, W_l[j, j] = s (1 < l < N), W_N[:, j] = s·left with
        s = size^{1/N} and j = `index`: W_N⋯W₁ gains size·left·rightᵀ."""
        depth = len(self.weights)
        s = size ** (1.0 / depth)
        weights = list(self.weights)
        weights[0] = weights[0].at[index].set(s * right)
        for i in range(1, depth - 1):
            weights[i] = weights[i].at[index, index].set(s)
        weights[-1] = weights[-1].at[:, index].set(s * left)
        return eqx.tree_at(lambda m: m.weights, self, tuple(weights))
