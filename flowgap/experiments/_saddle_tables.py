"""The fit tables of saddle-to-saddle: the finite-step slowdown per plateau, the
alignment fit on every plateau, the tanh net's escape times and the layer-wise
net's rank-k approach on every plateau."""

from ._table import Column, render_table

_SLOWDOWN_COLUMNS = (
    Column("stage"),
    Column("sigma", "σ_k", ".3f"),
    Column("gf_slope", "GF slope", ".3f"),
    Column("inverse_sigma", "1/σ_k", ".3f"),
    Column("gd_slope", "GD slope", ".3f"),
    Column("measured_ratio", "GD/GF", ".4f"),
    Column("predicted_ratio", "ησ/ln(1+ησ)", ".4f"),
    Column("tolerance", "±", ".4f"),
)

_ALIGNMENT_COLUMNS = (
    Column("plateau"),
    Column("alpha_slope", "p (α)", ".3f"),
    Column("alpha_ci", "95% interval", ".3f"),
    Column("lr_slope", "q (η)", ".3f"),
    Column("lr_ci", "95% interval", ".3f"),
    Column("smallest", "smallest ρ", ".2e"),
    Column("largest", "largest ρ", ".2e"),
    Column("points"),
)

_ESCAPE_COLUMNS = (
    Column("stage"),
    Column("clock"),
    Column("start", "start (small α)", ".2f"),
    Column("slope", "measured slope", ".3f"),
    Column("predicted", "linear prediction", ".3f"),
    Column("tolerance", "±", ".4f"),
)


_LAYERWISE_FIT_COLUMNS = (
    Column("plateau"),
    Column("ratio_slope", "p (ρ)", ".3f"),
    Column("ratio_ci", "95% interval", ".3f"),
    Column("ratio_largest", "largest ρ", ".2e"),
    Column("increment_slope", "p (ρΔ)", ".3f"),
    Column("increment_ci", "95% interval", ".3f"),
    Column("increment_largest", "largest ρΔ", ".2e"),
    Column("points"),
)


def fit_tables(fits, notes) -> list[str]:
    """The slowdown table (with `notes`), then the alignment, tanh and layer-wise
    tables when the fits hold them (results saved before they existed lack
    them)."""
    tables = [
        render_table(
            fits["slowdown"],
            _SLOWDOWN_COLUMNS,
            title="finite-step slowdown per plateau (linear net): escape time per "
            "unit of δ = −ln α",
            notes=notes,
        )
    ]
    if "alignment" in fits:
        tables.append(
            render_table(
                fits["alignment"]["rows"],
                _ALIGNMENT_COLUMNS,
                title="alignment on every plateau: ρ = min over the plateau of "
                "the median ‖(I−P)w̃ᵢ‖/‖Pw̃ᵢ‖, fitted as log ρ = p log α + "
                "q log η + c",
            )
        )
    if "tanh_escapes" in fits:
        tables.append(
            render_table(
                fits["tanh_escapes"],
                _ESCAPE_COLUMNS,
                title="tanh net: escape time per unit of δ = −ln α against the "
                "linear net's prediction (1/σ_k on GF, η/ln(1+ησ_k) on GD)",
            )
        )
    if "layerwise" in fits:
        tables += layerwise_tables(fits["layerwise"])
    return tables


def layerwise_tables(fits) -> list[str]:
    """ρ and ρΔ per plateau and layer at every α (beside σ_{k+1}/σ_k of the
    layer at init), with the stages as a note; then their fits against α."""
    scales = sorted({r["scale"] for r in fits["rows"]}, reverse=True)
    cells = {}
    for r in fits["rows"]:
        row = cells.setdefault(
            (r["plateau"], r["layer"]),
            dict(plateau=r["plateau"], layer=f"W{r['layer']}", initial=r["initial"]),
        )
        row[f"ratio/{r['scale']}"] = r["ratio"]
        row[f"increment/{r['scale']}"] = r["increment"]
    columns = (
        Column("plateau"),
        Column("layer"),
        Column("initial", "σ_{k+1}/σ_k at init", ".2f"),
        *(Column(f"ratio/{a}", f"ρ (α={a:g})", ".2e") for a in scales),
        *(Column(f"increment/{a}", f"ρΔ (α={a:g})", ".2e") for a in scales),
    )
    ranks = "; ".join(
        f"α = {a:g}: "
        + ", ".join(str(x["rank_after"]) for x in fits["stages"] if x["scale"] == a)
        for a in scales
    )
    return [
        render_table(
            [cells[k] for k in sorted(cells)],
            columns,
            title="layer-wise GD, 3-layer linear net: on plateau k each layer W_j is "
            "rank k up to ρ = σ_{k+1}(W_j)/σ_k(W_j) at the plateau's closest "
            "approach t_k*, and stage k adds a rank-one piece up to ρΔ = σ₂/σ₁ "
            "of W_j(t_k*) − W_j(t_{k−1}*) (t_0* = 0)",
            notes=[f"rank of W₃W₂W₁ after each layer-wise stage: {ranks}"],
        ),
        render_table(
            fits["fits"],
            _LAYERWISE_FIT_COLUMNS,
            title="layer-wise GD: log ρ = p log α + c_j (an intercept per layer), "
            "likewise ρΔ, per plateau",
        ),
    ]
