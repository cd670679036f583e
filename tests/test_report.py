"""The experiment framework: typed configs, tables from column specs, figures
from panel specs, results as labelled datasets, and the shared run path."""

import pickle

import numpy as np
import pytest
import xarray as xr

from flowgap.experiments import (
    Column,
    Config,
    ExperimentResult,
    Line,
    Panel,
    Series,
    Setting,
    SettingError,
    render_table,
    run,
)
from flowgap.experiments._output import OutputError, write_netcdf
from flowgap.experiments._settings import resolve

SPECS = (
    Setting("lr", 0.1, "a learning rate", positive=True),
    Setting("lrs", (0.1, 0.05), "learning rates", "floats", positive=True),
    Setting("steps", 10, "steps", "int", minimum=1),
)

ROWS = [
    dict(model="diagonal", slope=1.01234, ci=(0.95, 1.07), steps=12, ok=True),
    dict(model="mlp", slope=None, ci=None, steps=7, ok=False),
]


class _Result(ExperimentResult):
    def columns(self):
        return [
            Column("model"),
            Column("slope", fmt=".3f"),
            Column("ci", "95% CI", ".2f"),
            Column("steps"),
        ]

    def notes(self):
        return ["expected slope 1"]

    def panels(self):
        return [
            Panel(
                "gap against lr",
                [Series("gaps", "lrs", "o", "GD"), Series("fit", "lrs", "-")],
                [Line(1e-3, label="floor")],
                xscale="log",
                yscale="log",
            ),
            Panel("loss", [Series("loss", skip=1)]),
        ]

    def figure_data(self):
        lrs = self.curves["lrs"]
        return {**self.curves, "fit": 2.0 * lrs}


def _result():
    curves = dict(
        lrs=np.array([0.1, 0.05, 0.025]),
        gaps=np.array([0.2, 0.1, 0.05]),
        loss=np.array([1.0, 0.5, 0.25, 0.125]),
        grid=np.arange(6.0).reshape(2, 3),
    )
    config = resolve(SPECS, {"lr": "0.2"})
    return _Result(settings=config, rows=ROWS, fits={"slope": 1.0}, curves=curves)


def test_config_is_typed_immutable_hashable_and_checked():
    config = resolve(SPECS, {"lr": "0.2", "lrs": "0.3,0.1"})
    assert isinstance(config, Config)
    assert config.lr == config["lr"] == 0.2 and config.lrs == (0.3, 0.1)
    assert isinstance(config.steps, int)
    with pytest.raises(AttributeError, match="immutable"):
        config.lr = 1.0
    assert hash(config) == hash(resolve(SPECS, {"lr": 0.2, "lrs": (0.3, 0.1)}))
    assert pickle.loads(pickle.dumps(config)) == config
    assert config.replace(steps=3).steps == 3 and config.steps == 10
    with pytest.raises(SettingError, match="`lr` must be > 0"):
        config.replace(lr=-1.0)
    with pytest.raises(AttributeError, match="no setting `nope`"):
        config.nope


def test_table_aligns_columns_and_formats_pairs_and_missing_values():
    lines = render_table(ROWS, _Result.columns(None), notes=["n"]).splitlines()
    head, rule, first, second, blank, note = lines
    assert head.split() == ["model", "slope", "95%", "CI", "steps"]
    assert set(rule) == {"-"} and len(rule) == len(head)
    assert first.split() == ["diagonal", "1.012", "[0.95,", "1.07]", "12"]
    assert second.split() == ["mlp", "—", "—", "7"]
    # text left-aligned, numbers right-aligned: columns end at the same place
    assert first.index("1.012") + 5 == second.index("—") + 1 == head.index("slope") + 5
    assert len(first) == len(second) == len(head)
    assert (blank, note) == ("", "n")


def test_figure_has_one_axes_per_panel_with_the_specified_series():
    figure = _result().figure()
    gap, loss = figure.axes
    assert gap.get_title() == "gap against lr" and gap.get_xscale() == "log"
    lines = gap.get_lines()
    assert np.allclose(lines[0].get_ydata(), [0.2, 0.1, 0.05])
    assert np.allclose(lines[1].get_ydata(), [0.2, 0.1, 0.05])  # 2·lr, derived
    assert [t.get_text() for t in gap.get_legend().get_texts()] == ["GD", "floor"]
    assert np.allclose(loss.get_lines()[0].get_xdata(), [1, 2, 3])  # skip=1


def test_a_panel_naming_a_missing_series_says_which():
    result = _result()
    result.curves.pop("gaps")
    with pytest.raises(KeyError, match="`gaps`"):
        result.figure()


def test_dataset_labels_rows_and_curves_and_round_trips_through_netcdf(tmp_path):
    dataset = _result().dataset()
    assert dataset["row:model"].values.tolist() == ["diagonal", "mlp"]
    assert np.isnan(dataset["row:slope"].values[1])
    assert dataset["row:ci"].dims == ("row", "bound")
    assert dataset["row:steps"].dtype == np.int64
    assert dataset["row:ok"].dtype == bool
    assert dataset["grid"].dims == ("grid:0", "grid:1")
    write_netcdf(tmp_path / "r.nc", dataset)
    back = xr.load_dataset(tmp_path / "r.nc")
    for name in dataset.variables:
        np.testing.assert_array_equal(back[name].values, dataset[name].values)
    assert back.attrs["settings"] == dataset.attrs["settings"]


def test_a_bad_out_fails_before_any_computing(tmp_path, monkeypatch):
    """`--out` under a file is refused by the shared first steps, before the
    experiment's run is called (which would take minutes)."""
    from flowgap.experiments import _registry

    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    experiment = _registry.get("gap")

    def never(*args, **kwargs):
        raise AssertionError("the run started before the output was checked")

    monkeypatch.setitem(
        _registry.EXPERIMENTS,
        "gap",
        experiment.__class__(**{**experiment.__dict__, "run": never}),
    )
    with pytest.raises(OutputError, match="cannot be created"):
        run("gap", out=blocker / "sub", progress=False)
