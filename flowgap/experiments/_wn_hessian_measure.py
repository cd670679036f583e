r"""wn-hessian's measurements: matched pairs, block norms, rescaling, gain floor.

The science of `flowgap run wn-hessian` (module docstring of `_wn_hessian`): a
weight-normalised MLP and the plain MLP computing the same function, the spectral
norms of blocks of the predictor Hessian ∇²_θ f(θ; x) by masked Lanczos
(`flowgap.analysis.predictor_hessian_norm`), the exact rescaling v → c·v, and the
lower bound ‖∇²_θ f‖ ≥ ‖∇_{θ'}f‖/|g_out| from the output gain.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from .. import analysis, dynamics, models

#: The quantities `measure_at_init` returns whose width exponents are fitted, with
#: their labels.
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


def net_keys(key, depth: int, width: int, draws: int):
    """Keys of the `draws` networks of one (depth, width), the same in every study
    of a run (the min‖v‖ and GD studies use the first)."""
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
    wn = models.MLP(d, width, k, weight_norm=True, **common)
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


def _mean_over(xs, fn):
    return jnp.mean(jax.lax.map(fn, xs))


def block_norms(net, xs, key, iters, names):
    r"""Mean over `xs` of ‖∇²_B f₀(x)‖₂ for each named block B of a WN `net` (one
    compiled program over the blocks' masks; `lax.map` keeps one Lanczos basis in
    memory)."""
    predictor = FirstOutput(net)

    def norm(mask):
        return _mean_over(
            xs,
            lambda x: analysis.predictor_hessian_norm(
                predictor, x, iters=iters, key=key, mask=mask
            ),
        )

    values = jax.lax.map(norm, block_masks(predictor, names))
    return {name: values[i] for i, name in enumerate(names)}


def min_direction_norm(net: models.MLP):
    """min over layers and rows of ‖vᵢ‖ (works on stacked nets: leading axes kept)."""
    return jnp.min(
        jnp.stack(
            [
                jnp.min(jnp.linalg.norm(layer.layer.weight, axis=-1), axis=-1)
                for layer in net.layers
            ]
        ),
        axis=0,
    )


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


# Every program below is compiled once per network shape and then runs for a
# fraction of a second at most widths: XLA's LLVM optimisation passes about double
# the CPU compile time (7.8 s → 3.8 s for one width, measured) with no measurable
# run-time gain, as the heavy work is in library matmuls.
_jit = functools.partial(
    jax.jit, compiler_options={"xla_backend_optimization_level": 0}
)


@functools.partial(_jit, static_argnames=("arch", "width", "depth", "iters"))
def measure_at_init(arch, width, depth, keys, problem, xs, key, iters):
    """Every quantity of one (width, depth), for the matched pair drawn from each
    of `keys` (`arch`: the items of `s` in `matched_pair`, as a hashable tuple; one
    compile, the draws run in turn): predictor-Hessian norms (mean over `xs`) of
    the plain net, the WN net, its v-block, its all-but-output-gain block, the gain
    floor; both loss sharpnesses; max |f_WN − f_plain|; min‖v‖.

    **Returns:** a dict of arrays of shape (draws,).
    """
    d, k = problem.inputs.shape[1], problem.targets.shape[1]

    def one(net_key):
        wn, plain = matched_pair(dict(arch), width, depth, d, k, net_key)
        return _measure_pair(wn, plain, problem, xs, key, iters)

    return jax.lax.map(one, keys)


def _measure_pair(wn, plain, problem, xs, key, iters):
    plain_norm = _mean_over(
        xs,
        lambda x: analysis.predictor_hessian_norm(
            FirstOutput(plain), x, iters=iters, key=key
        ),
    )
    return dict(
        plain=plain_norm,
        **block_norms(wn, xs, key, iters, ("wn", "wn_v", "wn_inner")),
        floor=_mean_over(xs, lambda x: gain_floor(wn, x)),
        sharpness_plain=analysis.sharpness(problem.loss, plain, iters=iters, key=key),
        sharpness_wn=analysis.sharpness(problem.loss, wn, iters=iters, key=key),
        function_gap=jnp.max(jnp.abs(problem.predict(wn) - problem.predict(plain))),
        min_v=min_direction_norm(wn),
    )


@functools.partial(_jit, static_argnames=("iters",))
def measure_rescaled(wn, factors, xs, inputs, key, iters):
    r"""For each factor c (vmapped: one compile), the WN net with v → c·v: its
    Hessian norms (every block of `BLOCKS`), min‖v‖, and max |f_c − f_1| over
    `inputs`.

    Since f(g, c·v, b) = f(g, v, b), ∇²_v f(c·v) = c⁻²∇²_v f(v) exactly, while the
    (g, b)-block is unchanged.
    """
    reference = jax.vmap(wn)(inputs)

    def one(c):
        net = rescale_directions(wn, c)
        return dict(
            **block_norms(net, xs, key, iters, tuple(BLOCKS)),
            min_v=min_direction_norm(net),
            function_change=jnp.max(jnp.abs(jax.vmap(net)(inputs) - reference)),
        )

    return jax.vmap(one)(factors)


@functools.partial(
    _jit, static_argnames=("steps", "save_every", "iters", "weight_norm")
)
def descend_and_measure(net, loss, lr, x, key, steps, save_every, iters, weight_norm):
    """Gradient descent from `net` (`flowgap.dynamics.gradient_descent`) and, in
    the same compiled program, along its saves: λ_max(∇²L)
    (`flowgap.analysis.track_sharpness`, warm-started), ‖∇²_θ f₀(x)‖₂ and, for a
    weight-normalised net (`weight_norm`, the caller's knowledge of the pair it
    built), min‖v‖ (else None).

    **Returns:** (trajectory, sharpness, hessian, min_v), each curve of shape
    (saves,).
    """
    traj = dynamics.gradient_descent(
        loss, net, lr=lr, steps=steps, save_every=save_every
    )
    sharpness = analysis.track_sharpness(loss, traj, iters=iters, key=key)
    hessian = jax.lax.map(
        lambda net: analysis.predictor_hessian_norm(
            FirstOutput(net), x, iters=iters, key=key
        ),
        traj.models,
    )
    min_v = min_direction_norm(traj.models) if weight_norm else None
    return traj, sharpness, hessian, min_v
