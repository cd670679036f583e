import functools

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import flowgap
from flowgap import RESULTS
from flowgap.dynamics import (
    DivergenceError,
    GradNormBelow,
    LossBelow,
    log_save_steps,
    uniform_rates,
)
from flowgap.models import DiagonalNet, PolarDiagonalNet
from flowgap.problems import sparse_recovery

from .helpers import quadratic


def _closed_form(a, b, theta0, lr, k, p=None):
    """θ_k = θ* + (I − ηPA)^k (θ₀ − θ*), exact GD on ½θᵀAθ − bᵀθ."""
    p = jnp.ones_like(b) if p is None else p
    star = jnp.linalg.solve(a, b)
    m = jnp.eye(b.shape[0]) - lr * p[:, None] * a
    return star + jnp.linalg.matrix_power(m, k) @ (theta0 - star)


def test_gd_on_quadratic_matches_closed_form(key):
    a, b, loss = quadratic(6, key)
    theta0 = jnp.ones(6)
    traj = flowgap.gradient_descent(loss, theta0, lr=0.3, steps=40, save_every=10)
    assert np.allclose(traj.ts, 0.3 * np.arange(0, 41, 10), rtol=1e-15)
    for i, k in enumerate(range(0, 41, 10)):
        # Round-off: ~k·ε·‖θ‖ for a contraction; 1e-13 leaves a wide margin.
        assert np.allclose(traj[i], _closed_form(a, b, theta0, 0.3, k), atol=1e-13)
        assert np.isclose(traj.loss[i], loss(traj[i]), rtol=1e-14)
    assert traj.result == RESULTS.successful
    assert int(traj.stats["num_steps"]) == 40 and int(traj.stats["stop_step"]) == -1
    assert np.array_equal(traj.final, traj[-1])


def test_rates_precondition_both_sides(key):
    a, b, loss = quadratic(4, key)
    p = jnp.array([1.0, 0.5, 2.0, 0.25])
    traj = flowgap.gradient_descent(loss, jnp.zeros(4), lr=0.2, steps=25, rates=p)
    assert np.allclose(
        traj.final, _closed_form(a, b, jnp.zeros(4), 0.2, 25, p), atol=1e-13
    )


def test_log_save_steps_schedule(key):
    _, _, loss = quadratic(3, key)
    steps = log_save_steps(1000)
    assert steps[:4] == (0, 1, 2, 3) and steps[-1] == 1000 and 100 in steps
    traj = flowgap.gradient_descent(
        loss, jnp.ones(3), lr=0.1, steps=1000, save_steps=steps
    )
    dense = flowgap.gradient_descent(loss, jnp.ones(3), lr=0.1, steps=1000)
    assert np.allclose(traj.ts, np.asarray(steps) * 0.1, rtol=1e-15)
    # Same arithmetic in the same order: bit-identical states.
    assert np.array_equal(traj.models, dense.models[np.asarray(steps)])


def test_optimizer_factory_gets_traced_lr(key):
    a, b, loss = quadratic(3, key)
    heavy_ball = functools.partial(optax.sgd, momentum=0.9)
    traj = flowgap.gradient_descent(
        loss, jnp.ones(3), lr=0.05, steps=30, optimizer=heavy_ball
    )
    theta, m = jnp.ones(3), jnp.zeros(3)
    for _ in range(30):  # optax's heavy ball: m ← g + 0.9 m, θ ← θ − η m
        m = (a @ theta - b) + 0.9 * m
        theta = theta - 0.05 * m
    assert np.allclose(traj.final, theta, atol=1e-13)


def test_ready_gradient_transformation_is_used_as_is(key):
    _, _, loss = quadratic(3, key)
    ready = optax.adam(1e-2)
    traj = flowgap.gradient_descent(
        loss, jnp.ones(3), lr=1e-2, steps=20, optimizer=ready
    )
    params, state = jnp.ones(3), ready.init(jnp.ones(3))
    for _ in range(20):
        updates, state = ready.update(jax.grad(loss)(params), state, params)
        params = optax.apply_updates(params, updates)
    assert np.allclose(traj.final, params, atol=1e-14)


