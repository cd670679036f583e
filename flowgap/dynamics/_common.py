"""Plumbing shared by both trainers: splitting a model into trainable arrays and
the rest, and re-assembling saved states into a model with a time axis."""

import equinox as eqx
import jax
import jax.numpy as jnp


def split_model(model, trainable=None):
    """(params, static): the trainable leaves, and everything else.

    `model` is any pytree (an Equinox module, or a bare array for a loss written
    directly in θ). `trainable` is a filter as in `eqx.partition`: None (every
    floating-point array, `eqx.is_inexact_array`), a callable leaf → bool, or a
    pytree of bools (or callables) with the structure of `model`, or a prefix of
    it. Leaves it selects that are not floating-point arrays are never trained
    (integer arrays, functions, static fields stay in `static`).
    """
    if trainable is None:
        trainable = eqx.is_inexact_array
    elif not (callable(trainable) or isinstance(trainable, bool)):
        try:
            jax.tree.map(lambda _: None, trainable)
        except Exception as e:  # pragma: no cover - tree_map on odd objects
            raise TypeError(
                "`trainable` must be None, a callable leaf -> bool, or a pytree of "
                f"bools with the structure of `model`; got {type(trainable).__name__}."
            ) from e
    try:
        params, static = eqx.partition(model, trainable)
    except ValueError as e:
        raise ValueError(
            "`trainable` must be a callable or a pytree of bools whose structure is "
            f"a prefix of `model`'s: {e}"
        ) from None
    # only floating-point arrays can move, whatever the filter selected
    params, extra = eqx.partition(params, eqx.is_inexact_array)
    static = eqx.combine(static, extra)
    if not jax.tree.leaves(params):
        hint = "" if trainable is eqx.is_inexact_array else " (check `trainable`)"
        raise ValueError(f"`model` has no trainable floating-point array leaves{hint}.")
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
