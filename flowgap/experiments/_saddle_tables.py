"""The fit tables of saddle-to-saddle: the finite-step slowdown per plateau, the
alignment fit on every plateau and the tanh net's escape times."""

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


def fit_tables(fits, notes) -> list[str]:
    """The slowdown table (with `notes`), then the alignment and tanh tables when
    the fits hold them (results saved before they existed lack them)."""
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
    return tables
