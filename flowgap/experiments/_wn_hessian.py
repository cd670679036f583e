r"""wn-hessian: predictor Hessian of weight-normalised MLPs against width and min‖v‖.

Weight-normalised tanh MLPs (every layer, output included, rows wᵢ = gᵢvᵢ/‖vᵢ‖)
and the same networks without weight normalisation are measured at several widths
m and depths (docs: theory/models, theory/curvature; Cisneros-Velarde et al. 2024): the
spectral norm
of the predictor Hessian ‖∇²_θ f(θ; x)‖₂ (mean over a few training inputs x) and
the loss sharpness λ_max(∇²L), both by Lanczos on Hessian-vector products, at
initialisation and along gradient descent. Width exponents p in ‖H‖ ∝ mᵖ are
fitted per depth with 95% confidence intervals.

**How the two networks are matched.** Both are `MLP(d, m, k, depth=…, key=key)`
with the same key, so the plain net's layers (W, b) are the default
`eqx.nn.Linear` draw; the weight-normalised net wraps those same layers with
gains gᵢ = ‖wᵢ‖ and then rescales every direction to ‖vᵢ‖ = `v_scale`·√fan_in
(the norm of a vector of unit-variance entries). Since f depends on vᵢ only
through vᵢ/‖vᵢ‖ the two compute the same function at initialisation (the run
reports max |f_WN − f_plain|); they differ only in their parameters: θ = (W, b)
against θ = (g, v, b).

**Exact identities used.** f(g, c·v, b) = f(g, v, b) for every c > 0 (each row
separately), so differentiating twice, ∇²_v f(c·v) = c⁻²∇²_v f(v): the v-block of
the predictor Hessian scales exactly like 1/c² (its gradient like 1/c), while the
(g, b)-block is unchanged. And f is linear in the output gain g_out with
∂²f/∂g_out² = 0, so the Hessian's g_out row is ∇_{θ'}f/g_out (θ' all parameters
but g_out and the output bias) and ‖∇²_θ f‖ ≥ ‖∇_{θ'}f‖/|g_out| (the "floor":
this 2×2 block structure has eigenvalues ±‖row‖ before the rest is added).
"""

import dataclasses
import functools
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from tqdm.auto import tqdm

from .. import analysis, dynamics, models, problems
from ._settings import Setting, SettingError

NAME = "wn-hessian"

SMOOTH_ACTIVATIONS = ("tanh", "gelu", "silu", "softplus", "sigmoid")

SETTINGS = (
    Setting(
        "widths",
        (16, 32, 64, 128, 256, 512),
        "hidden widths m (integers; 1024 works, ~4x the time of 512)",
        "floats",
        positive=True,
    ),
    Setting("depths", (2, 3, 4), "hidden layers (integers)", "floats", positive=True),
    Setting(
        "activation",
        "tanh",
        "smooth activation",
        "str",
        choices=SMOOTH_ACTIVATIONS,
    ),
    Setting(
        "n", 64, "training points (synthetic; first n rows of `data`)", "int", minimum=1
    ),
    Setting("d", 8, "input dimension of the synthetic set", "int", minimum=1),
    Setting(
        "data",
        "",
        "optional .npz with arrays `inputs` (n, d) and `targets` (n, k) or (n,)",
        "str",
    ),
    Setting("points", 2, "inputs x at which ‖∇²f(x)‖ is measured", "int", minimum=1),
    Setting(
        "draws",
        1,
        "networks drawn per (depth, width), one compile; means reported",
        "int",
        minimum=1,
    ),
    Setting("iters", 20, "Lanczos steps per spectral estimate", "int", minimum=2),
    Setting("scale", 1.0, "init scale (multiplies eqx.nn.Linear's)", positive=True),
    Setting(
        "v_scale",
        1.0,
        "WN directions start at ‖vᵢ‖ = v_scale·√fan_in",
        positive=True,
    ),
    Setting(
        "v_factors",
        (0.1, 0.3, 1.0, 3.0, 10.0),
        "factors c: v → c·v at init (min‖v‖ study)",
        "floats",
        positive=True,
    ),
    Setting("probe_width", 128, "width of the min‖v‖ study", "int", minimum=1),
    Setting(
        "probe_depth", 3, "depth of the min‖v‖ study and GD runs", "int", minimum=1
    ),
    Setting("gd_widths", (32, 256), "widths trained by GD", "floats", positive=True),
    Setting("lr", 0.1, "GD learning rate", positive=True),
    Setting("steps", 1000, "GD steps (0 skips the GD study)", "int", minimum=0),
    Setting("saves", 20, "saves along GD; must divide steps", "int", minimum=1),
)

