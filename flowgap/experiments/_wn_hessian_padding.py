r"""wn-hessian's padding: a network of hidden width m embedded in the same
network of a larger width, so that the networks of several widths share one
compiled program (`Layout`, and the maps between flat parameters and networks).
"""

import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .. import models
from ._wn_hessian_measure import BLOCKS, FirstOutput

# -- one compiled program for networks of several widths ---------------------------
#
# XLA compiles a program per array shape, and a width is a shape: with a program
# per width, compiling dominated the run (quick: 4 widths × ~8 s of ~46 s cold,
# each program running for well under a second). So the networks of several
# widths are measured in one program (`measure_group`), each embedded in the
# largest width `size` of its group by zero padding (`Layout`), which computes
# the same function of the same parameters; every Lanczos run is restricted to
# the real parameters by a 0/1 mask and starts from the real network's start
# vector, embedded. Hessian blocks, Ritz values and GD steps are then those of
# the real network up to the order of summation (round-off). Only the drawing of
# the networks is compiled per width; the program holds one copy of each
# Hessian-vector product (plain and WN; predictor and loss), one Lanczos loop per
# kind (magnitude for ‖∇²f‖, algebraic for λ_max) and one GD, whatever the
# number of widths, draws, rescalings and saves.


def param_count(depth: int, width: int, d: int, k: int, weight_norm: bool) -> int:
    """Parameters of `MLP(d, width, k, depth=depth)` (with gains if `weight_norm`)."""
    sizes = (d,) + (width,) * depth + (k,)
    return sum(
        a * b + b + (b if weight_norm else 0) for a, b in zip(sizes[:-1], sizes[1:])
    )


def template(activation, depth, width, d, k, weight_norm):
    """An `MLP` of these sizes with ShapeDtypeStruct leaves (nothing computed)."""
    return eqx.filter_eval_shape(
        lambda: models.MLP(
            d,
            width,
            k,
            depth=depth,
            activation=activation,
            weight_norm=weight_norm,
            key=jax.random.key(0),
        )
    )


class Layout(NamedTuple):
    r"""Where an `MLP` of hidden width m sits in the flat parameters (`flat_params`
    order) of the same network padded to hidden width `size` ≥ m: every array
    zero-padded, and, with weight normalisation, each padded row of a hidden
    layer's directions set to e₁ (so that v/‖v‖ is defined) with gain 0.

    Each padded unit then has pre-activation 0 and sends σ(0) through zero
    weights into every real unit, whatever the real parameters: f(θ_real, θ_pad)
    = f_m(θ_real) exactly, so the gradient and the Hessian in θ_real are those of
    the real network, the padded parameters' gradients vanish (GD leaves them in
    place), and so do the Hessian's padded–real couplings. Only the order of
    summation differs.

    **Fields:** `index` (D_m,): the positions of the real parameters; `fill`: the
    padded network's values at the other positions (1 at each e₁, else 0);
    `ones`: 1 at the real parameters, else 0; `blocks`: the same for each block
    of `BLOCKS` (WN; empty for a plain network), stacked.
    """

    index: np.ndarray
    fill: np.ndarray
    ones: np.ndarray
    blocks: np.ndarray


def layout(activation, depth, width, size, d, k, weight_norm) -> Layout:
    """The `Layout` of `MLP(d, width, k, depth=depth)` padded to width `size`
    (plain arrays, from the shapes alone)."""
    real = template(activation, depth, width, d, k, weight_norm)
    padded = jax.tree.leaves(template(activation, depth, size, d, k, weight_norm))
    leaves, tree = jax.tree.flatten(real)
    index, fill, base = [], [], 0
    directions = [i for i, leaf in enumerate(padded) if len(leaf.shape) == 2]
    for i, (r, p) in enumerate(zip(leaves, padded)):
        positions = np.arange(math.prod(p.shape)).reshape(p.shape)
        index.append(base + positions[tuple(slice(0, n) for n in r.shape)].ravel())
        if weight_norm and i in directions[:-1]:  # a hidden layer's directions
            fill.append(base + positions[width:, 0])
        base += positions.size
    index = np.concatenate(index)
    values = np.zeros(base, p.dtype)
    values[np.concatenate(fill or [np.zeros(0, int)])] = 1
    ones = np.zeros(base, p.dtype)
    ones[index] = 1
    blocks = np.zeros((0, base), p.dtype)
    if weight_norm:
        zeros = FirstOutput(
            jax.tree.unflatten(tree, [np.zeros(r.shape, r.dtype) for r in leaves])
        )
        blocks = np.zeros((len(BLOCKS), base), p.dtype)
        for row, block in zip(blocks, BLOCKS.values()):
            mask = eqx.tree_at(lambda m: block(m.net), zeros, replace_fn=np.ones_like)
            row[index] = np.concatenate([a.ravel() for a in jax.tree.leaves(mask)])
    return Layout(index, values, ones, blocks)


def flat_params(tree):
    """The floating-point arrays of `tree`, flattened (`ravel_pytree` order, as
    `flowgap.analysis` flattens the parameters)."""
    return ravel_pytree(eqx.filter(tree, eqx.is_inexact_array))[0]


def unflatten(example):
    """θ ↦ the network shaped like `example` with flat parameters θ."""
    params, static = eqx.partition(example, eqx.is_inexact_array)
    _, unravel = ravel_pytree(params)
    return lambda theta: eqx.combine(unravel(theta), static)


def padded_networks(activation, depth, size, d, k):
    """(θ ↦ network, parameter count) of the padded plain and WN networks."""
    out = []
    for wn in (False, True):
        shape = template(activation, depth, size, d, k, wn)
        example = jax.tree.map(lambda t: jnp.zeros(t.shape, t.dtype), shape)
        out.append((unflatten(example), flat_params(example).size))
    return out


def padded_hvp(rebuild, size: int, dim: int, value):
    """(θ, x, v) ↦ ∇²_θ F(θ, x)v for F = `value`(FirstOutput(rebuild(θ)), x), θ the
    first `size` entries of a row of `dim` (the rest zero): a jvp of the gradient,
    as `flowgap.analysis` computes it."""

    def hvp(theta, x, v):
        grad = jax.grad(lambda t: value(FirstOutput(rebuild(t)), x))
        out = jax.jvp(grad, (theta[:size],), (v[:size],))[1]
        return jnp.pad(out, (0, dim - size))

    return hvp
