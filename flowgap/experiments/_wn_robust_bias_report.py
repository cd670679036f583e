"""wn-robust-bias's report: the result class with its table columns and figure
panels (the rows and findings: `_wn_robust_bias_rows`)."""

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._figure import Panel, Series
from ._result import ExperimentResult
from ._table import Column, render_table
from ._wn_robust_bias_rows import alpha_label, precision_notes, table_rows
from ._wn_robust_bias_train import METHOD_NAMES, METHODS, check_settings

COLOURS = {"plain": "tab:blue", "polar": "tab:orange", "polar-split": "tab:green"}
STYLES = {2: "-", 3: "--"}
MARKERS = dict(gf="o", gd="s", rpgd="^", sk="v")


class WNRobustBiasResult(ExperimentResult):
    """What one wn-robust-bias run produced.

    `rows`: one dict per run (family, depth, method, α, ρ, recovery error, loss,
    time, steps, status, solver, r_∞, ‖θ‖, α_eff and the theory's error);
    `fits`: the headline comparisons, computed from the rows (see `findings`),
    and the largest polar-limit gap per model and depth;
    `curves`: the grids as arrays (axes scales × ratios).

    The table has one line per (model, depth, method, ρ) and a column per α.
    """

    FIGURE_COLUMNS = 3
    PANEL_SIZE = (17 / 3, 9.5 / 2)

    def columns(self) -> Sequence[Column]:
        return (
            Column("model"),
            Column("depth", "L"),
            Column("method"),
            Column("ratio", "ρ", "g"),
            *(Column(alpha_label(a)) for a in self.settings["scales"]),
        )

    def title(self) -> str:
        return "recovery error ‖β_∞ − β*‖ (* = Kvaerno5, ! = not converged)"

    def notes(self) -> Sequence[str]:
        notes = [f"{k}: {v}" for k, v in self.fits["findings"].items()]
        return notes + precision_notes(self.rows, self.fits, self.curves)

    def table(self) -> str:
        # The lines are groups of rows (one cell per α), not the rows themselves.
        lines = table_rows(self.rows)
        return render_table(
            lines, self.columns(), title=self.title(), notes=self.notes()
        )

    def figure_title(self) -> str:
        s = self.settings
        problem = f"n={s['n']}, d={s['d']}, s={s['sparsity']}"
        return f"wn-robust-bias: sparse recovery {problem}"

    def _column(self, family: str) -> int:
        """The ratio column of the per-model panels (the plain net has one)."""
        if family == "plain":
            return 0
        return list(self.settings["ratios"]).index(self.settings["ratio"])

    def figure_data(self) -> Mapping[str, Any]:
        """The curves, plus per (family, depth, method) the column at ρ = `ratio`
        of: the error where converged (`…/error:ok`) and where not
        (`…/error:not`), the theory's error, and the time / steps to converge,
        each only where positive (a log axis cannot show 0: e.g. an error below
        float32's resolution)."""
        c = self.curves
        data = dict(c)
        for key in c:
            if not key.endswith("/recovery_error"):
                continue
            tag = key.removesuffix("/recovery_error")
            j = self._column(tag.split("/")[0])
            ok = np.asarray(c[f"{tag}/converged"], bool)[:, j]
            error = _positive(np.asarray(c[key], float)[:, j])
            data[f"{tag}/error:ok"] = np.where(ok, error, np.nan)
            data[f"{tag}/error:not"] = np.where(ok, np.nan, error)
            theory = np.asarray(c[f"{tag}/theory_error"], float)[:, j]
            data[f"{tag}/theory:col"] = _positive(theory)
            for name in ("time", "steps"):
                value = np.asarray(c[f"{tag}/{name}"], float)[:, j]
                data[f"{tag}/{name}:ok"] = np.where(ok, _positive(value), np.nan)
        return data

    def panels(self) -> Sequence[Panel]:
        s = self.settings
        depths, families = check_settings(s)
        tol, ratio = f"{s['tol']:g}", f"{s['ratio']:g}"
        discrete = [
            (f, L, m) for f in families for m in METHODS[f] if m != "gf" for L in depths
        ]
        flows = [(f, L, "gf") for f in families for L in depths]
        return (
            Panel(
                "gradient flow: recovery error (hollow: not converged)",
                self._flow_error_series(flows),
                **_ERROR_AXES,
            ),
            Panel(
                f"discrete, step {s['step']:g}× plain bound, ρ={ratio} "
                "(hollow: not converged)",
                [x for run in discrete for x in _error_series(*run, ratio)],
                **_ERROR_AXES,
            ),
            Panel(
                "gradient flow: time to converge",
                [_converged_series("time", *run) for run in flows],
                xlabel="init scale α",
                ylabel=f"flow time to L < {tol}",
                xscale="log",
                yscale="log",
                draw=_if_nothing_positive,
                legend_size=7.0,
            ),
            Panel(
                f"discrete: steps to converge (budget {s['steps']})",
                [_converged_series("steps", *run) for run in discrete],
                xlabel="init scale α",
                ylabel=f"GD steps to L < {tol}",
                xscale="log",
                yscale="log",
                draw=_legend_on_top,
                legend_size=0.0,
            ),
            self._heat_panel("gf", depths[0]),
            self._heat_panel("rpgd", depths[0]),
        )

    def _flow_error_series(self, flows) -> list[Series]:
        """Each flow's error (at ρ = `ratio`), and its theory where there is one."""
        out = []
        for family, depth, method in flows:
            out += _error_series(family, depth, method, f"{self.settings['ratio']:g}")
            tag = f"{family}/L{depth}/{method}"
            theory = np.asarray(self.curves[f"{tag}/theory_error"], float)
            if not np.any(np.isfinite(theory[:, self._column(family)])):
                continue
            plain = family == "plain"
            out.append(
                Series(
                    f"{tag}/theory:col",
                    "scales",
                    ":" if plain else "x",
                    f"Woodworth Q_α limit (L={depth})"
                    if plain
                    else f"plain limit from α_eff ({family} L={depth})",
                    options=dict(color="k" if plain else COLOURS[family], ms=10),
                )
            )
        return out

    def _heat_panel(self, method: str, depth: int) -> Panel:
        if f"polar/L{depth}/{method}/recovery_error" not in self.curves:
            return Panel(draw=lambda ax, data: ax.axis("off"), legend_size=0.0)
        return Panel(
            f"polar L={depth} {METHOD_NAMES[method]} / plain GF "
            "(K: Kvaerno5, !: not converged)",
            xlabel="init scale α",
            ylabel="rate ratio ρ",
            draw=functools.partial(_heat_map, method=method, depth=depth),
            legend_size=0.0,
        )