QUICK = dict(
    widths=(16, 32, 64, 128),
    depths=(2,),
    n=16,
    d=4,
    points=2,
    draws=3,
    iters=12,
    v_factors=(0.1, 1.0, 10.0),
    probe_width=16,
    probe_depth=2,
    gd_widths=(16,),
    steps=100,
    saves=5,
)


def _ints(name: str, values) -> tuple[int, ...]:
    if not all(float(v).is_integer() for v in values):
        raise SettingError(f"setting `{name}` must hold integers, got {values}")
    return tuple(int(v) for v in values)


def load_data(path: str, n: int) -> problems.RegressionProblem:
    """The first `n` rows of a real data set: an .npz file with arrays `inputs`
    (rows × d) and `targets` (rows × k, or rows), read without pickle.
    SettingError naming `data` for a missing file, missing arrays or bad shapes."""
    if not os.path.isfile(path):
        raise SettingError(f"setting `data`: no file at {path!r}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in ("inputs", "targets") if k in archive}
    except (OSError, ValueError) as err:
        raise SettingError(
            f"setting `data`: cannot read {path!r} as an .npz of numeric arrays ({err})"
        ) from None
    missing = [k for k in ("inputs", "targets") if k not in arrays]
    if missing:
        raise SettingError(
            f"setting `data`: {path!r} must hold arrays `inputs` (n, d) and "
            f"`targets` (n, k); missing {', '.join(f'`{k}`' for k in missing)}"
        )
    inputs, targets = arrays["inputs"], arrays["targets"]
    if not all(np.issubdtype(a.dtype, np.number) for a in (inputs, targets)):
        raise SettingError("setting `data`: `inputs` and `targets` must be numeric")
    targets = targets[:, None] if targets.ndim == 1 else targets
    if inputs.ndim != 2 or targets.ndim != 2 or len(inputs) != len(targets):
        raise SettingError(
            f"setting `data`: need `inputs` (n, d) and `targets` (n, k) with the same "
            f"n; got shapes {arrays['inputs'].shape} and {arrays['targets'].shape}"
        )
    if len(inputs) == 0 or not (
        np.isfinite(inputs).all() and np.isfinite(targets).all()
    ):
        raise SettingError(f"setting `data`: {path!r} is empty or not finite")
    dtype = jnp.result_type(float)
    return problems.RegressionProblem(
        jnp.asarray(inputs[:n], dtype), jnp.asarray(targets[:n], dtype)
    )


def _problem(s, key) -> problems.RegressionProblem:
    if s["data"]:
        return load_data(s["data"], s["n"])
    return problems.teacher_student(
        key, n=s["n"], d=s["d"], teacher_width=8, activation="tanh", decay=0.5
    )


class FirstOutput(eqx.Module):
    """x ↦ f(x)₀: the scalar predictor whose Hessian is measured (for a
    single-output net, f itself)."""

    net: models.MLP

    def __call__(self, x):
        return self.net(x)[:1]


def rescale_directions(net: models.MLP, factor) -> models.MLP:
    """The weight-normalised `net` with every direction vᵢ → factor·vᵢ (the
    function is unchanged; ‖vᵢ‖ is multiplied by `factor`)."""
    return eqx.tree_at(
        lambda m: [layer.layer.weight for layer in m.layers],
        net,
        [factor * layer.v for layer in net.layers],
    )


def net_keys(key, depth: int, width: int, draws: int):
    """Keys of the `draws` networks of one (depth, width), the same in every study
    of a run (the min‖v‖ and GD studies use the first)."""
    return jax.random.split(
        jax.random.fold_in(jax.random.fold_in(key, depth), width), draws
    )


def matched_pair(s, width: int, depth: int, d: int, k: int, key):
    """(weight-normalised, plain) MLPs computing the same function at init: same
    key and layers; WN gains gᵢ = ‖wᵢ‖, directions rescaled to
    ‖vᵢ‖ = v_scale·√fan_in (module docstring). `s` holds `activation`, `scale`
    and `v_scale`; `key` may be traced."""
    common = dict(depth=depth, activation=s["activation"], scale=s["scale"], key=key)
    plain = models.MLP(d, width, k, **common)
    wn = models.MLP(d, width, k, weight_norm=True, **common)
    wn = eqx.tree_at(
        lambda m: [layer.layer.weight for layer in m.layers],
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


def _directions(m: FirstOutput):
    return tuple(layer.layer.weight for layer in m.net.layers)


def _gains_biases(m: FirstOutput):
    return tuple(layer.gain for layer in m.net.layers) + tuple(
        layer.layer.bias for layer in m.net.layers
    )


def _inner(m: FirstOutput):
    """Every parameter but the output gain."""
    return (
        _directions(m)
        + tuple(layer.layer.bias for layer in m.net.layers)
        + tuple(layer.gain for layer in m.net.layers[:-1])
    )


#: The blocks of a WN net's parameters whose predictor-Hessian norms are measured
#: (None: all of them).
BLOCKS = {"wn": None, "wn_v": _directions, "wn_inner": _inner, "wn_gb": _gains_biases}


def block_masks(predictor: FirstOutput, names) -> FirstOutput:
    """0/1 masks (see `predictor_hessian_norm`) of the named `BLOCKS`, stacked on
    a leading axis."""
    zeros = jax.tree.map(jnp.zeros_like, predictor)
    masks = [
        jax.tree.map(jnp.ones_like, predictor)
        if BLOCKS[name] is None
        else eqx.tree_at(BLOCKS[name], zeros, replace_fn=jnp.ones_like)
        for name in names
    ]
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *masks)


def block_norms(net, xs, key, iters, names):
    """Mean over `xs` of ‖∇²_B f₀(x)‖₂ for each named block B of a WN `net` (one
    vmap over the blocks' masks)."""
    predictor = FirstOutput(net)

    def norm(mask):
        return _mean_over(
            xs,
            lambda x: analysis.predictor_hessian_norm(
                predictor, x, iters=iters, key=key, mask=mask
            ),
        )

    values = jax.lax.map(
        norm, block_masks(predictor, names)
    )  # lax.map: one basis in memory
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
    """‖∇_{θ'} f₀(x)‖/|g_out,0|, θ' = all parameters but the output layer's gain
    and bias: a lower bound on ‖∇²_θ f₀(x)‖ (module docstring)."""
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


def _mean_over(xs, fn):
    return jnp.mean(jax.lax.map(fn, xs))


@functools.partial(_jit, static_argnames=("arch", "width", "depth", "iters"))
def measure_at_init(arch, width, depth, keys, problem, xs, key, iters):
    """Every quantity of one (width, depth), for the matched pair drawn from each
    of `keys` (`arch` as in `matched_pair`; one compile, the draws run in turn):
    predictor-Hessian norms (mean over `xs`) of the plain net, the WN net, its
    v-block, its all-but-output-gain block, the gain floor; both loss
    sharpnesses; max |f_WN − f_plain|; min‖v‖. **Returns:** arrays (draws,)."""
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
    """For each factor c (vmapped: one compile): the WN net with v → c·v, its
    Hessian norms (full, v-block, all-but-output-gain, (g, b)-block), min‖v‖, and
    max |f_c − f_1| over `inputs`."""
    reference = jax.vmap(wn)(inputs)

    def one(c):
        net = rescale_directions(wn, c)
        return dict(
            **block_norms(net, xs, key, iters, tuple(BLOCKS)),
            min_v=min_direction_norm(net),
            function_change=jnp.max(jnp.abs(jax.vmap(net)(inputs) - reference)),
        )

    return jax.vmap(one)(factors)


@functools.partial(_jit, static_argnames=("iters",))
def _hessian_along(traj_models, x, key, iters):
    return jax.lax.map(
        lambda net: analysis.predictor_hessian_norm(
            FirstOutput(net), x, iters=iters, key=key
        ),
        traj_models,
    )


def _width_axis(ax, widths):
    """Log axis with ticks at the measured widths (no minor labels to collide)."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.set_xticks(list(widths))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())


def _fit(widths, values):
    values = np.asarray(values, float)
    if len(widths) < 2 or not np.all(np.isfinite(values) & (values > 0)):
        return dict(
            slope=float("nan"),
            intercept=float("nan"),
            stderr=float("nan"),
            ci=(float("nan"), float("nan")),
        )
    return analysis.loglog_slope(widths, values)


QUANTITIES = {
    "plain": "‖∇²f‖ plain",
    "wn": "‖∇²f‖ WN",
    "wn_v": "‖∇²_v f‖ WN",
    "wn_inner": "‖∇²_θ' f‖ WN (no g_out)",
    "floor": "‖∇_θ' f‖/g_out WN",
    "sharpness_plain": "λ_max(∇²L) plain",
    "sharpness_wn": "λ_max(∇²L) WN",
}


@dataclasses.dataclass
class WNHessianResult:
    """`rows`: one per (depth, width) at init, one per factor c of the min‖v‖
    study (`study="min-v"`), one per GD run (`study="gd"`); `fits`: width
    exponents per depth and quantity; `curves`: arrays for the figure."""

    settings: dict
    rows: list
    fits: dict
    curves: dict

    def table(self) -> str:
        init = [r for r in self.rows if r["study"] == "width"]
        head = (
            f"{'depth':>5} {'width':>6} {'‖H‖plain':>9} {'‖H‖WN':>8} {'‖H_v‖WN':>9} "
            f"{'‖H_θ′‖WN':>9} {'floor':>7} {'λ plain':>8} {'λ WN':>7}"
        )
        lines = ["predictor Hessian ‖∇²f(x)‖ and loss sharpness λ_max at init", head]
        lines.append("-" * len(head))
        for r in init:
            lines.append(
                f"{r['depth']:>5} {r['width']:>6} {r['plain']:>9.4g} {r['wn']:>8.4g} "
                f"{r['wn_v']:>9.4g} {r['wn_inner']:>9.4g} {r['floor']:>7.4g} "
                f"{r['sharpness_plain']:>8.4g} {r['sharpness_wn']:>7.4g}"
            )
        lines += ["", "width exponents p (‖·‖ ∝ mᵖ), 95% CI:"]
        for depth, fits in self.fits["width"].items():
            for key, fit in fits.items():
                lo, hi = fit["ci"]
                lines.append(
                    f"  depth {depth} {QUANTITIES[key]:<26} {fit['slope']:>7.3f} "
                    f"[{lo:>6.3f}, {hi:>6.3f}]"
                )
        probe = [r for r in self.rows if r["study"] == "min-v"]
        lines += [
            "",
            f"min‖v‖ study (width {self.settings['probe_width']}, depth "
            f"{self.settings['probe_depth']}): v → c·v at init",
            f"{'c':>6} {'min‖v‖':>8} {'‖H‖WN':>8} {'‖H_v‖':>9} {'c²‖H_v‖':>9} "
            f"{'‖H_gb‖':>8} {'max|Δf|':>8}",
        ]
        for r in probe:
            lines.append(
                f"{r['factor']:>6g} {r['min_v']:>8.4g} {r['wn']:>8.4g} "
                f"{r['wn_v']:>9.4g} {r['factor'] ** 2 * r['wn_v']:>9.6g} "
                f"{r['wn_gb']:>8.5g} {r['function_change']:>8.1e}"
            )
        gd_rows = [r for r in self.rows if r["study"] == "gd"]
        if not gd_rows:
            return "\n".join(lines)
        lines += [
            "",
            f"gradient descent (depth {self.settings['probe_depth']}, lr = "
            f"{self.settings['lr']:g}, 2/lr = {2 / self.settings['lr']:g}):",
            f"{'width':>6} {'net':>5} {'λ(0)':>7} {'max λ':>7} {'‖H‖(0)':>8} "
            f"{'‖H‖(T)':>8} {'min‖v‖ growth':>13} {'final loss':>10}  status",
        ]
        for r in gd_rows:
            growth = (
                f"{r['min_v_end'] / r['min_v_start'] - 1:+.2e}"
                if r["net"] == "WN"
                else ""
            )
            lines.append(
                f"{r['width']:>6} {r['net']:>5} {r['sharpness_start']:>7.4g} "
                f"{r['max_sharpness']:>7.4g} {r['hessian_start']:>8.4g} "
                f"{r['hessian_end']:>8.4g} {growth:>13} {r['final_loss']:>10.3e}  "
                f"{r['status']}"
            )
        return "\n".join(lines)

    def figure(self):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(2, 3, figsize=(16, 9))
        widths = self.curves["widths"]
        depths = self.curves["depths"]
        colours = plt.cm.viridis(np.linspace(0.0, 0.8, len(depths)))
        ax = axes[0, 0]
        for depth, colour in zip(depths, colours):
            fits = self.fits["width"][str(depth)]
            for key, style in (("wn", "o-"), ("plain", "s--")):
                ax.loglog(
                    widths,
                    self.curves[f"{depth}/{key}"],
                    style,
                    color=colour,
                    label=f"depth {depth} {'WN' if key == 'wn' else 'plain'}: "
                    f"p={fits[key]['slope']:.2f}",
                )
        ax.set(xlabel="width m", ylabel="‖∇²_θ f(x)‖₂", title="full predictor Hessian")
        _width_axis(ax, widths)
        ax.legend(fontsize=7)
        ax = axes[0, 1]
        for depth, colour in zip(depths, colours):
            fits = self.fits["width"][str(depth)]
            for key, style, label in (
                ("wn_v", "o-", "v-block"),
                ("wn_inner", "^-", "all but g_out"),
                ("floor", "x:", "floor ‖∇_θ′f‖/g_out"),
            ):
                slope = f": p={fits[key]['slope']:.2f}" if key != "floor" else ""
                ax.loglog(
                    widths,
                    self.curves[f"{depth}/{key}"],
                    style,
                    color=colour,
                    label=f"depth {depth} {label}{slope}",
                )
        ax.set(xlabel="width m", ylabel="norm", title="WN: Hessian blocks and floor")
        _width_axis(ax, widths)
        low, high = ax.get_ylim()
        ax.set_ylim(low, high * 30)  # room for the legend above the floor
        ax.legend(fontsize=6, ncol=3, loc="upper center")
        ax = axes[0, 2]
        min_v = self.curves["probe/min_v"]
        for key, style, label in (
            ("wn", "o-", "full"),
            ("wn_v", "s-", "v-block"),
            ("wn_inner", "^-", "all but g_out"),
            ("wn_gb", "d-", "(g, b)-block"),
        ):
            ax.loglog(min_v, self.curves[f"probe/{key}"], style, label=label)
        ref = self.curves["probe/wn_v"]
        middle = len(min_v) // 2
        ax.loglog(
            min_v,
            ref[middle] * (min_v / min_v[middle]) ** -2.0,
            "k:",
            lw=1,
            label="∝ min‖v‖⁻²",
        )
        ax.set(
            xlabel="min‖v‖ (v → c·v at init)",
            ylabel="‖∇²f(x)‖₂",
            title=f"WN against min‖v‖ (m={self.settings['probe_width']}, depth "
            f"{self.settings['probe_depth']})",
        )
        ax.legend(fontsize=7)
        ax = axes[1, 0]
        for depth, colour in zip(depths, colours):
            fits = self.fits["width"][str(depth)]
            for key, style, label in (
                ("sharpness_wn", "o-", "WN"),
                ("sharpness_plain", "s--", "plain"),
            ):
                ax.loglog(
                    widths,
                    self.curves[f"{depth}/{key}"],
                    style,
                    color=colour,
                    label=f"depth {depth} {label}: p={fits[key]['slope']:.2f}",
                )
        ax.set(xlabel="width m", ylabel="λ_max(∇²L)", title="loss sharpness at init")
        _width_axis(ax, widths)
        ax.legend(fontsize=7)
        gd_widths = self.curves.get("gd_widths", ())
        shades = plt.cm.plasma(np.linspace(0.1, 0.75, len(gd_widths)))
        for width, shade in zip(gd_widths, shades):
            for net, style in (("WN", "-"), ("plain", "--")):
                key = f"gd/{width}/{net}"
                axes[1, 1].plot(
                    self.curves[f"{key}/ts"],
                    self.curves[f"{key}/sharpness"],
                    style,
                    color=shade,
                    label=f"m={width} {net}",
                )
                axes[1, 2].semilogy(
                    self.curves[f"{key}/ts"],
                    self.curves[f"{key}/hessian"],
                    style,
                    color=shade,
                    label=f"m={width} {net}",
                )
        axes[1, 1].axhline(
            2 / self.settings["lr"], color="k", ls=":", lw=1, label="2/η"
        )
        axes[1, 1].set(
            xlabel="time t = kη", ylabel="λ_max(∇²L)", title="sharpness along GD"
        )
        axes[1, 2].set(
            xlabel="time t = kη",
            ylabel="‖∇²_θ f(x₀)‖₂",
            title="predictor Hessian along GD",
        )
        if len(gd_widths):
            axes[1, 1].legend(fontsize=7)
            axes[1, 2].legend(fontsize=7)
        source = self.settings["data"] or "teacher–student"
        fig.suptitle(
            f"{self.settings['activation']} MLPs on {source}: WN (‖vᵢ‖ = "
            f"{self.settings['v_scale']:g}·√fan_in) against plain",
            fontsize=10,
        )
        fig.tight_layout()
        return fig


def _arch(s):
    """The settings `matched_pair` needs, hashable (a static jit argument)."""
    return tuple((name, s[name]) for name in ("activation", "scale", "v_scale"))


def _width_study(s, problem, xs, key, progress):
    rows, fits, curves = [], {}, {}
    configs = [(depth, width) for depth in s["depths"] for width in s["widths"]]
    bar = tqdm(configs, desc=f"{NAME} widths", disable=not progress, leave=False)
    for depth, width in bar:
        bar.set_postfix_str(f"depth {depth} width {width}")
        keys = net_keys(key, depth, width, s["draws"])
        values = measure_at_init(
            _arch(s), width, depth, keys, problem, xs, key, s["iters"]
        )
        rows.append(
            dict(study="width", depth=depth, width=width)
            | {name: float(np.mean(v)) for name, v in values.items()}
            | dict(function_gap=float(np.max(values["function_gap"])))
        )
    bar.close()
    for depth in s["depths"]:
        mine = [r for r in rows if r["depth"] == depth]
        fits[str(depth)] = {
            q: _fit(s["widths"], [r[q] for r in mine]) for q in QUANTITIES
        }
        for q in QUANTITIES:
            curves[f"{depth}/{q}"] = np.array([r[q] for r in mine])
    curves["widths"] = np.asarray(s["widths"])
    curves["depths"] = np.asarray(s["depths"])
    return rows, fits, curves


def _probe_study(s, problem, xs, key):
    d, k = problem.inputs.shape[1], problem.targets.shape[1]
    first = net_keys(key, s["probe_depth"], s["probe_width"], 1)[0]
    wn, _ = matched_pair(s, s["probe_width"], s["probe_depth"], d, k, first)
    factors = jnp.asarray(s["v_factors"])
    values = measure_rescaled(wn, factors, xs, problem.inputs, key, s["iters"])
    rows = [
        dict(study="min-v", factor=float(c))
        | {name: float(v[i]) for name, v in values.items()}
        for i, c in enumerate(s["v_factors"])
    ]
    curves = {f"probe/{name}": np.asarray(v) for name, v in values.items()}
    curves["probe/factors"] = np.asarray(factors)
    return rows, curves


def _gd_study(s, problem, xs, key, progress):
    d, k = problem.inputs.shape[1], problem.targets.shape[1]
    rows, curves = [], {}
    jobs = [(w, net) for w in s["gd_widths"] for net in ("WN", "plain")]
    bar = tqdm(jobs, desc=f"{NAME} GD", disable=not progress, leave=False)
    for width, name in bar:
        bar.set_postfix_str(f"width {width} {name}")
        first = net_keys(key, s["probe_depth"], width, 1)[0]
        wn, plain = matched_pair(s, width, s["probe_depth"], d, k, first)
        net = wn if name == "WN" else plain
        traj = dynamics.gradient_descent(
            problem.loss,
            net,
            lr=s["lr"],
            steps=s["steps"],
            save_every=s["steps"] // s["saves"],
        )
        sharp = np.asarray(
            analysis.track_sharpness(problem.loss, traj, iters=s["iters"], key=key)
        )
        finite = jnp.all(jnp.isfinite(traj.loss))
        hessian = np.asarray(_hessian_along(traj.models, xs[0], key, s["iters"]))
        if not bool(finite):
            hessian = np.where(np.isfinite(np.asarray(traj.loss)), hessian, np.nan)
        prefix = f"gd/{width}/{name}"
        curves[f"{prefix}/ts"] = np.asarray(traj.ts)
        curves[f"{prefix}/loss"] = np.asarray(traj.loss)
        curves[f"{prefix}/sharpness"] = sharp
        curves[f"{prefix}/hessian"] = hessian
        row = dict(
            study="gd",
            width=width,
            net=name,
            sharpness_start=float(sharp[0]),
            max_sharpness=float(np.nanmax(sharp)),
            hessian_start=float(hessian[0]),
            hessian_end=float(hessian[-1]),
            final_loss=float(traj.final_loss),
            status=dynamics.RESULTS[traj.result] or "ok",
        )
        if name == "WN":
            min_v = np.asarray(min_direction_norm(traj.models))
            curves[f"{prefix}/min_v"] = min_v
            row |= dict(min_v_start=float(min_v[0]), min_v_end=float(min_v[-1]))
        rows.append(row)
    bar.close()
    curves["gd_widths"] = np.asarray(s["gd_widths"])
    return rows, curves


def run(settings: dict, *, seed: int, progress: bool = True) -> WNHessianResult:
    """Run wn-hessian with resolved `settings` (see `SETTINGS`)."""
    s = dict(settings)
    for name in ("widths", "depths", "gd_widths"):
        s[name] = _ints(name, s[name])
    if s["steps"] and s["steps"] % s["saves"]:
        raise SettingError(
            f"setting `saves` ({s['saves']}) must divide steps ({s['steps']})"
        )
    key = jax.random.key(seed)
    problem = _problem(s, key)
    if s["points"] > problem.n:
        raise SettingError(
            f"setting `points` ({s['points']}) must be ≤ the {problem.n} training "
            "points"
        )
    xs = problem.inputs[: s["points"]]
    rows, fits, curves = _width_study(s, problem, xs, key, progress)
    probe_rows, probe_curves = _probe_study(s, problem, xs, key)
    gd_rows, gd_curves = (
        _gd_study(s, problem, xs, key, progress) if s["steps"] else ([], {})
    )
    return WNHessianResult(
        settings=s,
        rows=rows + probe_rows + gd_rows,
        fits=dict(width=fits),
        curves=curves | probe_curves | gd_curves,
    )
