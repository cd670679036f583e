r"""saddle-to-saddle: small-init two-layer nets learn in stages, one rank at a time.

A two-layer net f(x) = W₂σ(W₁x) (σ linear or tanh) from N(0, α²) entries fits a
rank-3 linear teacher on anisotropic inputs (Gaussian, or the principal components
of the UCI digits: `problem`) by GD and by the exact flow
(docs: theory/saddle-to-saddle). The loss is a staircase: each plateau sits at a saddle
whose
end-to-end map has rank k, and each stage adds one rank. Stages are detected
automatically (`analysis.detect_stages`) on both clocks, at two init scales.

Finite steps slow each plateau down: near a saddle the units grow like
(1 + ησ_k)^k per GD step against e^{σ_k t} in continuous time, so the time to
escape grows with δ = −ln α at rate η/ln(1 + ησ_k) for GD against 1/σ_k for the
flow. The ratio of the two slopes, measured from the two init scales (the O(1)
parts cancel in the difference), is compared with ησ_k/ln(1 + ησ_k), σ_k the k-th
singular value of the coefficient matrix C = (1/n)YᵀX at the origin.
Layer-wise GD on a three-layer linear net shows the same plateaus, with every
layer close to rank k on plateau k and each stage adding a rank-one piece to every
layer, both measured against the init scale (`_saddle_layerwise`).
"""

import jax
import numpy as np

from ._figure import Line, Panel, Series
from ._result import ExperimentResult
from ._saddle_alignment import alignment_sweep
from ._saddle_layerwise import (
    SAVE_EVERY,
    approach_panel,
    layerwise_figure_data,
    layerwise_sweep,
    scaling_panel,
)
from ._saddle_nets import staircase_runs
from ._saddle_problems import PROBLEMS, check_problem, saddle_problem
from ._saddle_stages import (
    alignment_at_escape,
    escape_slopes,
    slowdown,
    staircases,
    unit_alignment,
)
from ._saddle_tables import fit_tables
from ._settings import Config, Setting, SettingError
from ._table import Column, render_table

NAME = "saddle-to-saddle"

SETTINGS = (
    Setting(
        "problem",
        "synthetic",
        "inputs: Gaussian with spectrum j^(−decay), or the digits' principal "
        "components (decay unused)",
        "str",
        choices=PROBLEMS,
    ),
    Setting("n", 200, "samples", "int", minimum=1),
    Setting(
        "d",
        8,
        "input dimension (digits: principal directions, ≤ 48)",
        "int",
        minimum=2,
    ),
    Setting("out_dim", 4, "output dimension", "int", minimum=1),
    Setting(
        "teacher_rank", 3, "width (= rank) of the linear teacher", "int", minimum=1
    ),
    Setting("width", 8, "student width", "int", minimum=1),
    Setting("decay", 1.0, "input spectrum λ_j = j^(−decay)", positive=True),
    Setting("scales", (1e-6, 1e-16), "two init scales α", "floats", positive=True),
    Setting("lr", 0.1, "GD learning rate η", positive=True),
    Setting("t1", 200.0, "horizon (time units t = kη)", positive=True),
    Setting(
        "flow_saves_per_step",
        10,
        "gradient-flow saves per GD step (finer stage starts on the flow)",
        "int",
        minimum=1,
    ),
    Setting(
        "layerwise_steps",
        12000,
        f"steps of layer-wise GD (3-layer; a multiple of {SAVE_EVERY})",
        "int",
        minimum=1,
    ),
    Setting(
        "layerwise_scales",
        (0.04, 0.02, 0.01, 0.005),
        "init scales of the 3-layer net (at least two)",
        "floats",
        positive=True,
    ),
    Setting(
        "alignment_scales",
        (1e-6, 1e-8, 1e-10, 1e-12),
        "init scales of the alignment fit (linear GD to t1)",
        "floats",
        positive=True,
    ),
    Setting(
        "alignment_lrs",
        (0.2, 0.1, 0.05),
        "learning rates of the alignment fit",
        "floats",
        positive=True,
    ),
)

