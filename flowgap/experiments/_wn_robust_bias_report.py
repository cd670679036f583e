"""wn-robust-bias's report: the result class with its table columns and figure
panels (the rows and findings: `_wn_robust_bias_rows`)."""

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._figure import Panel, Series
from ._result import ExperimentResult
from ._table import Column, render_table
from ._wn_robust_bias_rows import (
    alpha_label,
    discrete_notes,
    flow_notes,
    precision_notes,
    table_rows,
)
from ._wn_robust_bias_stall import stalled
from ._wn_robust_bias_train import METHOD_NAMES, check_settings

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
        return "recovery error ‖β_∞ − β*‖ (* = Kvaerno5, ! = not converged, ~ = saddle)"

    def notes(self) -> Sequence[str]:
        notes = [f"{k}: {v}" for k, v in self.fits["findings"].items()]
        raised = self.fits.get("precision", {}).get("raised", {})
        tol = raised["tol"]["used"] if "tol" in raised else None
        notes += flow_notes(self.rows, self.settings["tol"] if tol is None else tol)
        notes += discrete_notes(self.rows, self.settings, tol)
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
        data = dict(c, horizon=self.settings["t1"])
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
        """One question per panel, at most four series each: per depth, does the
        polar flow beat the plain one (and its limit is the α_eff theory's); do
        the discrete polar steps; how long the flows and the steps take; and the
        polar / plain error over the whole (α, ρ) grid."""
        s = self.settings
        depths, families = check_settings(s)
        ratio = f"{s['ratio']:g}"
        flows = [self._flow_panel(depth, families) for depth in depths]
        first = depths[0]
        polar = [f for f in families if f != "plain"][:1]
        discrete = [("plain", first, "gd")] + [
            (f, first, m) for f in polar for m in ("rpgd", "sk")
        ]
        discrete += [(f, first, "gf") for f in polar]
        timed = [(f, L, "gf") for L in depths for f in ("plain", *polar)][:4]
        return (
            *flows,
            Panel(
                f"L={first}, ρ={ratio}: do GD steps ({s['step']:g}× local bound) "
                "keep it?",
                [_error_series(*run, ratio) for run in discrete],
                **_error_axes(discrete),
            ),
            Panel(
                "how long does the flow take?",
                [_converged_series("time", *run) for run in timed],
                xlabel="init scale α",
                ylabel=f"flow time to L < {s['tol']:g}",
                xscale="log",
                yscale="log",
                draw=_if_nothing_positive,
                legend_size=7.0,
            ),
            Panel(
                f"how many GD steps? (budget {s['steps']})",
                [_converged_series("steps", *run) for run in discrete[:3]],
                xlabel="init scale α",
                ylabel=f"GD steps to L < {s['tol']:g}",
                xscale="log",
                yscale="log",
                draw=_if_nothing_positive,
                legend_size=7.0,
            ),
            self._heat_panel("gf", first),
            self._heat_panel("rpgd", first),
        )

    def _flow_panel(self, depth: int, families) -> Panel:
        """Depth `depth`: each family's flow error at ρ = `ratio`, and the plain
        limit from the measured α_eff (the stacked polar net's theory)."""
        ratio = f"{self.settings['ratio']:g}"
        runs = [(f, depth, "gf") for f in families]
        out = [_error_series(*run, ratio) for run in runs]
        tag = f"polar/L{depth}/gf"
        theory = self.curves.get(f"{tag}/theory_error")
        column = self._column("polar")
        if theory is not None and np.any(np.isfinite(theory[:, column])):
            out.append(
                Series(
                    f"{tag}/theory:col",
                    "scales",
                    "x",
                    "plain limit from α_eff",
                    options=dict(color="k", ms=9),
                )
            )
        return Panel(
            f"L={depth} flow, ρ={ratio}: does polar beat plain?",
            out,
            **_error_axes(runs),
        )

    def _heat_panel(self, method: str, depth: int) -> Panel:
        if f"polar/L{depth}/{method}/recovery_error" not in self.curves:
            return Panel(draw=lambda ax, data: ax.axis("off"), legend_size=0.0)
        return Panel(
            f"log10 error, polar L={depth} {METHOD_NAMES[method]} / plain GF",
            xlabel="init scale α (K: Kvaerno5, !: not converged, ~: saddle)",
            ylabel="rate ratio ρ",
            draw=functools.partial(_heat_map, method=method, depth=depth),
            legend_size=0.0,
        )


def _label(family: str, depth: int, method: str, ratio: str) -> str:
    label = f"{family} L={depth} {METHOD_NAMES[method]}"
    return label if family == "plain" or method != "gf" else f"{label} ρ={ratio}"


def _error_series(family, depth, method, ratio) -> Series:
    """Recovery error against α of the converged runs, joined by a line (the
    others are drawn hollow by the panel's `_hollow`)."""
    tag = f"{family}/L{depth}/{method}"
    return Series(
        f"{tag}/error:ok",
        "scales",
        STYLES[depth],
        _label(family, depth, method, ratio),
        options=dict(marker=MARKERS[method], color=COLOURS[family]),
    )


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


def _hollow(ax, data, *, runs) -> None:
    """The runs' unconverged points as hollow markers (no legend entry), then
    the legend above the data (`_legend_on_top`)."""
    for family, depth, method in runs:
        y = np.asarray(data[f"{family}/L{depth}/{method}/error:not"], float)
        ax.plot(
            data["scales"],
            y,
            MARKERS[method],
            color=COLOURS[family],
            markerfacecolor="none",
        )
    _legend_on_top(ax, data)


def _error_axes(runs) -> dict:
    """The axes of a recovery-error panel over `runs` (family, depth, method)."""
    return dict(
        xlabel="init scale α",
        ylabel="‖β_∞ − β*‖ (hollow: not converged)",
        xscale="log",
        yscale="log",
        draw=functools.partial(_hollow, runs=runs),
        legend_size=0.0,
    )


def _heat_map(ax, data, *, method: str, depth: int) -> None:
    """log10 of polar / plain recovery error over α × ρ (stacked polar net), with
    ! where the run did not converge and ~ where it stalled at a saddle."""
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
    converged, settle = data[f"{tag}/converged"], data[f"{tag}/settle_time"]
    stuck = stalled(settle, data[f"{tag}/escape_time"], data["horizon"])
    for i in range(len(scales)):
        for j in range(len(ratios)):
            stuck_here = stuck[i, j] and method == "gf"
            mark = "K" if data[f"{tag}/implicit"][i, j] else ""
            mark += "" if converged[i, j] else ("~" if stuck_here else "!")
            ax.text(
                i, j, f"{ratio[i, j]:.1f}{mark}", ha="center", va="center", fontsize=8
            )
    ax.figure.colorbar(image, ax=ax, label="log10(polar error / plain GF error)")
