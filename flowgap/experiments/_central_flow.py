r"""central-flow: past the edge of stability, GD's average follows the central flow.

A tanh MLP is trained by full-batch GD at learning rates whose threshold 2/η
its sharpness reaches, and by three flows on the same clock t = kη: gradient
flow, the order-1 modified flow and the central flow (docs: theory/central-flow).
GD is compared through its time averages on the half-step grid t = (j + ½)η:
the average of consecutive iterates θ̄, the loss averaged over `average` half
steps, and the oscillation energy ‖θ_{j+1} − θ_j‖²/4 (predicted as tr Σ).

The flows run twice: from the initialisation, and re-anchored at GD's time
average θ̄ once GD oscillates at the edge: at the first time from which on the
sharpness at θ̄ stays within `settled` of 2/η (or at `anchor` if set). From the
initialisation the central flow reaches the edge and bends at once, while GD
overshoots: its oscillation grows from the round-off level at a rate set by how
far past 2/η it is, so it leaves the flow late and lands elsewhere (a catapult).
Re-anchoring past that entry tests what the central flow models, the
oscillating regime itself. Each comparison starts where GD departs from that
comparison's gradient flow: from the first half step on which, to the end, the
loss at GD's average, L(θ̄), differs from the flow's by more than `threshold`.

Data (`data`): "random-labels" (Gaussian inputs, independent Gaussian labels,
the standard small test bed for progressive sharpening) or "digits" (the UCI
handwritten digits bundled with scikit-learn, one-hot targets).
"""

import jax
from tqdm.auto import tqdm

from .. import models, problems
from ._central_flow_measure import measure_rate
from ._figure import Line, Panel, Series
from ._result import ExperimentResult
from ._settings import Setting, SettingError
from ._table import Column

NAME = "central-flow"

#: per data set: its size, network and the runs' defaults (a setting left at 0
#: or empty takes these)
PRESETS = {
    "random-labels": dict(n=128, d=8, width=16, lrs=(0.2, 0.3), t1=450.0, k=2),
    "digits": dict(n=256, d=64, width=16, lrs=(0.4,), t1=500.0, k=4),
}

SETTINGS = (
    Setting(
        "data",
        "random-labels",
        "data set: random-labels or digits",
        "str",
        choices=tuple(PRESETS),
    ),
    Setting("n", 0, "training examples (0: the data set's preset)", "int", minimum=0),
    Setting("width", 0, "hidden width of the MLP (0: preset)", "int", minimum=0),
    Setting("depth", 2, "hidden layers of the MLP", "int", minimum=1),
    Setting(
        "lrs",
        (),
        "GD learning rates, each past the edge (empty: preset; random-labels "
        "0.2,0.3, digits 0.4)",
        "floats",
        positive=True,
    ),
    Setting("t1", 0.0, "horizon T in time units t = kη (0: preset)", "float"),
    Setting(
        "anchor",
        0.0,
        "time at which the flows restart from GD's θ̄ (0: once GD has settled)",
    ),
    Setting(
        "settled",
        0.01,
        "GD has settled at the edge once λ(θ̄) stays this close to 2/η (relative)",
        positive=True,
    ),
    Setting(
        "k",
        0,
        "eigenvalues the central flow can hold at the edge (0: preset, 2 for "
        "random-labels, 4 for digits)",
        "int",
        minimum=0,
    ),
    Setting("lanczos_steps", 30, "Lanczos steps per eigen-solve", "int", minimum=2),
    Setting("average", 50, "half steps in GD's time-averaged loss", "int", minimum=1),
    Setting(
        "threshold",
        0.1,
        "relative gap between L(θ̄) and gradient flow's loss that counts as departure",
        positive=True,
    ),
    Setting(
        "sharpness_points", 300, "points on GD's sharpness curve", "int", minimum=2
    ),
)

QUICK = dict(lrs=(0.2,), t1=300.0, sharpness_points=100, lanczos_steps=8)


class CentralFlowResult(ExperimentResult):
    """Per learning rate (`rows`): when GD's sharpness crossed 2/η, when it
    departed from gradient flow, the ratio of its distances to gradient flow and
    to the central flow at t1 (`end_gf_ratio`), and over the window past
    departure (from the
    initialisation, `init_…`, and re-anchored, `anchored_…`) the smallest ratios
    of GD's distance to gradient flow (`gf_ratio`) and to the modified flow
    (`mf_ratio`) over its distance to the central flow, the largest relative
    error of the predicted loss (`loss_error`) and of the central flow's
    sharpness against 2/η (`edge_error`); `curves`: every series of the figure
    (`LR/...`)."""

    FIGURE_COLUMNS = 4
    PANEL_SIZE = (5.0, 3.8)

    def _preset(self):
        """The settings with the data set's preset filled in: a result loaded
        from its folder has the settings as given (0 and empty: the preset)."""
        preset = PRESETS[self.settings["data"]]
        given = self.settings
        return {n: given[n] or v for n, v in preset.items() if n in given}

    def title(self):
        return f"central flow against GD on {self.settings['data']}"

    def columns(self):
        return (
            Column("lr", fmt="g"),
            Column("held", "held"),
            Column("cross_time", "t(λ>2/η)", ".4g", missing="never"),
            Column("depart_time", "t(depart)", ".4g", missing="never"),
            Column("init_gf_ratio", "GF/CF init", ".3g"),
            Column("end_gf_ratio", "at t1", ".3g"),
            Column("anchor_time", "anchor", ".4g"),
            Column("anchored_depart", "t(depart')", ".4g", missing="never"),
            Column("anchored_gf_ratio", "GF/CF", ".3g"),
            Column("anchored_mf_ratio", "MF/CF", ".3g"),
            Column("anchored_loss_error", "loss err", ".2%", missing="—"),
            Column("anchored_edge_error", "edge err", ".2e", missing="—"),
        )

    def notes(self):
        return [
            "GF/CF, MF/CF: smallest ratio of GD's time-averaged distance to gradient "
            "flow (or the order-1 modified flow) over its distance to the central "
            "flow, from departure to t1; 'init' from the initialisation, the others "
            "re-anchored at GD's average at `anchor`; 'at t1': the ratio at the "
            "end, from the initialisation.",
            "held: most eigenvalues the central flow held at 2/η at once (of k = "
            f"{self._preset()['k']}; reaching k means k may be too small).",
            "loss err: largest |L_pred/L̄ − 1| past departure (re-anchored); edge "
            "err: largest |λ_CF·η/2 − 1| there.",
        ]

    def panels(self):
        panels = []
        for lr in self._preset()["lrs"]:
            panels.extend(_rate_panels(f"{lr:g}", lr))
        return panels


