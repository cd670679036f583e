"""wn-hessian: the weight-normalised predictor Hessian against width and min‖v‖."""

import functools
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from flowgap import analysis, dynamics, experiments, models, problems
from flowgap.analysis import predictor_hessian_norm
from flowgap.experiments import SettingError
from flowgap.experiments._wn_hessian import (
    FirstOutput,
    block_masks,
    gain_floor,
    matched_pair,
    rescale_directions,
)
from flowgap.experiments._wn_hessian_group import Group, measure_group
from flowgap.experiments._wn_hessian_measure import (
    BLOCKS,
    min_direction_norm,
    net_keys,
)
from flowgap.experiments._wn_hessian_padding import layout, template, unflatten

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


def flat_params(tree):
    return ravel_pytree(eqx.filter(tree, eqx.is_inexact_array))[0]


def test_matched_pair_wraps_the_mlp_draw(key):
    """The WN net is `MLP(..., weight_norm=True)` with the same key, directions
    rescaled to ‖vᵢ‖ = v_scale·√fan_in: wrapping the plain net's layers draws
    the same arrays."""
    wn, plain = matched_pair(ARCH, 5, 2, 3, 2, key)
    reference = models.MLP(3, 5, 2, depth=2, weight_norm=True, key=key)
    for ours, layer, theirs in zip(wn.layers, plain.layers, reference.layers):
        assert np.array_equal(layer.weight, theirs.layer.weight)
        assert np.array_equal(layer.bias, theirs.layer.bias)
        assert np.array_equal(ours.gain, theirs.gain)
        assert np.array_equal(ours.layer.bias, theirs.layer.bias)
        v = theirs.v / np.linalg.norm(theirs.v, axis=1, keepdims=True)
        assert np.allclose(ours.v, np.sqrt(theirs.v.shape[1]) * v, rtol=1e-15)


@pytest.mark.parametrize("weight_norm", [False, True])
def test_padding_keeps_function_gradient_and_hessian(key, weight_norm):
    """A net padded by `layout` (hidden width 4 → 7) computes the same function;
    its padded parameters get exactly zero gradients (GD leaves them in place);
    and its Hessian on the real parameters is the real net's: masked Lanczos
    from the embedded start vector, run until its Krylov space is all the real
    parameters, gives the real net's norm."""
    d, k, depth, width, size = 3, 2, 2, 4, 7
    net = matched_pair(ARCH, width, depth, d, k, key)[0 if weight_norm else 1]
    lay = layout("tanh", depth, width, size, d, k, weight_norm)
    shape = template("tanh", depth, size, d, k, weight_norm)
    rebuild = unflatten(jax.tree.map(lambda t: jnp.zeros(t.shape, t.dtype), shape))
    theta = jnp.zeros(lay.fill.size).at[lay.index].set(flat_params(net)) + lay.fill
    padded = rebuild(theta)
    x = jnp.array([0.3, -1.0, 0.5])
    assert np.allclose(padded(x), net(x), rtol=1e-14, atol=1e-15)
    if weight_norm:
        assert min_direction_norm(padded, width) == min_direction_norm(net)
    grad = jax.grad(lambda t: jnp.sum(jnp.sin(rebuild(t)(x))))(theta)
    outside = np.ones(theta.size, bool)
    outside[lay.index] = False
    assert np.all(np.asarray(grad)[outside] == 0)
    real = flat_params(net).size
    start = jax.random.normal(key, (real,))
    embedded = jnp.zeros(theta.size).at[lay.index].set(start)
    mask = FirstOutput(rebuild(jnp.asarray(lay.ones)))
    ours = predictor_hessian_norm(
        FirstOutput(padded), x, mask=mask, init=embedded, iters=real
    )
    theirs = predictor_hessian_norm(FirstOutput(net), x, init=start, iters=real)
    assert np.isclose(ours, theirs, rtol=1e-12)
    if weight_norm:  # the blocks: the v-block's entries are the directions'
        assert lay.blocks.shape == (len(BLOCKS), theta.size)
        v_block = lay.blocks[list(BLOCKS).index("wn_v")]
        assert v_block.sum() == d * width + width * width + width * k
        assert np.all(v_block <= lay.ones)


