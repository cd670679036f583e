"""sgd-vs-sde's report: the result class, its table sections and figure panels."""

import numpy as np

from ._figure import Line, Panel, Series
from ._result import ExperimentResult
from ._table import Column, render_table

MOMENT_COLUMNS = (
    Column("lr", "η", "g"),
    Column("steps"),
    Column("cov_gf", "cov GF", ".3g"),
    Column("cov_sde1", "cov SDE1", ".3e"),
    Column("cov_sde2", "cov SDE2", ".3e"),
    Column("weak_gf", "E L: GF", ".3e"),
    Column("weak_sde1", "SDE1", ".3e"),
    Column("weak_sde2", "SDE2", ".3e"),
)

FIT_COLUMNS = (
    Column("quantity"),
    Column("method"),
    Column("slope", "p", ".3f"),
    Column("ci", "95% CI", ".3f"),
    Column("points", "points fitted"),
)

MONTE_CARLO_COLUMNS = (
    Column("method"),
    Column("lr", "η", "g"),
    Column("paths"),
    Column("max_z", "max|z| cov", ".2f"),
    Column("loss_z", "z E L", ".2f"),
)

DIAGONAL_COLUMNS = (
    Column("method"),
    Column("loss", "final loss", ".2e"),
    Column("l1", "‖β‖₁", ".4f"),
    Column("l1_sd", "sd", ".1e"),
    Column("recovery", "‖β−β*‖", ".4f"),
    Column("alpha_min", "α_eff min", ".3e"),
    Column("alpha_median", "median", ".3e"),
    Column("woodworth", "‖β−β_W(α_eff)‖", ".2e"),
    Column("identity", "identity err", ".1e"),
    Column("flipped", "flips"),
)

WOODWORTH_COLUMNS = (
    Column("lr", "η", "g"),
    Column("sgd_woodworth", "SGD ‖β−β_W‖", ".3e"),
    Column("gd_woodworth", "GD ‖β−β_W‖", ".3e"),
    Column("sgd_l1", "SGD ‖β‖₁", ".4f"),
    Column("gd_l1", "GD ‖β‖₁", ".4f"),
    Column(lambda r: max(r["sgd_loss"], r["gd_loss"]), "final loss", ".1e"),
)

MLP_COLUMNS = (
    Column("method"),
    Column("final_mean", "mean L_T", ".5f"),
    Column("final_se", "se", ".1e"),
    Column("final_sd", "sd", ".1e"),
    Column("q10", "q10", ".5f"),
    Column("q50", "median", ".5f"),
    Column("q90", "q90", ".5f"),
    Column("ks", "KS", ".3f"),
    Column("p_value", "p", ".3f"),
)

#: one colour per method, the same in every panel
COLOURS = {
    "gf": "0.45",
    "gd": "0.45",
    "sgd": "k",
    "sde1": "C0",
    "sde": "C0",
    "sde2": "C3",
    "label-noise": "C2",
}


