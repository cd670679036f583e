r"""wn-hessian's measurements: matched pairs, block norms, rescaling, gain floor.

The science of `flowgap run wn-hessian` (module docstring of `_wn_hessian`): a
weight-normalised MLP and the plain MLP computing the same function, the spectral
norms of blocks of the predictor Hessian ∇²_θ f(θ; x) by masked Lanczos
(`flowgap.analysis.predictor_hessian_norm`), the exact rescaling v → c·v, and the
lower bound ‖∇²_θ f‖ ≥ ‖∇_{θ'}f‖/|g_out| from the output gain. How they are
compiled: the networks of all widths of a depth (up to a size) share one pair of
programs, padded to one shape (`_wn_hessian_padding.Layout`,
`_wn_hessian_group.measure_group`).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from .. import models

#: The quantities of `measure_group`'s width study whose width exponents are
#: fitted, with their labels.
QUANTITIES = {
    "plain": "‖∇²f‖ plain",
    "wn": "‖∇²f‖ WN",
    "wn_v": "‖∇²_v f‖ WN",
    "wn_inner": "‖∇²_θ' f‖ WN (no g_out)",
    "floor": "‖∇_θ' f‖/g_out WN",
    "sharpness_plain": "λ_max(∇²L) plain",
    "sharpness_wn": "λ_max(∇²L) WN",
}


class FirstOutput(eqx.Module):
    """x ↦ f(x)₀: the scalar predictor whose Hessian is measured (for a
    single-output net, f itself)."""

    net: models.MLP

    def __call__(self, x):
        return self.net(x)[:1]


def _with_directions(net: models.MLP, directions) -> models.MLP:
    """The weight-normalised `net` with its directions vᵢ replaced, layer by layer."""
    return eqx.tree_at(
        lambda m: [layer.layer.weight for layer in m.layers], net, list(directions)
    )


def rescale_directions(net: models.MLP, factor) -> models.MLP:
    """The weight-normalised `net` with every direction vᵢ → factor·vᵢ (the
    function is unchanged; ‖vᵢ‖ is multiplied by `factor`)."""
    return _with_directions(net, [factor * layer.v for layer in net.layers])


def net_keys(key, depth: int, width, draws: int):
    """Keys of the `draws` networks of one (depth, width), the same in every study
    of a run (the min‖v‖ and GD studies use the first); `width` may be traced."""
    return jax.random.split(
        jax.random.fold_in(jax.random.fold_in(key, depth), width), draws
    )


def matched_pair(s, width: int, depth: int, d: int, k: int, key):
    r"""(weight-normalised, plain) MLPs computing the same function at init.

    Both are `MLP(d, width, k, depth=depth, key=key)`, so they share the layers
    (W, b); the WN net takes gains gᵢ = ‖wᵢ‖ and directions rescaled to
    ‖vᵢ‖ = `v_scale`·√fan_in. Since f depends on vᵢ only through vᵢ/‖vᵢ‖,
    gᵢvᵢ/‖vᵢ‖ = wᵢ and the two agree at init; they differ in their parameters,
    θ = (g, v, b) against θ = (W, b).

    **Arguments:** `s` holds `activation`, `scale` and `v_scale`; `key` may be
    traced.
    """
    common = dict(depth=depth, activation=s["activation"], scale=s["scale"], key=key)
    plain = models.MLP(d, width, k, **common)
    # `MLP(..., weight_norm=True)` wraps these same layers in `WeightNorm`: wrapping
    # the plain net's layers draws them once (half the program)
    wn = eqx.tree_at(
        lambda m: m.layers,
        plain,
        tuple(models.WeightNorm(layer) for layer in plain.layers),
    )
    wn = _with_directions(
        wn,
        [
            s["v_scale"]
            * jnp.sqrt(layer.v.shape[1])
            * layer.v
            / jnp.linalg.norm(layer.v, axis=1, keepdims=True)
            for layer in wn.layers
        ],
    )
    return wn, plain


def _directions(net: models.MLP):
    return tuple(layer.layer.weight for layer in net.layers)


def _gains_biases(net: models.MLP):
    return tuple(layer.gain for layer in net.layers) + tuple(
        layer.layer.bias for layer in net.layers
    )


def _inner(net: models.MLP):
    """Every parameter but the output gain."""
    return (
        _directions(net)
        + tuple(layer.layer.bias for layer in net.layers)
        + tuple(layer.gain for layer in net.layers[:-1])
    )


def _everything(net: models.MLP):
    return tuple(jax.tree.leaves(net))


#: The blocks of a WN net's parameters whose predictor-Hessian norms are measured,
#: as functions of the net giving the block's arrays.
BLOCKS = {
    "wn": _everything,
    "wn_v": _directions,
    "wn_inner": _inner,
    "wn_gb": _gains_biases,
}


def block_masks(predictor: FirstOutput, names) -> FirstOutput:
    """0/1 masks (see `flowgap.analysis.predictor_hessian_norm`) of the named
    `BLOCKS` of a WN net's `FirstOutput`, stacked on a leading axis."""
    zeros = jax.tree.map(jnp.zeros_like, predictor)
    masks = [
        eqx.tree_at(lambda p, n=n: BLOCKS[n](p.net), zeros, replace_fn=jnp.ones_like)
        for n in names
    ]
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *masks)


def mean_over(xs, fn):
    return jnp.mean(jax.lax.map(fn, xs))


def min_direction_norm(net: models.MLP, width=None):
    """min over layers and rows of ‖vᵢ‖ (works on stacked nets: leading axes kept);
    with `width` (may be traced), over the first `width` rows of each hidden
    layer only (the real units of a net padded as `_wn_hessian_padding.Layout` says)."""
    last = len(net.layers) - 1
    mins = []
    for i, layer in enumerate(net.layers):
        norms = jnp.linalg.norm(layer.layer.weight, axis=-1)
        if width is not None and i < last:
            norms = jnp.where(jnp.arange(norms.shape[-1]) < width, norms, jnp.inf)
        mins.append(jnp.min(norms, axis=-1))
    return jnp.min(jnp.stack(mins), axis=0)


def gain_floor(net: models.MLP, x):
    r"""‖∇_{θ'} f₀(x)‖/|g_out,0|, θ' = all parameters but the output layer's gain
    and bias: a lower bound on ‖∇²_θ f₀(x)‖.

    f is linear in g_out with ∂²f/∂g_out² = 0, so the Hessian's g_out row is
    ∇_{θ'}f/g_out, and this 2×2 block structure has eigenvalues ±‖row‖ before the
    rest is added.
    """
    grads = eqx.filter_grad(lambda m: m(x)[0])(net)
    grads = eqx.tree_at(
        lambda g: (g.layers[-1].gain, g.layers[-1].layer.bias),
        grads,
        replace_fn=jnp.zeros_like,
    )
    flat, _ = ravel_pytree(eqx.filter(grads, eqx.is_inexact_array))
    return jnp.linalg.norm(flat) / jnp.abs(net.layers[-1].gain[0])
