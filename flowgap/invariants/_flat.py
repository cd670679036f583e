"""Invariants as functions of the flat vector of trainable parameters."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from ..dynamics._common import split_model
from ..dynamics._rates import check_rates


def flatten(model, trainable=None):
    """(θ, rebuild): θ the flat trainable parameters of `model` (the
    floating-point arrays selected by `trainable`, a filter as in `eqx.partition`;
    default all of them), and a function rebuilding the model from a flat vector
    with everything else (frozen arrays, integer arrays, functions, static fields)
    as in `model`."""
    params, static = split_model(model, trainable)
    flat, unravel = ravel_pytree(params)
    return flat, lambda theta: eqx.combine(unravel(theta), static)


def flatten_saves(saves, trainable=None):
    """(θ of shape (saves, D), rebuild): `flatten` at every save of `saves` (a
    trajectory, or its `models`: array leaves with a leading save axis), with
    `rebuild` from the first save."""
    models = getattr(saves, "models", saves)
    arrays, static = eqx.partition(models, eqx.is_array)
    first = eqx.combine(jax.tree.map(lambda x: x[0], arrays), static)
    _, rebuild = flatten(first, trainable)
    # vmap over the array leaves only: non-array leaves have no time axis
    thetas = jax.vmap(lambda s: flatten(eqx.combine(s, static), trainable)[0])(arrays)
    return thetas, rebuild


def flat_rates(rates, model, trainable=None):
    """P as a flat vector aligned with `flatten(model, trainable)` (ones when
    None)."""
    params, _ = split_model(model, trainable)
    flat = ravel_pytree(params)[0]
    rates = check_rates(rates, model)
    if rates is None:
        return jnp.ones_like(flat)
    full = jax.tree.map(
        lambda p, r: None if p is None else jnp.broadcast_to(r, p.shape),
        params,
        rates,
        is_leaf=lambda x: x is None,
    )
    return ravel_pytree(full)[0]


def as_vector(q, model) -> jax.Array:
    """Q(model) as a 1-D array (pytrees of arrays are raveled)."""
    return ravel_pytree(q(model))[0]


@eqx.filter_jit
def law_at_saves(q, models) -> jax.Array:
    """Q at every save, raveled: shape (saves, components), from `models` (array
    leaves with a leading save axis), as one compiled program (evaluated save by
    save, each save's slice and Q's ops compiled programs of their own)."""
    arrays, static = eqx.partition(models, eqx.is_array)
    return jax.vmap(lambda s: as_vector(q, eqx.combine(s, static)))(arrays)
