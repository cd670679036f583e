"""wn-hessian's report: the result class, its table columns and figure panels."""

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._figure import Line, Panel, Series, shades
from ._result import ExperimentResult
from ._table import Column, render_table
from ._wn_hessian_measure import QUANTITIES


def _norm(key: str, header: str, fmt: str = ".4g") -> Column:
    return Column(key, header, fmt)


def _growth(row: Mapping):
    """min‖v‖(T)/min‖v‖(0) − 1 of a WN run (None for a plain one)."""
    if row.get("min_v_start") is None:
        return None
    return row["min_v_end"] / row["min_v_start"] - 1


#: One row per (depth, width) at initialisation.
INIT_COLUMNS = (
    Column("depth"),
    Column("width"),
    _norm("plain", "‖H‖plain"),
    _norm("wn", "‖H‖WN"),
    _norm("wn_v", "‖H_v‖WN"),
    _norm("wn_inner", "‖H_θ′‖WN"),
    _norm("floor", "floor"),
    _norm("sharpness_plain", "λ plain"),
    _norm("sharpness_wn", "λ WN"),
)

#: One row per (depth, quantity) of the width fits.
EXPONENT_COLUMNS = (
    Column("depth"),
    Column("quantity"),
    Column("slope", "p", ".3f"),
    Column("ci", "95% CI", ".3f"),
)

#: One row per factor c of the min‖v‖ study.
PROBE_COLUMNS = (
    Column("factor", "c", "g"),
    _norm("min_v", "min‖v‖"),
    _norm("wn", "‖H‖WN"),
    _norm("wn_v", "‖H_v‖"),
    Column(lambda r: r["factor"] ** 2 * r["wn_v"], "c²‖H_v‖", ".6g"),
    _norm("wn_gb", "‖H_gb‖", ".5g"),
    Column("function_change", "max|Δf|", ".1e"),
)

#: One row per gradient-descent run.
GD_COLUMNS = (
    Column("width"),
    Column("net"),
    _norm("sharpness_start", "λ(0)"),
    _norm("max_sharpness", "max λ"),
    _norm("hessian_start", "‖H‖(0)"),
    _norm("hessian_end", "‖H‖(T)"),
    Column(_growth, "min‖v‖ growth", "+.2e"),
    Column("final_loss", "final loss", ".3e"),
    Column("status"),
)