def test_polar_variants(key):
    problem = sparse_recovery(key, n=10, d=20, sparsity=2)
    polar = PolarDiagonalNet(20, scale=0.5)
    rates = polar.rates(3.0)
    sk = flowgap.gradient_descent(problem.loss, polar, lr=0.02, steps=50, rates=rates)
    proj = flowgap.gradient_descent(
        problem.loss,
        polar,
        lr=0.02,
        steps=50,
        rates=rates,
        projection=PolarDiagonalNet.normalised,
    )
    sk_norms = jnp.linalg.norm(sk.models.direction, axis=-1)
    # Salimans–Kingma: ‖θ‖ grows, by exactly η²ρ²‖∇_θL‖² per step (∇_θL ⊥ θ).
    assert np.all(np.diff(sk_norms) > 0)
    assert np.allclose(jnp.linalg.norm(proj.models.direction, axis=-1), 1.0, atol=1e-15)
    assert np.all(np.isfinite(sk.loss)) and np.all(np.isfinite(proj.loss))


def test_salimans_kingma_norm_growth_identity(key):
    problem = sparse_recovery(key, n=10, d=20, sparsity=2)
    polar = PolarDiagonalNet(20, scale=0.5)
    lr, rho = 0.02, 3.0
    traj = flowgap.gradient_descent(
        problem.loss, polar, lr=lr, steps=30, rates=polar.rates(rho)
    )
    for k in range(30):
        g = jax.grad(problem.loss)(traj[k]).direction
        before = jnp.sum(traj[k].direction ** 2)
        after = jnp.sum(traj[k + 1].direction ** 2)
        # exact: ‖θ − ηρg‖² = ‖θ‖² + η²ρ²‖g‖² since g ⊥ θ (up to round-off ~1e-16)
        assert np.isclose(after - before, (lr * rho) ** 2 * jnp.sum(g**2), rtol=1e-9)


def test_divergence_is_reported_with_step_and_keeps_history(key):
    _, _, loss = quadratic(4, key, lo=1.0, hi=2.0)  # stable iff lr < 2/2 = 1
    traj = flowgap.gradient_descent(
        loss, jnp.ones(4), lr=1.5, steps=4000, save_every=100
    )
    assert traj.result == RESULTS.diverged
    step = int(traj.stats["stop_step"])
    assert 0 < step < 4000
    assert np.isclose(traj.stop_time, step * 1.5)
    assert np.isfinite(traj.stats["last_finite_loss"])
    before = np.asarray(traj.ts) < float(traj.stop_time)
    after = np.asarray(traj.ts) > float(traj.stop_time)
    assert before.sum() == step // 100 + 1
    assert np.all(np.isfinite(traj.loss[before]))  # the history is kept
    assert np.all(np.isinf(traj.loss[after]))  # and nothing fake after the stop
    # the unguarded fast path locates the step exactly as the per-step guard does
    guarded = flowgap.gradient_descent(
        loss,
        jnp.ones(4),
        lr=1.5,
        steps=4000,
        save_every=100,
        stop_when=LossBelow(1e-300),
    )
    assert int(guarded.stats["stop_step"]) == step
    # same arithmetic, fused differently by XLA: equal to round-off
    assert np.isclose(
        guarded.stats["last_finite_loss"], traj.stats["last_finite_loss"], rtol=1e-12
    )
    with pytest.raises(DivergenceError, match=f"step {step}") as err:
        flowgap.gradient_descent(
            loss, jnp.ones(4), lr=1.5, steps=4000, save_every=100, throw=True
        )
    assert err.value.trajectory is not None


