"""Per-parameter rate multipliers P (docs: theory/one-clock): GD θ ← θ − ηP∇L,
GF dθ/dt = −P∇L."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import is_concrete


def uniform_rates(model, value=1.0):
    """A rates pytree with the structure of `model`: `value` on every trainable
    (inexact array) leaf. Edit it with `eqx.tree_at` to set per-block rates."""
    value = jnp.asarray(value)
    return jax.tree.map(
        lambda leaf: value if eqx.is_inexact_array(leaf) else leaf, model
    )


def _rate_leaf(rate, leaf, path):
    where = jax.tree_util.keystr(path) or "(root)"
    try:
        rate = jnp.asarray(rate, dtype=leaf.dtype)
    except TypeError as e:
        raise TypeError(f"`rates` leaf at {where} is not numeric: {rate!r}.") from e
    try:
        jnp.broadcast_shapes(rate.shape, leaf.shape)
    except ValueError:
        raise ValueError(
            f"`rates` leaf at {where} has shape {rate.shape}, which does not broadcast "
            f"to the parameter's shape {leaf.shape}."
        ) from None
    if is_concrete(rate) and not bool(np.all(np.asarray(rate) > 0)):
        raise ValueError(f"`rates` must be positive; the leaf at {where} is not.")
    return rate


def check_rates(rates, model):
    """Validate `rates` against `model`; return a pytree shaped like the model's
    trainable partition (None elsewhere), or None for no preconditioning.

    Accepted: None; a positive scalar (uniform); or a pytree with the structure of
    `model` whose leaves at trainable arrays are positive scalars or arrays that
    broadcast to the parameter (other leaves are ignored).
    """
    if rates is None:
        return None
    if isinstance(rates, int | float | np.ndarray | jax.Array) and jnp.ndim(rates) == 0:
        rates = uniform_rates(model, rates)
    model_def = jax.tree.structure(model)
    rates_def = jax.tree.structure(rates)
    if model_def != rates_def:
        raise ValueError(
            "`rates` must be a positive scalar or a pytree with the structure of "
            "`model` (e.g. `flowgap.dynamics.uniform_rates(model)` edited with "
            f"`eqx.tree_at`); got structure\n  {rates_def}\nexpected\n  {model_def}."
        )
    paths_leaves = jax.tree_util.tree_flatten_with_path(model)[0]
    rate_leaves = jax.tree.leaves(rates)
    out = [
        _rate_leaf(r, leaf, path) if eqx.is_inexact_array(leaf) else None
        for (path, leaf), r in zip(paths_leaves, rate_leaves)
    ]
    return jax.tree.unflatten(model_def, out)


def precondition(grads, rates):
    """P ⊙ g (identity when `rates` is None)."""
    if rates is None:
        return grads
    return jax.tree.map(lambda g, p: g * p, grads, rates)


def restrict_rates(rates, params):
    """`rates` (from `check_rates`) on the trainable leaves only: None wherever
    `params` is None, so a frozen floating-point leaf has no rate."""
    if rates is None:
        return None
    return jax.tree.map(
        lambda p, r: None if p is None else r,
        params,
        rates,
        is_leaf=lambda x: x is None,
    )
