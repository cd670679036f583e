import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowgap
from flowgap.models import DiagonalNet
from flowgap.problems import sparse_recovery
from flowgap.sweeps import SweepInterrupted, default_batch_size, load_sweep, sweep
from flowgap.sweeps import _sweep as sweep_module
from flowgap.sweeps._batching import groups

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
        status=flowgap.dynamics.status_code(traj.result),
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
    # 18 runs in 5 groups of 4 (2 padded): traced once, no separate remainder
    uneven = sweep(fresh, GRID, batch_size=4, progress=False)
    assert len(TRACES) == 3
    for key in whole.values:
        # vmapped groups of other sizes may reassociate the batched matvec
        assert np.allclose(whole.values[key], chunked.values[key], rtol=1e-12)
        assert np.allclose(whole.values[key], uneven.values[key], rtol=1e-12)
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


def _bitwise(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert np.asarray(a[key]).tobytes() == np.asarray(b[key]).tobytes(), key


def test_batch_size_modes_agree():
    # (a batch_size >= the runs is one group: the lock-step program itself)
    lockstep = sweep(run, GRID, batch_size="all", progress=False).values
    # 3 groups of 6 under lax.map run each group as chunks of 6 under vmap do
    grouped = sweep(run, GRID, batch_size=6, progress=False).values
    chunked = sweep(run, GRID, batch_size="all", chunk_size=6, progress=False)
    _bitwise(grouped, chunked.values)
    # groups of 6 vs one vmap of 18: the batched matvecs may be reassociated for
    # another batch size, so round-off only (measured: equal bits on our CPU)
    for key in grouped:
        assert np.allclose(grouped[key], lockstep[key], rtol=1e-12, atol=0)
    # groups of one run the solo program, in a loop
    singles = sweep(run, GRID, batch_size=1, progress=False)
    solo = jax.jit(run)
    for index in np.ndindex(singles.shape):
        point = {k: v[i] for (k, v), i in zip(singles.axes.items(), index)}
        alone = solo(**point)
        _bitwise({k: v[index] for k, v in singles.values.items()}, alone)


def test_adaptive_flows_agree_across_batching():
    problem = sparse_recovery(jax.random.key(0), n=10, d=20, sparsity=2)

    def flow(scale):
        traj = flowgap.gradient_flow(problem.loss, DiagonalNet(20, scale=scale), t1=10)
        return dict(
            loss=traj.final_loss,
            beta=traj.final.end_to_end(),
            steps=traj.stats["num_steps"],
            status=flowgap.dynamics.status_code(traj.result),
        )

    grid = {"scale": np.geomspace(1e-3, 1.0, 6)}
    lockstep = sweep(flow, grid, batch_size="all", progress=False).values
    pairs = sweep(flow, grid, batch_size=2, progress=False).values
    singles = sweep(flow, grid, batch_size=1, progress=False).values
    solo = jax.jit(flow)
    alone = jax.tree.map(lambda *x: np.stack(x), *[solo(s) for s in grid["scale"]])
    _bitwise(singles, alone)  # the solo program, in a loop
    assert len(set(lockstep["steps"].tolist())) > 1  # the runs' step counts differ
    for other in (pairs, alone):
        # each run's controller accepts and rejects the same steps in any batching
        assert np.array_equal(other["steps"], lockstep["steps"])
        assert np.array_equal(other["status"], lockstep["status"])
        # batched and unbatched mat-vecs round differently, and the step
        # sequence is the same, so differences stay at round-off (measured: 5e-15
        # in beta, |beta| ~ 1); the loss falls to 1e-16 from L(0) ~ 1.4, so it is
        # compared to round-off of L(0) (measured: 2e-18)
        assert np.allclose(other["beta"], lockstep["beta"], rtol=1e-12, atol=1e-13)
        assert np.allclose(other["loss"], lockstep["loss"], rtol=1e-12, atol=1e-15)


def _interrupt_after(chunks: int):
    def fake_tqdm(iterable, **kwargs):
        for index in iterable:
            if index == chunks:
                raise KeyboardInterrupt
            yield index

    return fake_tqdm


def test_interrupted_groups_resume_bitwise(tmp_path, monkeypatch):
    options = dict(chunk_size=8, batch_size=3, progress=False)  # 3x3, 1 padded
    full = sweep(run, GRID, **options).values
    with monkeypatch.context() as patch:
        patch.setattr(sweep_module, "tqdm", _interrupt_after(2))
        with pytest.raises(SweepInterrupted) as stop:
            sweep(run, GRID, checkpoint=tmp_path, **options)
    assert (stop.value.done, stop.value.total) == (2, 3)
    partial = stop.value.partial.values["loss"].ravel()
    assert np.array_equal(partial[:16], full["loss"].ravel()[:16])
    assert np.all(np.isnan(partial[16:]))
    assert len(list(tmp_path.glob("chunk-*.npz"))) == 2
    _bitwise(sweep(run, GRID, checkpoint=tmp_path, **options).values, full)


def test_groups_and_default():
    assert groups(18, 16) == (2, 9)  # the fewest groups, as equal as possible
    assert groups(256, 16) == (16, 16)
    assert groups(27, 8) == (4, 7)
    assert groups(5, "all") == groups(5, 8) == (1, 5)
    assert default_batch_size("cpu") == 1
    assert default_batch_size("gpu") == default_batch_size("tpu") == "all"


@pytest.mark.parametrize("batch_size", [0, -2, "some"])
def test_bad_batch_size(batch_size):
    with pytest.raises(ValueError, match="`batch_size`"):
        sweep(run, GRID, batch_size=batch_size, progress=False)