class SgdVsSdeResult(ExperimentResult):
    """What one sgd-vs-sde run produced.

    `rows` carry a `part`: "moments" (one per η of the ladder), "moments-fit",
    "monte-carlo", "diagonal" (one per method), "woodworth" (one per η of part
    (b)'s ladder) and "mlp" (one per method). `fits`: the fitted exponents,
    ℓ₁ norms, the identity's error and the KS p-values; `curves`: every series of
    the figure (`moments/...`, `diagonal/...`, `mlp/...`).
    """

    FIGURE_COLUMNS = 3
    PANEL_SIZE = (5.0, 4.0)

    def _part(self, part):
        return [row for row in self.rows if row["part"] == part]

    def table(self) -> str:
        s = self.settings
        sections = (
            (
                "moments",
                MOMENT_COLUMNS,
                f"(a) exact moments, linear regression (n = {s['n']}, d = {s['d']}, "
                f"b = {s['batch_size']}, T = {s['horizon']:g}): relative covariance "
                "error and weak error |E L_SGD − E L_X| at T",
            ),
            ("moments-fit", FIT_COLUMNS, "(a) fitted exponents in η"),
            (
                "monte-carlo",
                MONTE_CARLO_COLUMNS,
                "(a) Monte Carlo check: sample against exact covariance (upper "
                "triangle) and E L",
            ),
            (
                "diagonal",
                DIAGONAL_COLUMNS,
                f"(b) diagonal net (n = {s['diag_n']}, d = {s['diag_d']}, α = "
                f"{s['diag_scale']:g}, η = {s['diag_lr']:g}, b = "
                f"{s['diag_batch_size']}); means over {s['diag_keys']} key(s)",
            ),
            (
                "woodworth",
                WOODWORTH_COLUMNS,
                "(b) distance to the Woodworth limit at the run's own α_eff",
            ),
            (
                "mlp",
                MLP_COLUMNS,
                f"(c) tanh MLP on {s['mlp_n']} digits, η = {s['mlp_lr']:g}, b = "
                f"{s['mlp_batch_size']}, T = {s['mlp_steps'] * s['mlp_lr']:g}: final "
                f"loss over {s['mlp_keys']} keys",
            ),
        )
        parts = [
            render_table(self._part(part), columns, title=title)
            for part, columns, title in sections
        ]
        return "\n\n".join(parts + ["\n".join(self.notes())])

    def notes(self):
        slopes = self.fits.get("woodworth_slope", {})
        floor = [
            f"η = {r['lr']:g}: {', '.join(r['below_floor'])}"
            for r in self._part("moments")
            if r.get("below_floor")
        ]
        return [
            *(
                [
                    "within 3× the precision floor (the error the dtype's "
                    "tolerance on the moments can make, amplified by the "
                    "cancellation in S − mmᵀ), not fitted: " + "; ".join(floor)
                ]
                if floor
                else []
            ),
            "cov X: ‖Cov_SGD − Cov_X‖_F/‖Cov_SGD‖_F at T (gradient flow: no "
            "covariance, error 1); E L: |E L(θ_SGD) − E L(X)| at T, both exact.",
            "max|z| cov: largest |Ĉ − C|/se(Ĉ) over the entries; z E L: the same "
            "for the mean loss (|z| < 3 for 99.7% of honest estimates).",
            "identity err: max |ln(u⊙v) − ln α² − Σₖ ln(1 − 4η²gₖ²)| (round-off); "
            "α_eff = √(u⊙v) at the end; β_W(α_eff): the Woodworth limit at that "
            "per-coordinate scale.",
            "Woodworth distance exponent in η: "
            + ", ".join(f"{m} {v:.2f}" for m, v in slopes.items())
            + "; KS, p: two-sample Kolmogorov–Smirnov against SGD's final losses.",
        ]

    # -- figure ------------------------------------------------------------------
    def figure_data(self):
        data = dict(self.curves)
        mc = {k: np.asarray(v) for k, v in self.curves.items() if "/mc/" in k}
        if mc:
            exact = np.concatenate([v for k, v in mc.items() if k.endswith("exact")])
            data["moments/mc/range"] = np.array([exact.min(), exact.max()])
        if "mlp/gf/loss" in data:
            flow = np.asarray(data["mlp/gf/loss"])
            data["mlp/gf/excess"] = np.zeros_like(flow)
            for name in ("sgd", "sde1", "sde2"):
                data[f"mlp/{name}/excess"] = np.asarray(data[f"mlp/{name}/mean"]) - flow
        return data

    def panels(self):
        return (
            *_moment_panels(self.settings, self.fits),
            *_diagonal_panels(self.settings, self.fits),
            *_mlp_panels(self.settings),
        )


def _series(key, x, name, label, style="-", **options):
    return Series(
        key, x, style, label=label, options=dict(color=COLOURS[name], **options)
    )


def _slope(label, fits, name):
    slope = fits.get(name)
    return label if slope is None else f"{label} (p = {slope:.2f})"


def _moment_panels(s, fits):
    x = "moments/lrs"
    loglog = dict(xscale="log", yscale="log", xlabel="learning rate η")
    labels = dict(gf="gradient flow", sde1="SDE order 1", sde2="SDE order 2")
    return (
        Panel(
            f"(a) covariance error at T = {s['horizon']:g}",
            [
                _series(
                    f"moments/cov_error/{n}",
                    x,
                    n,
                    _slope(label, fits.get("cov_slope", {}), n),
                    "o-",
                )
                for n, label in labels.items()
            ],
            ylabel="‖Cov_SGD − Cov_X‖_F / ‖Cov_SGD‖_F",
            **loglog,
        ),
        Panel(
            "(a) weak error in E L(θ_T)",
            [
                _series(
                    f"moments/weak_error/{n}",
                    x,
                    n,
                    _slope(label, fits.get("weak_slope", {}), n),
                    "o-",
                )
                for n, label in labels.items()
            ],
            ylabel="|E L_SGD − E L_X|",
            **loglog,
        ),
        Panel(
            f"(a) Monte Carlo at η = {s['mc_lr']:g}: Cov entries, ±3 se",
            (Series("moments/mc/range", "moments/mc/range", "k:", label="exact"),),
            xlabel="exact covariance entry",
            ylabel="sample covariance entry",
            draw=_draw_monte_carlo,
        ),
    )


