r"""wn-hessian's measurements of one group of widths (`measure_group`): the
networks drawn and GD run in one compiled program (`_draw_group`), every
Lanczos estimate in a second (`_wn_hessian_spectra`).
"""

import concurrent.futures
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import dynamics
from ._wn_hessian_measure import (
    BLOCKS,
    gain_floor,
    matched_pair,
    mean_over,
    min_direction_norm,
    net_keys,
    rescale_directions,
)
from ._wn_hessian_padding import flat_params, layout, padded_networks, param_count
from ._wn_hessian_spectra import Plan, spectra_program

# XLA's CPU fusion emitters more than double the compile time of these programs
# (measured on one width's program: 9.6 s → 4.6 s CPU) and its LLVM optimisation
# passes double it again, with no run-time gain for the programs that draw the
# networks and run GD; both only reorder round-off.
_jit = functools.partial(
    jax.jit,
    compiler_options={
        "xla_backend_optimization_level": 0,
        "xla_cpu_use_fusion_emitters": False,
    },
)


class Group(NamedTuple):
    """What one pair of programs measures (static: each group compiles its own):
    the networks of depth `depth` and hidden widths ≤ `size`, padded to `size`;
    `arch`, the items of the settings that `matched_pair` uses, as a hashable
    tuple; the width study's `widths` with `draws` pairs each; the min‖v‖ probe
    at `probe_width` (None: none); GD from the first pair of each of
    `gd_widths`, `steps` steps with a save every `save_every`."""

    arch: tuple
    depth: int
    size: int
    widths: tuple[int, ...]
    draws: int
    probe_width: int | None
    gd_widths: tuple[int, ...]
    steps: int
    save_every: int


