"""One flat vector for the trainable leaves of a model.

The flows solve on a single 1-D array θ ∈ ℝᴰ (the trainable leaves raveled in
tree order), so every Runge–Kutta stage is a handful of array operations instead
of one per leaf; the layout turns it back into the model's pytree at the saves.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PyTree, Shaped


class FlatLayout(eqx.Module):
    """Shapes and dtypes of a pytree of arrays, all static, so the layout is a
    hashable part of a jitted program and `unravel` compiles to slices."""

    treedef: jax.tree_util.PyTreeDef = eqx.field(static=True)
    shapes: tuple[tuple[int, ...], ...] = eqx.field(static=True)
    dtypes: tuple[jnp.dtype, ...] = eqx.field(static=True)

    @staticmethod
    def of(tree: PyTree) -> "FlatLayout":
        leaves, treedef = jax.tree.flatten(tree)
        return FlatLayout(
            treedef,
            tuple(tuple(x.shape) for x in leaves),
            tuple(jnp.result_type(x) for x in leaves),
        )

    @property
    def size(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    @property
    def dtype(self):
        return jnp.result_type(*self.dtypes)

    def ravel(self, tree: PyTree) -> Shaped[Array, " D"]:
        """The leaves of `tree` (with this layout's structure) as one vector."""
        leaves = jax.tree.leaves(tree)
        return jnp.concatenate([jnp.ravel(x).astype(self.dtype) for x in leaves])

    def unravel(self, flat: Shaped[Array, " D"]) -> PyTree:
        """Inverse of `ravel`."""
        leaves, start = [], 0
        for shape, dtype in zip(self.shapes, self.dtypes):
            size = math.prod(shape)
            leaves.append(flat[start : start + size].reshape(shape).astype(dtype))
            start += size
        return jax.tree.unflatten(self.treedef, leaves)

    def unravel_batch(self, flat: Shaped[Array, "S D"]) -> PyTree:
        """`unravel` along a leading axis (e.g. the saves of a flow)."""
        leaves, start = [], 0
        for shape, dtype in zip(self.shapes, self.dtypes):
            size = math.prod(shape)
            piece = flat[..., start : start + size]
            leaves.append(piece.reshape(flat.shape[:-1] + shape).astype(dtype))
            start += size
        return jax.tree.unflatten(self.treedef, leaves)