def test_max_loss_threshold(key):
    _, _, loss = quadratic(4, key, lo=1.0, hi=2.0)
    traj = flowgap.gradient_descent(loss, jnp.ones(4), lr=1.5, steps=400, max_loss=1e3)
    assert traj.result == RESULTS.diverged
    assert float(traj.stats["last_finite_loss"]) <= 1e3 < float(traj.stats["stop_loss"])
    k = int(traj.stats["stop_step"])
    dense = flowgap.gradient_descent(loss, jnp.ones(4), lr=1.5, steps=k + 1)
    assert float(dense.loss[k]) > 1e3 >= float(dense.loss[k - 1])  # the exact step


@pytest.mark.parametrize("stop", [LossBelow(1e-6), GradNormBelow(1e-4)])
def test_stop_when(key, stop):
    a, b, shifted = quadratic(3, key)
    star = jnp.linalg.solve(a, b)

    def loss(theta):  # ≥ 0 with minimum 0, so LossBelow is a convergence test
        return shifted(theta) - shifted(star)

    traj = flowgap.gradient_descent(
        loss, jnp.zeros(3), lr=0.5, steps=2000, stop_when=stop
    )
    assert traj.result == RESULTS.event_occurred
    k = int(traj.stats["stop_step"])
    assert 0 < k < 2000 and int(traj.stats["num_steps"]) == k
    dense = flowgap.gradient_descent(loss, jnp.zeros(3), lr=0.5, steps=k)
    assert np.array_equal(dense.final, traj.final)  # stopped exactly at step k
    before = dense[k - 1]
    if isinstance(stop, GradNormBelow):
        assert jnp.linalg.norm(a @ traj.final - b) < 1e-4
        assert jnp.linalg.norm(a @ before - b) >= 1e-4  # the first such step
    else:
        assert loss(traj.final) < 1e-6 <= loss(before)


def test_uniform_rates_match_scalar(key):
    problem = sparse_recovery(key, n=8, d=12, sparsity=2)
    net = DiagonalNet(12, scale=0.2)
    a = flowgap.gradient_descent(problem.loss, net, lr=0.01, steps=20, rates=2.0)
    b = flowgap.gradient_descent(
        problem.loss, net, lr=0.01, steps=20, rates=uniform_rates(net, 2.0)
    )
    c = flowgap.gradient_descent(problem.loss, net, lr=0.02, steps=20)
    assert np.array_equal(a.final.u, b.final.u)
    assert np.allclose(a.final.u, c.final.u, rtol=1e-14)


def _bad_calls(key):
    problem = sparse_recovery(key, n=8, d=12, sparsity=2)
    net = DiagonalNet(12, scale=0.2)
    gd = functools.partial(flowgap.gradient_descent, problem.loss, net)
    wrong_dim = sparse_recovery(key, n=8, d=13, sparsity=2)
    return [
        (lambda: gd(lr=0.0, steps=10), "lr"),
        (lambda: gd(lr=-0.1, steps=10), "lr"),
        (lambda: gd(lr=float("inf"), steps=10), "lr"),
        (lambda: gd(lr=jnp.ones(2), steps=10), "lr"),
        (lambda: gd(lr="0.1", steps=10), "lr"),
        (lambda: gd(lr=0.1, steps=0), "steps"),
        (lambda: gd(lr=0.1, steps=2.5), "steps"),
        (lambda: gd(lr=0.1, steps=10, save_every=3), "save_every"),
        (lambda: gd(lr=0.1, steps=10, save_steps=[0, 5, 3]), "save_steps"),
        (lambda: gd(lr=0.1, steps=10, save_steps=[0, 11]), "save_steps"),
        (lambda: gd(lr=0.1, steps=10, rates=-1.0), "rates"),
        (lambda: gd(lr=0.1, steps=10, rates=PolarDiagonalNet(12, scale=1.0)), "rates"),
        (lambda: gd(lr=0.1, steps=10, rates=uniform_rates(net, -2.0)), "rates"),
        (lambda: gd(lr=0.1, steps=10, optimizer="adam"), "optimizer"),
        (lambda: gd(lr=0.1, steps=10, stop_when=LossBelow(-1.0)), "tol"),
        (lambda: gd(lr=0.1, steps=10, max_loss=0.0), "max_loss"),
        (lambda: gd(lr=0.1, steps=10, projection=3), "projection"),
        (lambda: flowgap.gradient_descent("loss", net, lr=0.1, steps=10), "loss"),
        (
            lambda: flowgap.gradient_descent(lambda m: m.u, net, lr=0.1, steps=10),
            "loss",
        ),
        (
            lambda: flowgap.gradient_descent(wrong_dim.loss, net, lr=0.1, steps=10),
            "inputs",
        ),
        (
            lambda: flowgap.gradient_descent(problem.loss, {"a": 1}, lr=0.1, steps=10),
            "model",
        ),
        (lambda: gd(lr=0.1, steps=10, progress_meter=True), "progress_meter"),
        (lambda: gd(lr=0.1, steps=10, layerwise=[3]), "layerwise"),
    ]