def _width_ticks(ax, data) -> None:
    """Ticks at the measured widths on the log axis (no minor labels to collide)."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.set_xticks(list(np.asarray(data["widths"])))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())


def _blocks_layout(ax, data) -> None:
    """Width ticks, and room above the floor for a three-column legend."""
    _width_ticks(ax, data)
    low, high = ax.get_ylim()
    ax.set_ylim(low, high * 30)
    ax.legend(fontsize=6, ncol=3, loc="upper center")


class WNHessianResult(ExperimentResult):
    """wn-hessian's result.

    - `rows`: one per (depth, width) at init (`study="width"`), one per factor c
      of the min‖v‖ study (`study="min-v"`), one per GD run (`study="gd"`);
    - `fits`: `fits["width"][depth][quantity]`, the width exponent p in
      ‖·‖ ∝ mᵖ with its 95% CI, for each quantity of `QUANTITIES`;
    - `curves`: `widths`, `depths`, `{depth}/{quantity}` against width;
      `probe/{block}`, `probe/min_v`, `probe/factors`; `gd_widths` and
      `gd/{width}/{WN|plain}/{ts,loss,sharpness,hessian[,min_v]}`.
    """

    FIGURE_COLUMNS = 3
    PANEL_SIZE = (16 / 3, 4.5)

    # -- table ---------------------------------------------------------------------
    def columns(self) -> Sequence[Column]:
        return INIT_COLUMNS

    def title(self) -> str:
        return "predictor Hessian ‖∇²f(x)‖ and loss sharpness λ_max at init"

    def notes(self) -> Sequence[str]:
        return (
            "‖H‖ = ‖∇²_θ f(x)‖₂ averaged over the measured inputs x;",
            "H_v: the v-block; H_θ′: all parameters but the output gain g_out;",
            "floor = ‖∇_θ′f‖/|g_out|, a lower bound on ‖H‖WN.",
        )

    def table(self) -> str:
        s = self.settings
        parts = [
            render_table(
                self._study("width"),
                self.columns(),
                title=self.title(),
                notes=self.notes(),
            ),
            render_table(
                self._exponents(),
                EXPONENT_COLUMNS,
                title="width exponents p (‖·‖ ∝ mᵖ)",
            ),
            render_table(
                self._study("min-v"),
                PROBE_COLUMNS,
                title=f"min‖v‖ study (width {s['probe_width']}, depth "
                f"{s['probe_depth']}): v → c·v at init",
            ),
        ]
        if self._study("gd"):
            parts.append(
                render_table(
                    self._study("gd"),
                    GD_COLUMNS,
                    title=f"gradient descent (depth {s['probe_depth']}, lr = "
                    f"{s['lr']:g}, 2/lr = {2 / s['lr']:g})",
                )
            )
        return "\n\n".join(parts)

    def _study(self, study: str) -> list:
        return [r for r in self.rows if r["study"] == study]

    def _exponents(self) -> list:
        return [
            dict(
                depth=int(depth),
                quantity=label,
                slope=fits[key]["slope"],
                ci=fits[key]["ci"],
            )
            for depth, fits in self.fits["width"].items()
            for key, label in QUANTITIES.items()
            if key in fits
        ]

    # -- figure --------------------------------------------------------------------
    def figure_title(self) -> str:
        s = self.settings
        names = {
            "digits": "digits",
            "synthetic": "teacher–student",
            "": "teacher–student",
        }
        source = names.get(s["data"], pathlib.PurePath(s["data"]).name)
        return (
            f"{s['activation']} MLPs on {source}: WN (‖vᵢ‖ = {s['v_scale']:g}·"
            "√fan_in) against plain"
        )

    def figure_data(self) -> Mapping[str, Any]:
        """The curves, and the line ∝ min‖v‖⁻² through the middle v-block norm."""
        min_v = np.asarray(self.curves["probe/min_v"])
        norms = np.asarray(self.curves["probe/wn_v"])
        middle = len(min_v) // 2
        reference = norms[middle] * (min_v / min_v[middle]) ** -2.0
        return dict(self.curves) | {"probe/inverse_square": reference}

    def panels(self) -> Sequence[Panel]:
        panels = [
            self._width_panel(
                "full predictor Hessian",
                "‖∇²_θ f(x)‖₂",
                (("wn", "o-", "WN"), ("plain", "s--", "plain")),
            ),
            self._width_panel(
                "WN: Hessian blocks and floor",
                "norm",
                (
                    ("wn_v", "o-", "v-block"),
                    ("wn_inner", "^-", "all but g_out"),
                    ("floor", "x:", "floor ‖∇_θ′f‖/g_out"),
                ),
                draw=_blocks_layout,
                legend_size=0.0,
            ),
            self._probe_panel(),
            self._width_panel(
                "loss sharpness at init",
                "λ_max(∇²L)",
                (("sharpness_wn", "o-", "WN"), ("sharpness_plain", "s--", "plain")),
            ),
        ]
        return panels + self._gd_panels()

    def _width_panel(
        self, title, ylabel, quantities, draw=_width_ticks, legend_size=7.0
    ) -> Panel:
        """One series per (depth, quantity) against width, log-log, labelled with
        the fitted exponent (the floor is a bound, not fitted in the legend)."""
        depths = np.asarray(self.curves["depths"])
        series = []
        for depth, colour in zip(depths, shades("viridis", len(depths), 0.0, 0.8)):
            fits = self.fits["width"][str(depth)]
            for key, style, label in quantities:
                slope = "" if key == "floor" else f": p={fits[key]['slope']:.2f}"
                series.append(
                    Series(
                        f"{depth}/{key}",
                        "widths",
                        style,
                        f"depth {depth} {label}{slope}",
                        options=dict(color=colour),
                    )
                )
        return Panel(
            title,
            series,
            xlabel="width m",
            ylabel=ylabel,
            xscale="log",
            yscale="log",
            draw=draw,
            legend_size=legend_size,
        )

    def _probe_panel(self) -> Panel:
        blocks = (
            ("wn", "o-", "full"),
            ("wn_v", "s-", "v-block"),
            ("wn_inner", "^-", "all but g_out"),
            ("wn_gb", "d-", "(g, b)-block"),
        )
        series = [
            Series(f"probe/{key}", "probe/min_v", style, label)
            for key, style, label in blocks
        ]
        series.append(
            Series(
                "probe/inverse_square",
                "probe/min_v",
                ":",
                "∝ min‖v‖⁻²",
                options=dict(color="k", lw=1),
            )
        )
        s = self.settings
        return Panel(
            f"WN against min‖v‖ (m={s['probe_width']}, depth {s['probe_depth']})",
            series,
            xlabel="min‖v‖ (v → c·v at init)",
            ylabel="‖∇²f(x)‖₂",
            xscale="log",
            yscale="log",
            legend_size=7.0,
        )

    def _gd_panels(self) -> list:
        """Sharpness and predictor-Hessian norm along GD (none when GD was skipped)."""
        widths = np.asarray(self.curves.get("gd_widths", ()))
        if not widths.size:
            return []
        runs = [
            (f"gd/{width}/{net}", style, f"m={width} {net}", shade)
            for width, shade in zip(widths, shades("plasma", len(widths), 0.1, 0.75))
            for net, style in (("WN", "-"), ("plain", "--"))
        ]

        def series(quantity):
            return [
                Series(
                    f"{run}/{quantity}",
                    f"{run}/ts",
                    style,
                    label,
                    options=dict(color=c),
                )
                for run, style, label, c in runs
            ]

        edge = Line(2 / self.settings["lr"], label="2/η", options=dict(color="k", lw=1))
        return [
            Panel(
                "sharpness along GD",
                series("sharpness"),
                lines=(edge,),
                xlabel="time t = kη",
                ylabel="λ_max(∇²L)",
                legend_size=7.0,
            ),
            Panel(
                "predictor Hessian along GD",
                series("hessian"),
                xlabel="time t = kη",
                ylabel="‖∇²_θ f(x₀)‖₂",
                yscale="log",
                legend_size=7.0,
            ),
        ]
