"""Random draws made in float64 and then cast, so that a seed gives the same
data and initialisation in every precision (docs: concepts.md, precision)."""

import functools
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import PyTree

from ._checks import is_concrete


def float_dtype(dtype=None) -> jnp.dtype:
    """`dtype`, or JAX's default float (float64 under x64, else float32)."""
    return jnp.dtype(jnp.result_type(float) if dtype is None else dtype)


def cast_floats(tree: PyTree, dtype) -> PyTree:
    """`tree` with every floating array leaf cast to `dtype`; integer, key,
    boolean and non-array leaves are kept."""

    def cast(leaf):
        if eqx.is_array(leaf) and jnp.issubdtype(leaf.dtype, jnp.floating):
            return jnp.asarray(leaf, dtype)
        return leaf

    return jax.tree.map(cast, tree)


def in_float64(make: Callable[[jnp.dtype], PyTree], dtype, *inputs) -> PyTree:
    r"""`make(float64)` evaluated with x64 on, its floating leaves cast to `dtype`.

    `jax.random.normal(key, shape, float32)` and the same draw in float64 use
    different random bits, so a float32 run would otherwise see different data
    and a different initialisation from the float64 run of the same seed: a
    different problem, not a less precise one. Drawing in float64 and rounding
    makes the float32 values the float64 ones to within half an ulp.

    The draw is evaluated now (`jax.ensure_compile_time_eval`), which needs
    every array in `inputs` (the keys and anything else `make` reads) concrete.
    Where one is traced (keys drawn inside `jit`/`vmap`, e.g. seeds in a sweep)
    and x64 is off, float64 is unavailable and `make(dtype)` is drawn directly.
    """
    dtype = float_dtype(dtype)
    if jnp.result_type(float) == jnp.float64:
        # x64 is on: float64 is traceable, so even traced keys draw in it.
        return cast_floats(make(jnp.dtype(jnp.float64)), dtype)
    if not all(is_concrete(leaf) for leaf in jax.tree.leaves(inputs)):
        return make(dtype)
    with jax.ensure_compile_time_eval(), jax.enable_x64(True):
        drawn = make(jnp.dtype(jnp.float64))
    return cast_floats(drawn, dtype)


#: How a draw's program is compiled. XLA's CPU fusion emitters and LLVM
#: optimisation passes take most of the compile time of these small programs
#: (measured on 2 cores: `sparse_recovery` 0.92 s → 0.42 s, `teacher_student`
#: 1.69 s → 0.53 s) and save nothing in a program that runs once per draw; they
#: only change round-off. A draw is the same bits on every run either way.
DRAW_COMPILER_OPTIONS = {
    "xla_backend_optimization_level": 0,
    "xla_cpu_use_fusion_emitters": False,
}


def compiled_draw(function: Callable) -> Callable:
    """`function` as one compiled program (`eqx.filter_jit`: arrays traced, other
    arguments static), compiled with `DRAW_COMPILER_OPTIONS`. Called inside a
    program being traced (`jit`, `vmap`, `grad`), it is traced into that program
    instead: JAX takes compiler options on top-level programs only."""
    compiled = eqx.filter_jit(function, compiler_options=DRAW_COMPILER_OPTIONS)

    @functools.wraps(function)
    def draw(*args, **kwargs):
        arrays = [x for x in jax.tree.leaves((args, kwargs)) if eqx.is_array(x)]
        # inside a trace even a new constant is a tracer
        eager = all(map(is_concrete, arrays)) and is_concrete(jnp.zeros(()))
        return (compiled if eager else function)(*args, **kwargs)

    return draw


_normal = compiled_draw(jax.random.normal)


def normal(key, shape, dtype=None):
    """Standard normal draws of `shape`, made in float64 and cast to `dtype`."""
    return in_float64(lambda dt: _normal(key, shape, dt), dtype, key)


def draws_in_float64(generator):
    """Decorate a data generator `generator(key, ..., dtype=None)` so that it
    draws in float64 and casts its output to `dtype` (see `in_float64`).

    The generator runs as one compiled program (`eqx.filter_jit`: sizes and
    other Python values are static, arrays traced). Run op by op, each of its
    operations would be compiled on its own the first time, and a problem's few
    dozen small compilations cost seconds of a short job (`compiled_draw`)."""
    compiled = compiled_draw(generator)

    @functools.wraps(generator)
    def draw(key, *args, dtype=None, **kwargs):
        def make(dt):
            return compiled(key, *args, dtype=dt, **kwargs)

        return in_float64(make, dtype, key, args, kwargs)

    return draw