# The scales are those of the defaults: Δδ = ln(α₁/α₂) ≈ 23 makes the slowdown's
# quantisation tolerance (≈ 4ησ/Δδ) a tenth of the effect (≈ ησ/2) on every
# plateau; t1 = 130 is just past the third escape from α = 1e-16. The layer-wise
# plateaus last ∝ 1/α (depth 3): from α = 0.01 the third stage ends near t = 570.
QUICK = dict(t1=130.0, layerwise_steps=8000, layerwise_scales=(0.04, 0.02, 0.01))

ACTIVATIONS = ("linear", "tanh")


def _check(s):
    check_problem(s)
    if len(s["scales"]) != 2 or s["scales"][0] <= s["scales"][1]:
        raise SettingError(
            "setting `scales` must be two init scales, the larger first, got "
            f"{s['scales']}"
        )
    if len(set(s["layerwise_scales"])) < 2:
        raise SettingError(
            "setting `layerwise_scales` must hold at least two distinct scales, got "
            f"{s['layerwise_scales']}"
        )
    if s["layerwise_steps"] % SAVE_EVERY:
        raise SettingError(
            f"setting `layerwise_steps` must be a multiple of {SAVE_EVERY}, got "
            f"{s['layerwise_steps']}"
        )
    steps = s["t1"] / s["lr"]
    if abs(steps - round(steps)) > 1e-9 * steps:
        raise SettingError(
            f"setting `t1` must be a whole number of steps of lr = {s['lr']}"
        )
    return int(round(steps))


def run(
    settings: Config, *, seed: int, progress: bool = True
) -> "SaddleToSaddleResult":
    """Run saddle-to-saddle with resolved `settings` (see `SETTINGS`)."""
    s = settings
    steps = _check(s)
    problem = saddle_problem(s, jax.random.key(seed))
    coefficient = np.asarray(problem.targets.T @ problem.inputs / s["n"])
    sigma = np.linalg.svd(coefficient, compute_uv=False)
    runs = staircase_runs(problem, s, steps, ACTIVATIONS, progress)
    rows, by_activation, curves, seeded = staircases(runs, s["scales"])
    stages = {k[1:]: v for k, v in by_activation.items() if k[0] == "linear"}
    tanh = {k[1:]: v for k, v in by_activation.items() if k[0] == "tanh"}
    small = runs["linear", s["scales"][1]]["gd"]
    curves["alignment"] = unit_alignment(small, coefficient)
    alignment = alignment_sweep(problem, s, steps)
    layer_curves, layerwise = layerwise_sweep(problem, s)
    curves.update(layer_curves)
    fits = dict(
        sigma=sigma.tolist(),
        slowdown=slowdown(
            stages, sigma, s["lr"], s["scales"], s["flow_saves_per_step"]
        ),
        alignment=alignment,
        tanh_escapes=escape_slopes(
            tanh, sigma, s["lr"], s["scales"], s["flow_saves_per_step"]
        ),
        # (scale, clock, stage) whose plateau round-off ended (never in float64)
        round_off_seeded=[list(x) for x in seeded],
        alignment_at_first_escape=alignment_at_escape(
            stages["gd", 1], small.ts, curves["alignment"]
        ),
        layerwise=layerwise,
    )
    return SaddleToSaddleResult(s, rows, fits, curves)


_CLOCKS = (("gd", "-"), ("gf", "--"))