def measure_group(group: Group, key, problem, xs, factors, lr, iters):
    r"""Every measurement of the networks of one depth whose widths (each ≤
    `size`) share two compiled programs, padded to hidden width `size` (`Layout`):
    one draws the networks and runs GD (`_draw_group`), the other runs every
    Lanczos estimate (`spectra_program`).

    - `"width"` (for `widths`): for the matched pair drawn from each of
      `net_keys(key, depth, width, draws)`: predictor-Hessian norms (mean over
      `xs`) of the plain net, the WN net, its v-block and its all-but-output-gain
      block; the gain floor; both loss sharpnesses; max |f_WN − f_plain|;
      min‖v‖. A dict of arrays (len(widths), draws).
    - `"probe"` (unless `probe_width` is None): the first WN net of that width
      under v → c·v for each c of `factors`: the norms of every block of
      `BLOCKS`, min‖v‖, and max |f_c − f_1| over the training inputs. A dict of
      arrays (factors,). Since f(g, c·v, b) = f(g, v, b), ∇²_v f(c·v) =
      c⁻²∇²_v f(v) exactly, while the (g, b)-block is unchanged.
    - `"gd"` (for `gd_widths`): gradient descent
      (`flowgap.dynamics.gradient_descent`, `steps` steps of rate `lr`, a save
      every `save_every`) from the first matched pair of each width, and along
      its saves λ_max(∇²L) (warm-started, as `flowgap.analysis.track_sharpness`),
      ‖∇²_θ f₀(xs[0])‖₂, and min‖v‖ of the WN net: by net ("WN", "plain"), the
      run's `ts`, `loss`, `final_loss`, `result` and those curves, stacked over
      `gd_widths`.

    Each spectral estimate is Lanczos of at most `iters` steps stopped on the
    residual (tol √ε), from the start vector `flowgap.analysis` draws from `key`,
    as `predictor_hessian_norm` (with a block mask) and `sharpness` do.
    """
    arch, depth, size, widths, draws, probe_width, gd_widths, steps, save_every = group
    d, k = problem.inputs.shape[1], problem.targets.shape[1]
    activation = dict(arch)["activation"]
    saves = steps // save_every + 1 if gd_widths else 0
    plan = Plan(widths, draws, probe_width, len(factors), gd_widths, saves, xs.shape[0])
    layouts = {
        w: tuple(layout(activation, depth, w, size, d, k, wn) for wn in (False, True))
        for w in plan.real
    }
    dim, dtype = param_count(depth, size, d, k, True), problem.inputs.dtype
    masks = jnp.asarray(plan.masks(layouts, dim), dtype)
    norms, sharps = plan.norms.array(), plan.sharps.array()
    # the Lanczos program depends on the drawn networks' shapes only: it compiles
    # (XLA, outside Python's lock) while the networks are drawn, on a second core
    spectra = spectra_program.lower(
        jax.ShapeDtypeStruct((plan.rows, dim), dtype),
        masks,
        jax.ShapeDtypeStruct((2 * len(plan.real), dim), dtype),
        problem,
        xs,
        norms,
        sharps,
        activation=activation,
        depth=depth,
        size=size,
        iters=iters,
    )
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        spectra = pool.submit(spectra.compile)
        firsts = None
        if jnp.result_type(float) != jnp.float64:
            # without x64, a net drawn from a traced key is drawn in float32, one drawn
            # from a concrete key in float64 and rounded (`flowgap._draw.in_float64`):
            # the probe's and GD's nets have always been drawn outside a program
            firsts = _first_pairs(
                arch, depth, {probe_width, *gd_widths} - {None}, d, k, key, layouts
            )
        drawn = _draw_group(layouts, firsts, key, problem, xs, factors, lr, group=group)
        spectra = spectra.result()
    assert drawn["thetas"].shape == (plan.rows, dim)  # the planned tables
    norm, sharp = spectra(
        drawn["thetas"], masks, drawn["starts"], problem, xs, norms, sharps
    )
    norm, sharp, drawn = jax.device_get((norm, sharp, drawn))
    result = {}
    if widths:
        tasks, shape = plan.width, (len(widths), draws)
        blocks = np.mean(norm[tasks["blocks"]], axis=-1)  # over the points
        result["width"] = dict(
            plain=np.mean(norm[tasks["plain"]], axis=-1),
            wn=blocks[..., 0],
            wn_v=blocks[..., 1],
            wn_inner=blocks[..., 2],
            floor=drawn["width"]["floor"].reshape(shape),
            sharpness_plain=sharp[tasks["sharpness_plain"]],
            sharpness_wn=sharp[tasks["sharpness_wn"]],
            function_gap=drawn["width"]["function_gap"].reshape(shape),
            min_v=drawn["width"]["min_v"].reshape(shape),
        )
    if probe_width is not None:
        values = np.mean(norm[plan.probe], axis=-1)  # (factors, blocks)
        result["probe"] = {b: values[:, i] for i, b in enumerate(BLOCKS)}
        result["probe"] |= drawn["probe"]
    if gd_widths:
        traj = drawn["gd"]
        result["gd"] = {}
        for kind, name in enumerate(("plain", "WN")):
            runs = slice(kind, None, 2)
            result["gd"][name] = dict(
                ts=traj["ts"][runs],
                loss=traj["loss"][runs],
                final_loss=traj["final_loss"][runs],
                result=jax.tree.map(lambda a: a[runs], traj["result"]),
                sharpness=np.stack(
                    [sharp[plan.gd[name, i][1]] for i in range(len(gd_widths))]
                ),
                hessian=np.stack(
                    [norm[plan.gd[name, i][0]] for i in range(len(gd_widths))]
                ),
            )
        result["gd"]["WN"]["min_v"] = traj["min_v"]
    return result


def _first_pairs(arch, depth, widths, d, k, key, layouts):
    """{width: flat padded (plain, WN) parameters} of the first matched pair of
    each width, drawn now (outside any program, from a concrete key)."""
    out = {}
    for w in widths:
        wn, plain = matched_pair(
            dict(arch), w, depth, d, k, net_keys(key, depth, w, 1)[0]
        )
        out[w] = []
        for net, lay in zip((plain, wn), layouts[w]):
            flat = np.array(lay.fill)
            flat[lay.index] = np.asarray(flat_params(net))
            out[w].append(flat)
    return out