def _draw_monte_carlo(ax, data):
    ax.ticklabel_format(style="sci", scilimits=(0, 0))
    for name, label, marker in (("sgd", "SGD", "o"), ("sde1", "SDE order 1", "s")):
        ax.errorbar(
            data[f"moments/mc/{name}/exact"],
            data[f"moments/mc/{name}/estimate"],
            yerr=3 * np.asarray(data[f"moments/mc/{name}/stderr"]),
            fmt=marker,
            ms=4,
            capsize=2,
            color=COLOURS[name],
            label=label,
            alpha=0.8,
        )


def _diagonal_panels(s, fits):
    slopes = fits.get("woodworth_slope", {})
    labels = {
        "gd": "GD",
        "sgd": f"SGD, b = {s['diag_batch_size']}",
        "label-noise": f"label-noise GD, δ = {s['label_noise']:g}",
        "sde": "SDE order 1",
    }
    return (
        Panel(
            f"(b) diagonal net, α = {s['diag_scale']:g}, η = {s['diag_lr']:g}",
            [
                _series(f"diagonal/{n}/losses", f"diagonal/{n}/times", n, label, lw=0.8)
                for n, label in labels.items()
            ],
            xlabel="time t = kη",
            ylabel="training loss",
            yscale="log",
        ),
        Panel(
            "(b) α_eff = √(u_∞⊙v_∞), sorted",
            [
                _series(f"diagonal/{n}/alpha_eff", None, n, label, ".-", ms=3)
                for n, label in labels.items()
            ],
            (Line(s["diag_scale"], options=dict(color="0.6")),),
            xlabel="coordinate (sorted)",
            ylabel="α_eff",
            yscale="log",
        ),
        Panel(
            "(b) β_∞ off the support of β*, sorted",
            [
                _series(f"diagonal/{n}/off_support", None, n, label, ".-", ms=3)
                for n, label in labels.items()
            ],
            xlabel="coordinate (sorted)",
            ylabel="|β_∞,i|, β*_i = 0",
            yscale="log",
        ),
        Panel(
            "(b) distance to the Woodworth limit at α_eff",
            [
                _series(
                    "diagonal/woodworth/sgd",
                    "diagonal/lrs",
                    "sgd",
                    _slope("SGD", slopes, "sgd"),
                    "o",
                ),
                _series("diagonal/woodworth/sgd/fit", "diagonal/lrs", "sgd", "", "--"),
                _series(
                    "diagonal/woodworth/gd",
                    "diagonal/lrs",
                    "gd",
                    _slope("GD", slopes, "gd"),
                    "s",
                ),
                _series("diagonal/woodworth/gd/fit", "diagonal/lrs", "gd", "", "--"),
            ],
            xlabel="learning rate η",
            ylabel="‖β_∞ − β_W(α_eff)‖",
            xscale="log",
            yscale="log",
        ),
    )


def _mlp_panels(s):
    labels = dict(sgd="SGD", sde1="SDE order 1", sde2="SDE order 2")
    return (
        Panel(
            f"(c) tanh MLP on digits, η = {s['mlp_lr']:g}, b = {s['mlp_batch_size']}: "
            "loss above gradient flow's",
            [
                *(
                    _series(f"mlp/{n}/excess", "mlp/t", n, label)
                    for n, label in labels.items()
                ),
                _series("mlp/gf/excess", "mlp/t", "gf", "gradient flow", "--"),
            ],
            xlabel="time t = kη",
            ylabel="L − L_GF (mean ± sd over keys)",
            draw=_draw_bands,
        ),
        Panel(
            "(c) final loss: empirical CDF",
            (),
            xlabel="L(θ_T)",
            ylabel="fraction of keys",
            draw=_draw_cdfs,
        ),
    )


def _draw_bands(ax, data):
    t = np.asarray(data["mlp/t"])
    for name in ("sgd", "sde1", "sde2"):
        mean = np.asarray(data[f"mlp/{name}/excess"])
        sd = np.asarray(data[f"mlp/{name}/sd"])
        ax.fill_between(t, mean - sd, mean + sd, color=COLOURS[name], alpha=0.15, lw=0)


def _draw_cdfs(ax, data):
    labels = dict(sgd="SGD", sde1="SDE order 1", sde2="SDE order 2")
    for name, label in labels.items():
        final = np.sort(np.asarray(data[f"mlp/{name}/final"]))
        fraction = np.arange(1, final.size + 1) / final.size
        ax.step(final, fraction, where="post", color=COLOURS[name], label=label)
    ax.legend(fontsize=8)
