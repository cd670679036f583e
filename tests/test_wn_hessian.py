"""wn-hessian: the weight-normalised predictor Hessian against width and min‖v‖."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from flowgap import experiments
from flowgap.analysis import predictor_hessian_norm
from flowgap.experiments import SettingError
from flowgap.experiments._wn_hessian import (
    FirstOutput,
    block_masks,
    gain_floor,
    matched_pair,
    rescale_directions,
)

ARCH = dict(activation="tanh", scale=1.0, v_scale=1.0)


@pytest.fixture(scope="module")
def quick():
    jax.config.update("jax_enable_x64", True)
    result, _ = experiments.run("wn-hessian", quick=True, save=False, progress=False)
    return result


def _rows(result, study):
    return [r for r in result.rows if r["study"] == study]


def _check_width_exponents(result):
    for fits in result.fits["width"].values():
        for block in ("wn_v", "wn_inner"):  # v-block; all parameters but g_out
            assert fits[block]["slope"] < 0 and fits[block]["ci"][1] < 0, fits[block]
        # the same networks without weight normalisation: the norm grows with m
        assert fits["plain"]["ci"][0] > 0, fits["plain"]
        # the WN loss sharpness grows more slowly than the plain one
        assert fits["sharpness_wn"]["slope"] < fits["sharpness_plain"]["slope"]


def test_quick_runs_on_digits(quick):
    assert quick.settings["data"] == "digits"
    widths = quick.curves["widths"]
    assert len(widths) >= 3  # an exponent with an interval needs 3 points or more
    _check_width_exponents(quick)


@pytest.mark.slow
def test_plain_sharpness_grows_on_the_synthetic_set():
    """On the synthetic set (unit-variance inputs) the plain loss sharpness grows
    over the quick widths 16–128. On digits (pixels/16, per-pixel variance ≈ 0.1)
    the hidden features are an order of magnitude smaller, so the width-growing
    term of λ_max only overtakes the O(1) first-layer term past m ≈ 256: the quick
    digits run is flat there, and this claim is tested where it holds."""
    jax.config.update("jax_enable_x64", True)
    overrides = dict(data="synthetic", steps=0, v_factors=(1.0,))
    result, _ = experiments.run(
        "wn-hessian", quick=True, overrides=overrides, save=False, progress=False
    )
    _check_width_exponents(result)
    for fits in result.fits["width"].values():
        assert fits["sharpness_plain"]["ci"][0] > 0, fits["sharpness_plain"]


def test_pairs_compute_the_same_function(quick):
    # gᵢvᵢ/‖vᵢ‖ with gᵢ = ‖wᵢ‖ and vᵢ ∥ wᵢ rebuilds wᵢ to a few ulps; outputs are
    # O(1), so any difference above 1e-13 would be a mismatch, not rounding.
    assert all(r["function_gap"] < 1e-13 for r in _rows(quick, "width"))


def test_rescaling_v_is_exact(quick):
    """f(g, c·v, b) = f(g, v, b), so ∇²_v f scales by exactly 1/c² and the
    (g, b)-block not at all. Lanczos from the same start on A/c² builds the same
    Krylov basis and the tridiagonal T/c², so the Ritz values scale exactly
    whether or not they have converged; only rounding in the Hessian-vector
    products remains (a few ulps per product over 12 steps, ≲ 1e-14; observed
    ≤ 5e-16), hence rtol 1e-12."""
    rows = {r["factor"]: r for r in _rows(quick, "min-v")}
    one = rows[1.0]
    for c, r in rows.items():
        assert r["function_change"] < 1e-13  # v̂ = cv/‖cv‖ equals v/‖v‖ to ulps
        assert np.isclose(c**2 * r["wn_v"], one["wn_v"], rtol=1e-12, atol=0)
        assert np.isclose(r["wn_gb"], one["wn_gb"], rtol=1e-12, atol=0)
        assert np.isclose(r["min_v"], c * one["min_v"], rtol=1e-14)


def test_block_mask_matches_dense_block(key):
    """The masked Lanczos norm equals the dense v-block's spectral norm: with
    iters = block size the Krylov space is the whole block, so it is exact."""
    wn, _ = matched_pair(ARCH, 4, 2, 3, 1, key)
    predictor = FirstOutput(wn)
    x = jnp.array([0.3, -1.0, 0.5])
    params, static = eqx.partition(predictor, eqx.is_inexact_array)
    theta, unravel = ravel_pytree(params)
    dense = jax.jit(jax.hessian(lambda t: eqx.combine(unravel(t), static)(x)[0]))(theta)
    masks = block_masks(predictor, ("wn", "wn_v"))
    # iters = D spans the whole block (a smaller block breaks down early: exact too)
    norm = eqx.filter_jit(
        lambda mask: predictor_hessian_norm(predictor, x, mask=mask, iters=theta.size)
    )
    sizes = {}
    for i, name in enumerate(("wn", "wn_v")):
        mask = jax.tree.map(lambda m: m[i], masks)
        on = np.asarray(ravel_pytree(eqx.filter(mask, eqx.is_inexact_array))[0]) == 1
        sizes[name] = int(on.sum())
        exact = np.max(np.abs(np.linalg.eigvalsh(dense[np.ix_(on, on)])))
        assert np.isclose(norm(mask), exact, rtol=1e-8), name  # as in test_curvature
    assert sizes == {"wn": theta.size, "wn_v": 3 * 4 + 4 * 4 + 4 * 1}  # every vᵢ
    # f is linear in g_out with ∂²f/∂g_out² = 0: its Hessian row ∇_θ′f/g_out alone
    # forces ‖∇²f‖ ≥ ‖∇_θ′f‖/|g_out| (exact; 1e-12 allows the eigvalsh rounding)
    full = np.max(np.abs(np.linalg.eigvalsh(dense)))
    assert full >= gain_floor(wn, x) * (1 - 1e-12)
    with pytest.raises(ValueError, match="`mask`"):
        predictor_hessian_norm(predictor, x, mask=jnp.ones(3))


def test_rescale_directions_keeps_the_function(key):
    wn, _ = matched_pair(ARCH, 8, 3, 3, 1, key)
    x = jnp.array([0.3, -1.0, 0.5])
    rescaled = jax.jit(jax.vmap(lambda c: rescale_directions(wn, c)(x)[0]))
    # v̂ = cv/‖cv‖ equals v/‖v‖ to a few ulps, so f agrees to rounding
    assert np.allclose(rescaled(jnp.array([1e-3, 7.0, 1e3])), wn(x)[0], rtol=1e-14)


def test_gd_never_shrinks_v(quick):
    """‖vᵢ‖² ← ‖vᵢ‖² + η²‖∇_{vᵢ}L‖² per step (∇_v L ⊥ v): min‖v‖ never decreases
    along GD (a 4-ulp allowance for rounding of the norms)."""
    min_v = quick.curves[f"gd/{quick.settings['gd_widths'][0]}/WN/min_v"]
    assert np.all(np.diff(min_v) >= -4 * np.finfo(float).eps * min_v[:-1])
    for r in _rows(quick, "gd"):
        assert r["status"] == "ok" and np.isfinite(r["max_sharpness"])


def _write(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_bad_data_names_the_setting(tmp_path):
    good = np.ones((5, 3))
    cases = {
        "missing": str(tmp_path / "absent.npz"),
        "no targets": _write(tmp_path / "a.npz", inputs=good),
        "1-D inputs": _write(tmp_path / "b.npz", inputs=np.ones(5), targets=good),
        "rows differ": _write(tmp_path / "c.npz", inputs=good, targets=np.ones(4)),
        "not finite": _write(
            tmp_path / "d.npz", inputs=np.full((5, 3), np.nan), targets=np.ones(5)
        ),
    }
    text = tmp_path / "e.npz"
    text.write_text("not an archive")
    cases["not npz"] = str(text)
    cases["unknown name"] = "mnist"
    cases["old empty default"] = ""
    for path in cases.values():
        with pytest.raises(SettingError, match="`data`"):
            experiments.run(
                "wn-hessian",
                quick=True,
                overrides={"data": path},
                save=False,
                progress=False,
            )


def test_too_many_digits_names_the_setting():
    with pytest.raises(SettingError, match="`n`"):
        experiments.run(
            "wn-hessian",
            quick=True,
            overrides={"n": 5000},
            save=False,
            progress=False,
        )


def test_real_file_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(12, 3))
    targets = np.stack([np.sin(inputs[:, 0]), inputs[:, 1] * inputs[:, 2]], axis=1)
    path = _write(tmp_path / "tiny.npz", inputs=inputs, targets=targets)
    overrides = dict(
        data=path, widths=(8,), v_factors=(1.0, 2.0), probe_width=8, steps=0
    )
    result, folder = experiments.run(
        "wn-hessian",
        quick=True,
        overrides=overrides,
        out=tmp_path / "run",
        progress=False,
    )
    assert {p.name for p in folder.iterdir()} >= {
        "settings.json",
        "results.json",
        "arrays.npz",
        "figure.png",
    }
    assert (
        json.loads((folder / "settings.json").read_text())["settings"]["data"] == path
    )
    with np.load(folder / "arrays.npz", allow_pickle=False) as arrays:
        assert arrays["widths"].tolist() == [8]
    (row,) = _rows(result, "width")  # one width: a single compile keeps this quick
    # a principal block is never larger than the whole (Cauchy interlacing)
    assert row["function_gap"] < 1e-13 and 0 < row["wn_v"] < row["wn"]
    probe = {r["factor"]: r for r in _rows(result, "min-v")}
    assert np.isclose(4 * probe[2.0]["wn_v"], probe[1.0]["wn_v"], rtol=1e-12)
    assert not _rows(result, "gd")  # steps=0 skips GD