@functools.partial(_jit, static_argnames="group")
def _draw_group(layouts, firsts, key, problem, xs, factors, lr, *, group: Group):
    """The networks of `measure_group` and what needs no Lanczos: `thetas` (the
    flat padded parameters, in `Plan`'s order), `starts`, and the width
    study's, probe's and GD runs' other quantities. `firsts` (None: drawn here)
    holds the probe's and GD's first pairs, drawn outside (`_first_pairs`)."""
    arch, depth, size, widths, draws, probe_width, gd_widths, steps, save_every = group
    s = dict(arch)
    d, k = problem.inputs.shape[1], problem.targets.shape[1]
    (rebuild_plain, size_plain), (rebuild_wn, dim) = padded_networks(
        s["activation"], depth, size, d, k
    )
    rebuild, sizes = (rebuild_plain, rebuild_wn), (size_plain, dim)
    dtype = problem.inputs.dtype

    def pairs(width, keys):
        """Flat padded (plain, WN) parameters of the pairs drawn from `keys`."""

        def one(net_key):
            wn, plain = matched_pair(s, width, depth, d, k, net_key)
            return flat_params(plain), flat_params(wn)

        flats = jax.lax.map(one, keys)
        return [
            jnp.zeros((len(keys), n), dtype).at[:, lay.index].set(flat) + lay.fill
            for flat, lay, n in zip(flats, layouts[width], sizes)
        ]

    def widen(rows):
        return jnp.pad(rows, ((0, 0), (0, dim - rows.shape[1])))

    if jax.config.jax_threefry_partitionable:
        # a 1-D draw is then a prefix of any longer one from the same key: one
        # draw gives every start vector (each draw costs its own code)
        longest = max(lay.index.size for lays in layouts.values() for lay in lays)
        draw = jax.random.normal(key, (longest,), dtype)

        def normal(n):
            return draw[:n]
    else:

        def normal(n):
            return jax.random.normal(key, (n,), dtype)

    starts = [
        jnp.zeros(dim, dtype).at[lay.index].set(normal(lay.index.size))
        for w in sorted(layouts)
        for lay in layouts[w]
    ]
    thetas, out = [], dict(starts=jnp.stack(starts))

    # under partitionable threefry (JAX's default) `net_keys(…, 1)` is the first
    # of `net_keys(…, draws)`: the probe and GD nets are then the width study's
    # first draws where it has their widths (each draw costs its own code)
    shared = jax.config.jax_threefry_partitionable
    study = {}
    if widths:
        keys = jax.vmap(lambda w: net_keys(key, depth, w, draws))(jnp.asarray(widths))
        study = {w: pairs(w, keys[i]) for i, w in enumerate(widths)}
        plain, wn = (jnp.concatenate(a) for a in zip(*study.values()))
        thetas += [widen(plain), wn]

        def extras(args):
            theta_wn, theta_plain, width = args
            net, plain_net = rebuild_wn(theta_wn), rebuild_plain(theta_plain)
            return dict(
                floor=mean_over(xs, lambda x: gain_floor(net, x)),
                function_gap=jnp.max(
                    jnp.abs(problem.predict(net) - problem.predict(plain_net))
                ),
                min_v=min_direction_norm(net, width),
            )

        real = jnp.repeat(jnp.asarray(widths), draws)
        out["width"] = jax.lax.map(extras, (wn, plain, real))

    def first(width):
        """Flat padded (plain, WN) parameters of the first pair of `width`."""
        if firsts is not None:
            return [a[None] for a in firsts[width]]
        if shared and width in study:
            return [a[:1] for a in study[width]]
        return pairs(width, net_keys(key, depth, width, 1))

    if probe_width is not None:
        w = probe_width
        wn0 = rebuild_wn(first(w)[1][0])
        rescaled = jax.vmap(lambda c: rescale_directions(wn0, c))(factors)
        thetas.append(jax.vmap(flat_params)(rescaled))
        reference = jax.vmap(wn0)(problem.inputs)
        out["probe"] = dict(
            min_v=min_direction_norm(rescaled, w),
            function_change=jax.vmap(
                lambda net: jnp.max(jnp.abs(jax.vmap(net)(problem.inputs) - reference))
            )(rescaled),
        )

    if gd_widths:
        # one GD for every run, on the flat padded parameters: the net's kind
        # (0 plain, 1 WN) picks its loss
        firsts = [first(w) for w in gd_widths]
        kinds = jnp.tile(jnp.arange(2), len(gd_widths))
        runs = jnp.concatenate([widen(t) for f in firsts for t in f])

        def descend(run):
            kind, theta = run
            losses = [
                lambda t, j=j: problem.loss(rebuild[j](t[: sizes[j]])) for j in (0, 1)
            ]
            return dynamics.gradient_descent(
                lambda t: jax.lax.switch(kind, losses, t),
                theta,
                lr=lr,
                steps=steps,
                save_every=save_every,
            )

        traj = jax.lax.map(descend, (kinds, runs))
        thetas += list(traj.models)  # (saves, dim) per run
        out["gd"] = dict(
            ts=traj.ts,
            loss=traj.loss,
            final_loss=traj.final_loss,
            result=traj.result,
            min_v=jnp.stack(
                [
                    jax.vmap(lambda t, w=w: min_direction_norm(rebuild_wn(t), w))(
                        traj.models[2 * i + 1]
                    )
                    for i, w in enumerate(gd_widths)
                ]
            ),
        )
    out["thetas"] = jnp.concatenate(thetas)
    return out