def _label(family: str, depth: int, method: str, ratio: str) -> str:
    label = f"{family} L={depth} {METHOD_NAMES[method]}"
    return label if family == "plain" or method != "gf" else f"{label} ρ={ratio}"


def _error_series(family, depth, method, ratio) -> list[Series]:
    """Recovery error against α: converged runs joined by a line, the others as
    hollow markers."""
    tag = f"{family}/L{depth}/{method}"
    colour, marker = COLOURS[family], MARKERS[method]
    return [
        Series(
            f"{tag}/error:ok",
            "scales",
            STYLES[depth],
            _label(family, depth, method, ratio),
            options=dict(marker=marker, color=colour),
        ),
        Series(
            f"{tag}/error:not",
            "scales",
            marker,
            options=dict(color=colour, markerfacecolor="none"),
        ),
    ]


def _converged_series(name: str, family, depth, method) -> Series:
    label = f"{family} L={depth}"
    if method != "gf":
        label += f" {METHOD_NAMES[method]}"
    return Series(
        f"{family}/L{depth}/{method}/{name}:ok",
        "scales",
        STYLES[depth],
        label,
        options=dict(marker=MARKERS[method], color=COLOURS[family]),
    )


def _positive(values):
    return np.where(np.isfinite(values) & (values > 0), values, np.nan)


def _if_nothing_positive(ax, data) -> bool:
    """Whether `ax` has a positive value to show on its log y-axis; if not (no
    run converged, or every value is 0), a linear axis with a note instead."""
    del data
    for line in ax.lines:
        y = np.asarray(line.get_ydata(), float)
        if np.any(np.isfinite(y) & (y > 0)):
            return True
    ax.set_yscale("linear")
    ax.text(0.5, 0.5, "nothing positive to plot", ha="center", transform=ax.transAxes)
    return False


def _legend_on_top(ax, data) -> None:
    """Legend in two columns above the data (the log y-range is widened by 10⁴
    upwards), so it never hides a point."""
    if not _if_nothing_positive(ax, data):
        return
    low, high = ax.get_ylim()
    ax.set_ylim(low, high * 1e4)
    ax.legend(fontsize=6, ncol=2, loc="upper center")


#: The axes of the two recovery-error panels.
_ERROR_AXES = dict(
    xlabel="init scale α",
    ylabel="‖β_∞ − β*‖",
    xscale="log",
    yscale="log",
    draw=_legend_on_top,
    legend_size=0.0,
)


def _heat_map(ax, data, *, method: str, depth: int) -> None:
    """log10 of polar / plain recovery error over α × ρ (stacked polar net), with
    K where the flow used Kvaerno5 and ! where it did not converge."""
    tag = f"polar/L{depth}/{method}"
    plain = np.asarray(data[f"plain/L{depth}/gf/recovery_error"])[:, :1]
    errors = _positive(np.asarray(data[f"{tag}/recovery_error"], float))
    ratio = np.log10(errors / _positive(np.asarray(plain, float)))
    image = ax.imshow(
        ratio.T, origin="lower", cmap="RdBu_r", vmin=-4, vmax=4, aspect="auto"
    )
    scales, ratios = data["scales"], data["ratios"]
    ax.set_xticks(range(len(scales)), [f"{a:g}" for a in scales])
    ax.set_yticks(range(len(ratios)), [f"{r:g}" for r in ratios])
    implicit, converged = data[f"{tag}/implicit"], data[f"{tag}/converged"]
    for i in range(len(scales)):
        for j in range(len(ratios)):
            mark = ("K" if implicit[i, j] else "") + ("" if converged[i, j] else "!")
            ax.text(
                i, j, f"{ratio[i, j]:.1f}{mark}", ha="center", va="center", fontsize=8
            )
    ax.figure.colorbar(image, ax=ax, label="log10(polar error / plain GF error)")
