"""Learning rates, init scales, keys and data are traced: sweeps compile once,
and vmapped runs equal their solo runs."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import flowgap
from flowgap.models import DiagonalNet, PolarDiagonalNet, TwoLayer
from flowgap.problems import RegressionProblem, sparse_recovery, teacher_student


class CountingLoss(eqx.Module):
    """Wraps a problem's loss and counts how often it is traced (≈ compiled)."""

    problem: RegressionProblem
    traces: list = eqx.field(static=True)

    def __call__(self, model):
        self.traces.append(1)
        return self.problem.loss(model)


def test_new_lr_scale_or_data_does_not_recompile(key):
    traces = []
    problem = sparse_recovery(key, n=8, d=16, sparsity=2)
    loss = CountingLoss(problem, traces)
    flowgap.gradient_descent(loss, DiagonalNet(16, scale=0.1), lr=0.01, steps=10)
    first = len(traces)
    assert first > 0
    flowgap.gradient_descent(loss, DiagonalNet(16, scale=0.3), lr=0.02, steps=10)
    other = sparse_recovery(jax.random.key(1), n=8, d=16, sparsity=2)
    flowgap.gradient_descent(
        CountingLoss(other, traces), DiagonalNet(16, scale=0.2), lr=0.03, steps=10
    )
    assert len(traces) == first
    flowgap.gradient_flow(loss, DiagonalNet(16, scale=0.1), t1=1.0)
    after_flow = len(traces)
    flowgap.gradient_flow(loss, DiagonalNet(16, scale=0.2), t1=2.0)
    assert len(traces) == after_flow
    flowgap.gradient_descent(loss, DiagonalNet(16, scale=0.1), lr=0.01, steps=20)
    assert len(traces) > after_flow  # a new `steps` is a new program, by design


def test_vmap_over_learning_rates_equals_solo_runs(key):
    problem = sparse_recovery(key, n=8, d=16, sparsity=2)
    net = DiagonalNet(16, scale=0.2)
    lrs = jnp.linspace(0.01, 0.08, 8)

    def run(lr):
        return flowgap.gradient_descent(
            problem.loss, net, lr=lr, steps=50, save_every=10
        )

    batched = jax.vmap(run)(lrs)
    assert batched.ts.shape == (8, 6) and batched.models.u.shape == (8, 6, 16)
    for i, lr in enumerate(lrs):
        solo = run(lr)
        # Same operations, batched: equal up to reassociation in the batched matvec.
        assert np.allclose(batched.models.u[i], solo.models.u, rtol=1e-13, atol=0)
        assert np.allclose(batched.loss[i], solo.loss, rtol=1e-12, atol=0)
        assert np.array_equal(batched.ts[i], solo.ts)


def test_vmap_over_scale_key_and_data_for_both_trainers(key):
    keys = jax.random.split(key, 4)
    scales = jnp.array([0.1, 0.2, 0.4, 0.8])

    def run(k, scale):
        problem = teacher_student(k, n=10, d=3, teacher_width=2)
        net = TwoLayer(3, 4, 1, activation="relu", scale=scale, key=k)
        gd = flowgap.gradient_descent(problem.loss, net, lr=0.05, steps=20)
        gf = flowgap.gradient_flow(problem.loss, net, t1=1.0, ts=gd.ts[::5])
        return gd.final_loss, gf.final_loss, gf.result

    gd_losses, gf_losses, results = jax.vmap(run)(keys, scales)
    assert gd_losses.shape == (4,) and np.all(np.isfinite(gf_losses))
    for i in range(4):
        solo_gd, solo_gf, _ = run(keys[i], scales[i])
        assert np.allclose(gd_losses[i], solo_gd, rtol=1e-12)
        # Batched adaptive solves share step decisions per run, not across runs.
        assert np.allclose(gf_losses[i], solo_gf, rtol=1e-9)


def test_jit_of_a_whole_run_over_polar_ratio(key):
    problem = sparse_recovery(key, n=8, d=16, sparsity=2)
    polar = PolarDiagonalNet(16, scale=0.3)

    @jax.jit
    def final_loss(rho):
        return flowgap.gradient_descent(
            problem.loss, polar, lr=0.01, steps=30, rates=polar.rates(rho)
        ).final_loss

    values = jax.vmap(final_loss)(jnp.array([0.5, 1.0, 2.0]))
    assert np.all(np.isfinite(values)) and len(set(np.asarray(values).tolist())) == 3


def test_same_seed_same_bits(key):
    def run():
        problem = sparse_recovery(jax.random.key(3), n=8, d=16, sparsity=2)
        return flowgap.gradient_descent(
            problem.loss, DiagonalNet(16, scale=0.2), lr=0.05, steps=100
        )

    a, b = run(), run()
    assert np.asarray(a.models.u).tobytes() == np.asarray(b.models.u).tobytes()


def test_divergence_inside_a_vmapped_sweep_is_per_run(key):
    """16 learning rates on a quadratic with λ_max = 2: exactly those above
    2/λ = 1 diverge; the others equal their solo runs."""
    from flowgap import RESULTS

    from .helpers import quadratic

    _, _, loss = quadratic(4, key, lo=0.5, hi=2.0)
    lrs = jnp.linspace(0.3, 1.5, 16)

    def run(lr):
        # |1 − 1.02·2| = 1.04: 20000 steps overflow float64, so every lr > 1 diverges
        return flowgap.gradient_descent(
            loss, jnp.ones(4), lr=lr, steps=20000, save_every=1000
        )

    batched = jax.vmap(run)(lrs)
    diverged = np.asarray(batched.result == RESULTS.diverged)
    assert np.array_equal(diverged, np.asarray(lrs) > 1.0)
    for i, lr in enumerate(lrs):
        solo = run(lr)
        assert int(batched.stats["stop_step"][i]) == int(solo.stats["stop_step"])
        if not diverged[i]:
            assert np.allclose(batched.models[i], solo.models, rtol=1e-13, atol=1e-15)