def _rate_panels(key, lr):
    x = f"{key}/t"
    time = dict(xlabel="time t = kη")
    return (
        Panel(
            f"η = {key}: loss",
            (
                Series(
                    f"{key}/gd_loss",
                    f"{key}/t_steps",
                    label="GD",
                    options=dict(color="0.75", lw=0.6),
                ),
                Series(f"{key}/gd_average", x, "k-", label="GD, averaged"),
                Series(f"{key}/gf_loss", x, "C0--", label="gradient flow"),
                Series(
                    f"{key}/cf_predicted", x, "C3-", label="central flow, predicted"
                ),
            ),
            yscale="log",
            ylabel="training loss",
            **time,
        ),
        Panel(
            f"η = {key}: sharpness (dashed: 2/η)",
            (
                Series(
                    f"{key}/gd_sharpness", f"{key}/t_sharpness", "k-", label="GD at θ̄"
                ),
                Series(f"{key}/cf_sharpness", x, "C3-", label="central flow"),
            ),
            (Line(2 / lr, options=dict(color="0.4", ls="--", lw=0.8)),),
            ylabel="λ_max(∇²L)",
            **time,
        ),
        Panel(
            f"η = {key}: distance from GD's θ̄",
            (
                Series(f"{key}/distance_gf", x, "C0--", label="gradient flow"),
                Series(f"{key}/distance_mf", x, "C1:", label="modified flow (order 1)"),
                Series(f"{key}/distance_cf", x, "C3-", label="central flow"),
                Series(
                    f"{key}/anchored_distance_cf",
                    f"{key}/t_anchored",
                    "C3:",
                    label="central flow, re-anchored",
                ),
            ),
            yscale="log",
            ylabel="‖θ̄_GD − θ_flow‖",
            **time,
        ),
        Panel(
            f"η = {key}: oscillation",
            (
                Series(f"{key}/energy", x, "k-", label="GD: ‖θₖ₊₁ − θₖ‖²/4, averaged"),
                Series(f"{key}/sigma_trace", x, "C3-", label="central flow: tr Σ"),
            ),
            yscale="log",
            ylabel="squared distance",
            **time,
        ),
    )


def _with_preset(settings):
    """The settings with every 0 or empty value replaced by the data set's
    preset; checks that the anchor lies inside the horizon."""
    preset = PRESETS[settings["data"]]
    changes = {
        name: preset[name]
        for name in ("n", "width", "lrs", "t1", "k")
        if not settings[name]
    }
    s = settings.replace(**changes) if changes else settings
    if s["t1"] <= 0 or s["anchor"] < 0:
        raise SettingError("settings `t1` and `anchor` must be positive")
    if s["anchor"] >= s["t1"]:
        raise SettingError(
            f"setting `anchor` ({s['anchor']:g}) must be before t1 ({s['t1']:g})"
        )
    return s, preset


def _setup(s, preset, seed):
    """The data set and the tanh MLP drawn from `seed`."""
    k_data, k_model = jax.random.split(jax.random.key(seed))
    if s["data"] == "digits":
        problem = problems.digits(s["n"], key=k_data)
        d, out = 64, 10
    else:
        problem = problems.random_labels(k_data, n=s["n"], d=preset["d"])
        d, out = preset["d"], 1
    model = models.MLP(
        d, s["width"], out, depth=s["depth"], activation="tanh", key=k_model
    )
    return problem, model


def run(settings, *, seed: int, progress: bool = True) -> CentralFlowResult:
    """Run central-flow with resolved `settings` (see `SETTINGS`)."""
    s, preset = _with_preset(settings)
    problem, model = _setup(s, preset, seed)
    rows, curves = [], {}
    for lr in tqdm(s["lrs"], desc=NAME, disable=not progress, leave=False):
        row, rate_curves = measure_rate(s, problem, model, lr)
        rows.append(row)
        curves.update(rate_curves)
    anchored = [r["anchored_gf_ratio"] for r in rows]
    fits = dict(
        smallest_anchored_gf_ratio=min(
            (r for r in anchored if r is not None), default=None
        )
    )
    return CentralFlowResult(settings=s, rows=rows, fits=fits, curves=curves)
