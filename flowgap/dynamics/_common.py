"""Plumbing shared by both trainers: splitting a model into trainable arrays and
the rest, and re-assembling saved states into a model with a time axis."""

import equinox as eqx
import jax
import jax.numpy as jnp


def split_model(model):
    """(params, static): the inexact-array leaves, and everything else.

    `model` is any pytree (an Equinox module, or a bare array for a loss written
    directly in θ).
    """
    params, static = eqx.partition(model, eqx.is_inexact_array)
    if not jax.tree.leaves(params):
        raise ValueError("`model` has no floating-point array leaves to train.")
    return params, static


def check_loss(loss):
    if not callable(loss):
        raise TypeError(
            "`loss` must be a callable model -> scalar (e.g. `problem.loss`), got "
            f"{type(loss).__name__}."
        )
    return loss


def scalar_loss(loss, static):
    """θ ↦ L(combine(θ, static)), with a trace-time check that L is a scalar."""

    def value(params):
        out = loss(eqx.combine(params, static))
        if jnp.shape(out) != ():
            raise ValueError(
                f"`loss` must return a scalar, got shape {jnp.shape(out)}."
            )
        return out

    return value


def stacked_model(saved_params, static, length: int):
    """The model with a leading time axis of `length` on every array leaf."""
    static = jax.tree.map(
        lambda x: jnp.broadcast_to(x, (length,) + x.shape) if eqx.is_array(x) else x,
        static,
    )
    return eqx.combine(saved_params, static)