@pytest.mark.parametrize("index", range(23))
def test_bad_input_names_the_argument(key, index):
    call, name = _bad_calls(key)[index]
    # ours say `name`; under the test suite's runtime type checker, an annotated
    # parameter may be caught first by jaxtyping/beartype, which says 'name'.
    with pytest.raises((ValueError, TypeError), match=f"[`']{name}[`']"):
        call()


def test_text_progress_meter_reports_from_inside_the_run(key, capsys):
    _, _, loss = quadratic(3, key)
    meter = diffrax.TextProgressMeter(minimum_increase=0.25)
    traj = flowgap.gradient_descent(
        loss, jnp.ones(3), lr=0.1, steps=1000, save_every=10, progress_meter=meter
    )
    jax.effects_barrier()
    assert traj.result == RESULTS.successful
    printed = capsys.readouterr().out.split()
    assert printed[0] == "0.00%" and printed[-1] == "100.00%"
    values = [float(p.rstrip("%")) for p in printed]
    assert 4 <= len(values) <= 6 and values == sorted(values)  # every > 25 %


@pytest.mark.parametrize("stop", [None, LossBelow(1e-1)])
def test_tqdm_meter_under_vmap_and_grad(key, stop, capsys):
    """The meter's state rides through the scan: a vmapped batch (one run
    diverging) and a derivative both run with it and change nothing."""
    _, _, loss = quadratic(4, key, lo=1.0, hi=2.0)
    lrs = jnp.array([0.1, 0.5, 1.5])

    def run(lr, meter=None):
        return flowgap.gradient_descent(
            lambda t: loss(t) + 10.0,
            jnp.ones(4),
            lr=lr,
            steps=300,
            save_every=100,
            stop_when=stop,
            progress_meter=meter,
        )

    tqdm = diffrax.TqdmProgressMeter(refresh_steps=2)
    shown = jax.vmap(lambda lr: run(lr, tqdm))(lrs)
    plain = jax.vmap(run)(lrs)
    assert np.array_equal(shown.loss, plain.loss)
    assert np.array_equal(shown.stats["stop_step"], plain.stats["stop_step"])
    d_shown = jax.grad(lambda lr: run(lr, tqdm).final_loss)(0.1)
    d_plain = jax.grad(lambda lr: run(lr).final_loss)(0.1)
    assert d_shown == d_plain
    jax.effects_barrier()
    assert "100.00%" in capsys.readouterr().err


class _TwoBlocks(eqx.Module):
    """A user's model that names its own layers (the model protocol)."""

    first: jax.Array
    second: jax.Array

    def layer_blocks(self):
        return (lambda m: m.second, lambda m: m.first)

    def __call__(self):
        return jnp.concatenate([self.first, self.second])


