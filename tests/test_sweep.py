import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowgap
from flowgap.models import DiagonalNet
from flowgap.problems import sparse_recovery
from flowgap.sweeps import load_sweep, sweep

TRACES = []


def run(scale, lr, seed):
    TRACES.append(1)
    problem = sparse_recovery(jax.random.key(seed), n=10, d=20, sparsity=2)
    traj = flowgap.gradient_descent(
        problem.loss, DiagonalNet(20, scale=scale), lr=lr, steps=200, save_every=50
    )
    return dict(
        loss=traj.final_loss,
        error=jnp.linalg.norm(traj.final.end_to_end() - problem.truth),
        status=traj.result._value,
        curve=traj.loss,
    )


GRID = {"scale": [0.01, 0.1, 1.0], "lr": [0.01, 0.05, 2.0], "seed": [0, 1]}


def test_labelled_and_equal_to_solo_runs():
    result = sweep(run, GRID, progress=False)
    assert result.shape == (3, 3, 2)
    assert result.values["curve"].shape == (3, 3, 2, 5)
    for i, scale in enumerate(GRID["scale"]):
        for j, lr in enumerate(GRID["lr"]):
            solo = run(scale, lr, 1)
            assert np.isclose(result.values["loss"][i, j, 1], solo["loss"], rtol=1e-12)
    # the diverging learning rate is flagged per run and poisons nothing else
    diverged = flowgap.RESULTS.diverged._value
    assert np.all(result.values["status"][:, 2] == diverged)
    assert np.all(result.values["status"][:, :2] == 0)
    assert np.all(np.isfinite(result.values["error"][:, :2]))


def test_chunks_compile_once_and_agree():
    TRACES.clear()
    fresh = lambda **point: run(**point)  # noqa: E731 (not compiled by other tests)
    whole = sweep(fresh, GRID, progress=False)
    chunked = sweep(fresh, GRID, chunk_size=4, progress=False)
    assert len(TRACES) == 2  # one trace per compiled chunk size, not per chunk
    again = sweep(
        fresh,
        {"scale": [0.5], "lr": [0.02], "seed": [3, 4, 5, 6]},
        chunk_size=4,
        progress=False,
    )
    assert len(TRACES) == 2  # a new grid, same chunk size: the same program
    assert again.shape == (1, 1, 4)
    for key in whole.values:
        # different batch sizes may reassociate the batched matvec: round-off only
        assert np.allclose(whole.values[key], chunked.values[key], rtol=1e-12)
    small = sweep(run, GRID, max_memory=50_000, progress=False)
    assert np.allclose(small.values["loss"], whole.values["loss"], rtol=1e-12)


def test_checkpoint_resume_is_bitwise(tmp_path):
    full = sweep(run, GRID, chunk_size=4, checkpoint=tmp_path / "a", progress=False)
    files = sorted((tmp_path / "a").glob("chunk-*.npz"))
    assert len(files) == 5
    stamps = {f.name: os.stat(f).st_mtime_ns for f in files}
    files[1].unlink()
    files[3].unlink()
    resumed = sweep(run, GRID, chunk_size=4, checkpoint=tmp_path / "a", progress=False)
    for f in sorted((tmp_path / "a").glob("chunk-*.npz")):
        if f.name not in (files[1].name, files[3].name):
            assert os.stat(f).st_mtime_ns == stamps[f.name]  # loaded, not recomputed
    for key in full.values:
        assert full.values[key].tobytes() == resumed.values[key].tobytes()


def test_save_and_load_without_pickle(tmp_path):
    result = sweep(run, GRID, progress=False)
    loaded = load_sweep(result.save(tmp_path / "sweep.npz"))
    assert list(loaded.axes) == ["scale", "lr", "seed"]
    assert np.array_equal(loaded.values["loss"], result.values["loss"])


@pytest.mark.parametrize(
    "grid, name",
    [
        ({"scale": []}, "scale"),
        ({}, "grid"),
        ({"scale": [[1.0, 2.0]]}, "scale"),
        ({"not valid": [1.0]}, "grid"),
    ],
)
def test_bad_grids(grid, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        sweep(lambda **k: 0.0, grid, progress=False)


def test_bad_chunk_size():
    with pytest.raises(ValueError, match="`chunk_size`"):
        sweep(run, GRID, chunk_size=0, progress=False)
