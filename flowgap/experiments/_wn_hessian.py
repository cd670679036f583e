r"""wn-hessian: predictor Hessian of weight-normalised MLPs against width and min‖v‖.

Weight-normalised tanh MLPs (every layer, output included, rows wᵢ = gᵢvᵢ/‖vᵢ‖)
and the same networks without weight normalisation are measured at several widths
m and depths (docs: theory/models, theory/curvature; Cisneros-Velarde et al. 2024): the
spectral norm
of the predictor Hessian ‖∇²_θ f(θ; x)‖₂ (mean over a few training inputs x) and
the loss sharpness λ_max(∇²L), both by Lanczos on Hessian-vector products, at
initialisation and along gradient descent. Width exponents p in ‖H‖ ∝ mᵖ are
fitted per depth with 95% confidence intervals. The data (setting `data`) are
the UCI digits by default (`flowgap.problems.digits`, bundled with scikit-learn),
a tanh teacher–student set (`synthetic`) or an .npz file.

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

import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from .. import analysis, dynamics, models, problems
from ._settings import Setting, SettingError
from ._wn_hessian_group import Group, measure_group
from ._wn_hessian_measure import QUANTITIES
from ._wn_hessian_measure import FirstOutput as FirstOutput
from ._wn_hessian_measure import block_masks as block_masks
from ._wn_hessian_measure import gain_floor as gain_floor
from ._wn_hessian_measure import matched_pair as matched_pair
from ._wn_hessian_measure import rescale_directions as rescale_directions
from ._wn_hessian_padding import param_count
from ._wn_hessian_report import WNHessianResult as WNHessianResult

NAME = "wn-hessian"

#: The smooth activations but the identity, in `flowgap.models.ACTIVATIONS` order.
SMOOTH_ACTIVATIONS = tuple(
    name for name in models.ACTIVATIONS if name in models.SMOOTH and name != "linear"
)

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
        "data",
        "digits",
        "digits (scikit-learn's bundled 8×8 digits, one-hot targets), synthetic "
        "(a tanh teacher) or a path to an .npz with arrays `inputs` (n, d) and "
        "`targets` (n, k) or (n,)",
        "str",
    ),
    Setting("n", 64, "training points (the first n rows of `data`)", "int", minimum=1),
    Setting("d", 8, "input dimension of the synthetic set", "int", minimum=1),
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


#: The named data sets of setting `data`; any other value must be an .npz path.
DATA_SETS = ("digits", "synthetic")


def _problem(s, key) -> problems.RegressionProblem:
    """The training set named by setting `data` (see `SETTINGS`): the first `n`
    digits (file order; inputs/16 and one-hot targets, both centred), a tanh
    teacher–student set, or the first `n` rows of an .npz file."""
    data = s["data"]
    if data == "digits":
        try:
            return problems.digits(s["n"])
        except ValueError as err:  # too many examples: the loader names `n`
            raise SettingError(f"setting `n` with data=digits: {err}") from None
    if data == "synthetic":
        return problems.teacher_student(
            key, n=s["n"], d=s["d"], teacher_width=8, activation="tanh", decay=0.5
        )
    if not data.endswith(".npz"):
        raise SettingError(
            f"setting `data` must be {' or '.join(DATA_SETS)} or a path to an .npz "
            f"file, got {data!r}"
        )
    return load_data(data, s["n"])


def _fit(widths, values):
    """`analysis.loglog_slope`, or NaNs where it has no positive finite data."""
    values = np.asarray(values, float)
    if len(widths) < 2 or not np.all(np.isfinite(values) & (values > 0)):
        return dict(
            slope=float("nan"),
            intercept=float("nan"),
            stderr=float("nan"),
            ci=(float("nan"), float("nan")),
        )
    return analysis.loglog_slope(widths, values)


def _arch(s):
    """The settings `matched_pair` needs, hashable (a static jit argument)."""
    return tuple((name, s[name]) for name in ("activation", "scale", "v_scale"))


#: Networks of one depth with at most this many parameters (WN) share one compiled
#: program, padded to the largest of them (`measure_group`); a larger one has its
#: own. Compiling a program costs seconds, while padding a network to this size
#: costs milliseconds per Lanczos run.
SHARED_SIZE = 1 << 15


def groups(s, d: int, k: int) -> list[tuple[int, tuple[int, ...]]]:
    """(depth, widths) of the programs `run` compiles: per depth, every width that
    a study needs with at most `SHARED_SIZE` parameters in one, each larger one
    alone."""
    needed = {depth: set(s["widths"]) for depth in s["depths"]}
    gd = s["gd_widths"] if s["steps"] else ()
    needed.setdefault(s["probe_depth"], set()).update({s["probe_width"], *gd})
    out = []
    for depth, widths in sorted(needed.items()):
        small = tuple(
            w
            for w in sorted(widths)
            if param_count(depth, w, d, k, True) <= SHARED_SIZE
        )
        out += [(depth, small)] if small else []
        out += [(depth, (w,)) for w in sorted(widths) if w not in small]
    return out


def _measure(s, problem, xs, key, progress):
    """`measure_group` of every program of `groups`: {"width": {(depth, width):
    values by quantity}, "probe": values by quantity, "gd": {width: {net: run}}}."""
    d, k = problem.inputs.shape[1], problem.targets.shape[1]
    out = dict(width={}, probe=None, gd={})
    todo = groups(s, d, k)
    bar = tqdm(todo, desc=f"{NAME} programs", disable=not progress, leave=False)
    for depth, widths in bar:
        bar.set_postfix_str(f"depth {depth} widths {','.join(map(str, widths))}")
        mine = depth == s["probe_depth"]
        study = tuple(w for w in dict.fromkeys(s["widths"]) if w in widths)
        group = Group(
            arch=_arch(s),
            depth=depth,
            size=max(widths),
            widths=study if depth in s["depths"] else (),
            draws=s["draws"],
            probe_width=s["probe_width"]
            if mine and s["probe_width"] in widths
            else None,
            gd_widths=tuple(w for w in s["gd_widths"] if w in widths)
            if mine and s["steps"]
            else (),
            steps=s["steps"],
            save_every=s["steps"] // s["saves"] if s["steps"] else 1,
        )
        factors = jnp.asarray(s["v_factors"], problem.inputs.dtype)
        values = measure_group(group, key, problem, xs, factors, s["lr"], s["iters"])
        values = jax.device_get(values)
        for i, width in enumerate(study if depth in s["depths"] else ()):
            out["width"][depth, width] = {q: v[i] for q, v in values["width"].items()}
        if "probe" in values:
            out["probe"] = values["probe"]
        if "gd" in values:
            for i, width in enumerate(w for w in s["gd_widths"] if w in widths):
                out["gd"][width] = {
                    net: jax.tree.map(lambda a, i=i: a[i, ...], runs)
                    for net, runs in values["gd"].items()
                }
    bar.close()
    return out


def _width_study(s, measured):
    """Every quantity at init for each (depth, width), and its width exponents."""
    rows, fits, curves = [], {}, {}
    for depth in s["depths"]:
        for width in s["widths"]:
            values = measured[depth, width]
            rows.append(
                dict(study="width", depth=depth, width=width)
                | {name: float(np.mean(v)) for name, v in values.items()}
                | dict(function_gap=float(np.max(values["function_gap"])))
            )
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


def _probe_study(s, values):
    """The first WN net of (`probe_depth`, `probe_width`) under v → c·v."""
    rows = [
        dict(study="min-v", factor=float(c))
        | {name: float(v[i]) for name, v in values.items()}
        for i, c in enumerate(s["v_factors"])
    ]
    curves = {f"probe/{name}": np.asarray(v) for name, v in values.items()}
    curves["probe/factors"] = np.asarray(s["v_factors"], jnp.result_type(float))
    return rows, curves


def _gd_study(s, measured):
    """GD from the matched pair of each of `gd_widths` at depth `probe_depth`."""
    rows, curves = [], {}
    for width in s["gd_widths"]:
        for name in ("WN", "plain"):
            row, run_curves = _gd_run(width, name, measured[width][name])
            rows.append(row)
            curves |= {f"gd/{width}/{name}/{q}": v for q, v in run_curves.items()}
    curves["gd_widths"] = np.asarray(s["gd_widths"])
    return rows, curves


def _gd_run(width: int, name: str, run):
    """One GD run of the `name` ("WN" or "plain") net of a matched pair
    (`measure_group`): its row and its curves along the saves (sharpness,
    ‖∇²f(x₀)‖, and min‖v‖ for WN)."""
    sharp, hessian, loss = (
        np.asarray(run[q]) for q in ("sharpness", "hessian", "loss")
    )
    if not np.all(np.isfinite(loss)):
        hessian = np.where(np.isfinite(loss), hessian, np.nan)
    curves = dict(ts=np.asarray(run["ts"]), loss=loss, sharpness=sharp, hessian=hessian)
    row = dict(
        study="gd",
        width=width,
        net=name,
        sharpness_start=float(sharp[0]),
        max_sharpness=float(np.nanmax(sharp)),
        hessian_start=float(hessian[0]),
        hessian_end=float(hessian[-1]),
        final_loss=float(run["final_loss"]),
        status=dynamics.RESULTS[run["result"]] or "ok",
    )
    if name == "WN":
        curves["min_v"] = min_v = np.asarray(run["min_v"])
        row |= dict(min_v_start=float(min_v[0]), min_v_end=float(min_v[-1]))
    return row, curves


def run(settings: Mapping, *, seed: int, progress: bool = True) -> WNHessianResult:
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
    measured = _measure(s, problem, xs, key, progress)
    rows, fits, curves = _width_study(s, measured["width"])
    probe_rows, probe_curves = _probe_study(s, measured["probe"])
    gd_rows, gd_curves = _gd_study(s, measured["gd"]) if s["steps"] else ([], {})
    return WNHessianResult(
        settings=s,
        rows=rows + probe_rows + gd_rows,
        fits=dict(width=fits),
        curves=curves | probe_curves | gd_curves,
    )