def test_layerwise_uses_the_model_protocol(key):
    a, b, loss = quadratic(4, key)
    model = _TwoBlocks(jnp.ones(2), jnp.ones(2))
    traj = flowgap.gradient_descent(
        lambda m: loss(m()), model, lr=0.1, steps=2, layerwise=True
    )
    grads = a @ jnp.ones(4) - b
    # step 0 moves block 0 (`second`) only, step 1 block 1 (`first`)
    assert np.array_equal(traj.models.first[1], model.first)
    assert np.allclose(traj.models.second[1], 1 - 0.1 * grads[2:], atol=1e-15)
    assert np.array_equal(traj.models.second[2], traj.models.second[1])
    assert not np.array_equal(traj.models.first[2], model.first)


def test_rates_apply_to_the_trainable_leaves_only(key):
    """A frozen float leaf has no rate: scalar and pytree `rates` work with a
    `trainable` filter, and the frozen leaf never moves."""
    a, b, loss = quadratic(4, key)
    model = _TwoBlocks(jnp.ones(2), jnp.ones(2))
    frozen = _TwoBlocks(True, False)
    p = jnp.array([1.0, 0.5])
    traj = flowgap.gradient_descent(
        lambda m: loss(m()), model, lr=0.1, steps=3, rates=2.0, trainable=frozen
    )
    tree = flowgap.gradient_descent(
        lambda m: loss(m()),
        model,
        lr=0.1,
        steps=3,
        rates=_TwoBlocks(p, jnp.array(7.0)),
        trainable=frozen,
    )
    theta, rho = jnp.ones(4), jnp.ones(4)
    for _ in range(3):  # GD in `first` alone, at rate 2 (scalar) or p (pytree)
        g = a @ theta - b
        theta = theta.at[:2].add(-0.2 * g[:2])
        rho = rho.at[:2].add(-0.1 * p * (a @ rho - b)[:2])
    assert np.allclose(traj.final(), theta, atol=1e-14)
    assert np.allclose(tree.final(), rho, atol=1e-14)
    assert np.array_equal(traj.models.second, jnp.ones((4, 2)))


def test_layerwise_descent(key):
    """Step k moves only block k mod B; to first order the run is the gradient
    flow at rate 1/B, which it tracks to O(η)."""
    import diffrax

    from flowgap.analysis import loglog_slope, parameter_distance
    from flowgap.models import DeepLinear
    from flowgap.problems import low_rank

    problem = low_rank(key, d_in=4, d_out=3, rank=1)
    net = DeepLinear((4, 5, 3), scale=0.5, key=key)
    one = flowgap.gradient_descent(problem.loss, net, lr=0.1, steps=1, layerwise=True)
    assert not np.array_equal(one.final.weights[0], net.weights[0])
    assert np.array_equal(one.final.weights[1], net.weights[1])
    two = flowgap.gradient_descent(
        problem.loss,
        net,
        lr=0.1,
        steps=2,
        layerwise=[lambda m: m.weights[1], lambda m: m.weights[0]],
    )
    assert not np.array_equal(two.models.weights[1][1], net.weights[1])
    assert np.array_equal(two.models.weights[0][1], net.weights[0])
    flow = flowgap.gradient_flow(
        problem.loss,
        net,
        t1=1.0,
        rates=0.5,
        solver=diffrax.Dopri8(),
        rtol=1e-13,
        atol=1e-13,
    )
    lrs = 1.0 / np.array([40, 80, 160, 320])
    gaps = []
    for lr in lrs:
        steps = round(1.0 / lr)
        gd = flowgap.gradient_descent(
            problem.loss,
            net,
            lr=lr,
            steps=steps,
            save_every=steps // 10,
            layerwise=True,
        )
        gaps.append(parameter_distance(gd.final, flow.final))
    assert abs(loglog_slope(lrs, gaps)["slope"] - 1) <= 0.1
    with pytest.raises(ValueError, match="cover every"):
        flowgap.gradient_descent(
            problem.loss, net, lr=0.1, steps=2, layerwise=[lambda m: m.weights[0]]
        )
    with pytest.raises(ValueError, match="`layerwise=True`.*`layer_blocks"):
        flowgap.gradient_descent(
            problem.loss, DiagonalNet(3, scale=1.0), lr=0.1, steps=2, layerwise=True
        )