class SaddleToSaddleResult(ExperimentResult):
    """Stage table (`rows`), slowdown fits and alignment (`fits`), curves."""

    PANEL_SIZE = (5.0, 4.4)
    FIGURE_COLUMNS = 3

    def stages(self, activation="linear", scale=None, clock="gd") -> list:
        """The table rows of one run (default: the linear net's GD run from the
        smaller init scale)."""
        scale = self.settings["scales"][1] if scale is None else scale
        return [
            r
            for r in self.rows
            if r["activation"] == activation
            and r["scale"] == scale
            and r["clock"] == clock
        ]

    def columns(self):
        return (
            Column("activation", "act"),
            Column("scale", "α", ".0e"),
            Column("clock"),
            Column("stage"),
            Column("start", fmt=".2f"),
            Column("end", fmt=".2f"),
            Column("loss_before", "loss before", ".4e"),
            Column("loss_after", "loss after", ".3e"),
            Column("rank_after", "rank"),
        )

    def notes(self):
        notes = []
        a = self.fits["alignment_at_first_escape"]
        if a is not None:
            notes.append(
                "median alignment ratio ‖(I−P₁)wᵢ‖/‖P₁wᵢ‖ at the end of the first "
                f"plateau (GD, α = {self.settings['scales'][1]:g}): {a:.2e}"
            )
        seeded = self.fits.get("round_off_seeded", [])
        if seeded:
            where = ", ".join(f"{c.upper()} α = {a:g} stage {k}" for a, c, k in seeded)
            notes.append(
                f"round-off, not α, seeded these plateaus' escape ({where}): the "
                "seed s_k(W₁) at the end of an earlier stage was within 10 ulps of "
                "s₁(W₁), so their starts and the slowdown rows of those stages "
                "measure the dtype, not −ln α; run in float64"
            )
        return notes

    def table(self) -> str:
        """The stage table, then the slowdown per plateau (with the first-plateau
        alignment as a note), the alignment fit on every plateau, the tanh net's
        escape times and the layer-wise net's rank-k approach per plateau and its
        fit against α."""
        return "\n\n".join(
            (
                render_table(self.rows, self.columns()),
                *fit_tables(self.fits, self.notes()),
            )
        )

    def figure_title(self):
        s = self.settings
        # results saved before `problem` existed are synthetic
        return (
            f"{s.get('problem', 'synthetic')} inputs, "
            f"teacher rank {s['teacher_rank']}, n={s['n']}, d={s['d']}, "
            f"width {s['width']}, η={s['lr']:g}"
        )

    def figure_data(self):
        """The curves, with every matrix-valued curve also split by column
        (`NAME/j`, j from 1), and the layer-wise panels' arrays."""
        data = dict(self.curves)
        for name, value in self.curves.items():
            value = np.asarray(value)
            if value.ndim == 2:
                data.update(
                    {f"{name}/{j + 1}": value[:, j] for j in range(value.shape[1])}
                )
        if "layerwise" in self.fits:  # results saved before it lack it
            data.update(layerwise_figure_data(self.curves, self.fits["layerwise"]))
        return data

    def panels(self):
        small = f"{self.settings['scales'][1]:g}"
        return (
            self._staircase_panel(small),
            self._singular_values_panel(small),
            Panel(
                title="units align with C's top pair on plateau 1",
                series=(Series("alignment", f"linear/{small}/gd/ts"),),
                lines=tuple(
                    Line(r["start"], "x", options=dict(color="0.6", lw=0.8, ls="-"))
                    for r in self.stages()
                ),
                xlabel="time",
                ylabel="median ‖(I−P₁)wᵢ‖/‖P₁wᵢ‖",
                yscale="log",
            ),
            *(
                (
                    approach_panel(self.fits["layerwise"]),
                    scaling_panel(self.fits["layerwise"]),
                )
                if "layerwise" in self.fits
                else ()
            ),
        )

    def _staircase_panel(self, small):
        spans = [(r["start"], r["end"]) for r in self.stages()]

        def shade_stages(ax, data):
            for start, end in spans:
                ax.axvspan(start, end, color="0.9", zorder=0)

        return Panel(
            title=f"staircase (α = {small})",
            series=tuple(
                Series(
                    f"{activation}/{small}/{clock}/loss",
                    f"{activation}/{small}/{clock}/ts",
                    style,
                    f"{activation} {clock.upper()}",
                    options=dict(color=colour),
                )
                for activation, colour in zip(ACTIVATIONS, ("C0", "C3"))
                for clock, style in _CLOCKS
            ),
            xlabel="time t = kη",
            ylabel="loss",
            yscale="log",
            draw=shade_stages,
        )

    def _singular_values_panel(self, small):
        count = np.shape(self.curves[f"linear/{small}/gd/singular_values"])[1]
        return Panel(
            title="one rank per stage",
            series=tuple(
                Series(
                    f"linear/{small}/{clock}/singular_values/{j + 1}",
                    f"linear/{small}/{clock}/ts",
                    style,
                    f"σ{j + 1} {clock.upper()}" if j < 4 else "",
                    options=dict(color=f"C{j}"),
                )
                for clock, style in _CLOCKS
                for j in range(count)
            ),
            xlabel="time",
            ylabel="singular values of W₂W₁",
            yscale="log",
            draw=lambda ax, data: ax.set_ylim(1e-12, None),
            legend_size=7.0,
            legend_columns=2,
        )
