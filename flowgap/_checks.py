"""Input validation shared by the whole package.

Three tiers, as in diffrax/equinox: (1) structural errors (shapes, types, options)
raise `ValueError`/`TypeError` at trace time naming the argument; (2) value checks
on numbers that may be traced go through `eqx.error_if`, so they also fire under
`jit`; (3) run failures become a status on the result (see `flowgap.RESULTS`).
"""

import math
import numbers

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x) -> bool:
    """True when `x` holds a value now (not a tracer inside jit/vmap/grad)."""
    return not isinstance(x, jax.core.Tracer)


def as_scalar(name: str, value):
    """`value` as a float array of shape (); raises if it is not a real scalar."""
    if isinstance(value, bool) or not isinstance(
        value, numbers.Real | np.ndarray | jax.Array | np.generic
    ):
        raise TypeError(f"`{name}` must be a real scalar, got {type(value).__name__}.")
    arr = jnp.asarray(value)
    if arr.shape != ():
        raise ValueError(
            f"`{name}` must be a scalar, got an array of shape {arr.shape}."
        )
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    return arr


def positive_scalar(name: str, value):
    """A positive, finite real scalar. Checked now if concrete, else via error_if."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        # Python numbers are checked on the host: no device round trip.
        if not (math.isfinite(value) and value > 0):
            raise ValueError(
                f"`{name}` must be a positive finite number, got {value!r}."
            )
        return jnp.asarray(value, dtype=jnp.result_type(float))
    arr = as_scalar(name, value)
    if is_concrete(arr):
        v = float(arr)
        if not (np.isfinite(v) and v > 0):
            raise ValueError(f"`{name}` must be a positive finite number, got {v!r}.")
        return arr
    return eqx.error_if(
        arr, ~(jnp.isfinite(arr) & (arr > 0)), f"`{name}` must be positive and finite."
    )


def positive_int(name: str, value, *, minimum: int = 1) -> int:
    """A Python int ≥ `minimum` (these fix array shapes, so they are never traced)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an integer, got {type(value).__name__}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be an integer ≥ {minimum}, got {value}.")
    return int(value)


def one_of(name: str, value, accepted) -> None:
    if value not in accepted:
        choices = ", ".join(repr(a) for a in accepted)
        raise ValueError(f"`{name}` must be one of {choices}; got {value!r}.")


def prng_key(name: str, key):
    """A JAX PRNG key: a typed key (`jax.random.key`) of shape (), or a raw
    uint32 key of shape (2,) (`jax.random.PRNGKey`), returned as a typed key."""
    if isinstance(key, jax.Array | np.ndarray) and jax.dtypes.issubdtype(
        key.dtype, jax.dtypes.prng_key
    ):
        if key.shape != ():
            raise ValueError(
                f"`{name}` must be a single PRNG key (shape ()), got shape "
                f"{key.shape}; vmap over a batch of keys instead."
            )
        return key
    if (
        isinstance(key, jax.Array | np.ndarray)
        and key.shape == (2,)
        and key.dtype == np.uint32
    ):
        return jax.random.wrap_key_data(key)
    raise TypeError(
        f"`{name}` must be a JAX PRNG key (e.g. `jax.random.key(0)`), got "
        f"{type(key).__name__}"
        + (f" of dtype {key.dtype}, shape {key.shape}" if hasattr(key, "dtype") else "")
        + "."
    )
