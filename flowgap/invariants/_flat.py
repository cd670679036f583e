"""Invariants as functions of the flat vector of trainable parameters."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from ..dynamics._rates import check_rates


def flatten(model):
    """(θ, q_of): θ the flat trainable parameters of `model`, and a function
    rebuilding the model from a flat vector."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    flat, unravel = ravel_pytree(params)
    return flat, lambda theta: eqx.combine(unravel(theta), static)


def flat_rates(rates, model):
    """P as a flat vector aligned with `flatten(model)` (ones when None)."""
    flat, _ = flatten(model)
    rates = check_rates(rates, model)
    if rates is None:
        return jnp.ones_like(flat)
    params = eqx.filter(model, eqx.is_inexact_array)
    full = jax.tree.map(lambda p, r: jnp.broadcast_to(r, p.shape), params, rates)
    return ravel_pytree(full)[0]


def as_vector(q, model) -> jax.Array:
    """Q(model) as a 1-D array (pytrees of arrays are raveled)."""
    return ravel_pytree(q(model))[0]