def test_one_program_matches_analysis_per_width(key):
    """`measure_group` (widths 3 and 5 padded to 5 in one program, the min‖v‖
    study and GD at width 3) gives what `flowgap.analysis` and
    `flowgap.dynamics` give on each real network: the padding and the batched
    Lanczos change round-off only."""
    depth, draws, iters, steps, every = 2, 1, 6, 4, 2
    data = jax.random.normal(key, (6, 3))
    problem = problems.RegressionProblem(data, jnp.tanh(data[:, :2]))
    xs, factors = data[:2], jnp.array([0.5, 2.0])
    arch = tuple(ARCH.items())
    group = Group(arch, depth, 5, (3, 5), draws, 3, (3,), steps, every)
    out = measure_group(group, key, problem, xs, factors, 0.1, iters)

    def close(a, b):
        assert np.allclose(a, b, rtol=1e-10, atol=1e-14), (a, b)

    # one program of the per-network analysis calls (compiled as the job's are)
    options = {
        "xla_backend_optimization_level": 0,
        "xla_cpu_use_fusion_emitters": False,
    }

    @functools.partial(jax.jit, compiler_options=options)
    def reference(key):
        def norms(net, mask=None):  # mean over xs of ‖∇²f(x)‖ on the masked block
            return jnp.mean(
                jax.vmap(
                    lambda x: predictor_hessian_norm(
                        FirstOutput(net), x, iters=iters, key=key, mask=mask
                    )
                )(xs)
            )

        wn, plain = matched_pair(ARCH, 3, depth, 3, 2, net_keys(key, depth, 3, 1)[0])
        masks = block_masks(FirstOutput(wn), tuple(BLOCKS))
        floor = jnp.mean(jax.vmap(lambda x: gain_floor(wn, x))(xs))
        ref = dict(plain=norms(plain), floor=floor, min_v=min_direction_norm(wn))
        blocks = jax.vmap(lambda m: norms(wn, m))(masks)
        ref |= {name: blocks[b] for b, name in enumerate(BLOCKS)}
        for name, net in (("sharpness_plain", plain), ("sharpness_wn", wn)):
            ref[name] = analysis.sharpness(problem.loss, net, iters=iters, key=key)
        rescaled = jax.vmap(lambda c: rescale_directions(wn, c))(factors)
        probe = jax.vmap(
            lambda c: jax.vmap(lambda m: norms(rescale_directions(wn, c), m))(masks)
        )(factors)
        probe = {name: probe[:, b] for b, name in enumerate(BLOCKS)}
        probe["min_v"] = min_direction_norm(rescaled)
        gd = {}
        for name, net in (("WN", wn), ("plain", plain)):
            traj = dynamics.gradient_descent(
                problem.loss, net, lr=0.1, steps=steps, save_every=every
            )
            gd[name] = dict(
                loss=traj.loss,
                sharpness=analysis.track_sharpness(
                    problem.loss, traj, iters=iters, key=key
                ),
                hessian=jax.vmap(
                    lambda m: predictor_hessian_norm(
                        FirstOutput(m), xs[0], iters=iters, key=key
                    )
                )(traj.models),
            )
            if name == "WN":
                gd[name]["min_v"] = min_direction_norm(traj.models)
        return ref, probe, gd

    ref, probe, gd = reference(key)
    # width 3 is padded to 5 (width 5 is the program's own size)
    for name in ("plain", "wn", "wn_v", "wn_inner", "floor", "min_v"):
        close(out["width"][name][0, 0], ref[name])
    for name in ("sharpness_plain", "sharpness_wn"):
        close(out["width"][name][0, 0], ref[name])
    for name, values in probe.items():
        close(out["probe"][name], values)
    for name, run in gd.items():
        for q, values in run.items():
            close(out["gd"][name][q][0], values)
