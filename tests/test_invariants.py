"""flowgap.invariants: every library law is conserved by the flow, wrong ones are
caught, laws are counted, and GD drift is accounted for exactly."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import flowgap
from flowgap import invariants as inv
from flowgap.models import (
    MLP,
    DeepLinear,
    DiagonalNet,
    PolarDiagonalNet,
    TwoLayer,
    WeightNorm,
)
from flowgap.problems import low_rank, sparse_recovery, teacher_student

TIGHT = dict(solver=diffrax.Dopri8(), rtol=1e-12, atol=1e-12)


def _perturbed(model, key, size=0.3):
    params, static = eqx.partition(model, eqx.is_inexact_array)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    leaves = [
        x * jnp.exp(size * jax.random.normal(k, x.shape)) for x, k in zip(leaves, keys)
    ]
    return eqx.combine(jax.tree.unflatten(treedef, leaves), static)


def _case(name, key):
    """(problem, model, rates) for every model family with library laws."""
    k1, k2 = jax.random.split(key)
    sparse = sparse_recovery(k1, n=6, d=12, sparsity=2)
    student = teacher_student(k1, n=12, d=3, teacher_width=2, out_dim=2)
    polar2 = PolarDiagonalNet(12, scale=0.4)
    polar3 = PolarDiagonalNet(12, depth=3, scale=0.6)
    cases = {
        "diagonal-2": (sparse, _perturbed(DiagonalNet(12, scale=0.5), k2), None),
        "diagonal-3": (
            sparse,
            _perturbed(DiagonalNet(12, depth=3, scale=0.7), k2),
            None,
        ),
        "polar-2": (sparse, polar2, polar2.rates(2.0)),
        "polar-3": (sparse, polar3, polar3.rates(0.5)),
        "weight-norm": (
            student,
            WeightNorm(eqx.nn.Linear(3, 2, key=k2)),
            None,
        ),
        "mlp-weight-norm": (
            student,
            MLP(3, 5, 2, depth=2, weight_norm=True, key=k2),
            None,
        ),
        "deep-linear": (
            low_rank(k1, d_in=4, d_out=3, rank=2),
            DeepLinear((4, 5, 3), scale=0.5, key=k2),
            None,
        ),
        "two-layer-linear": (
            student,
            TwoLayer(3, 4, 2, activation="linear", scale=0.6, key=k2),
            None,
        ),
        "two-layer-relu": (
            student,
            TwoLayer(3, 4, 2, activation="relu", scale=0.6, key=k2),
            None,
        ),
        "mlp-relu": (student, MLP(3, 5, 2, depth=2, activation="relu", key=k2), None),
        "eqx-mlp-identity-scan": (
            student,
            eqx.nn.MLP(3, 2, 5, 3, activation=lambda z: z, scan=True, key=k2),
            None,
        ),
    }
    return cases[name]


CASES = [
    "diagonal-2",
    "diagonal-3",
    "polar-2",
    "polar-3",
    "weight-norm",
    "mlp-weight-norm",
    "deep-linear",
    "two-layer-linear",
    "two-layer-relu",
    "mlp-relu",
    "eqx-mlp-identity-scan",
]


@pytest.mark.parametrize("name", CASES)
def test_every_library_law_is_conserved(key, name):
    problem, model, rates = _case(name, key)
    ratio = 1.0 if rates is None else float(rates.direction)
    laws = inv.known(model, problem, ratio=ratio)
    assert laws
    flow = flowgap.gradient_flow(
        problem.loss, model, t1=3.0, ts=jnp.linspace(0, 3, 7), rates=rates, **TIGHT
    )
    assert flow.successful and float(flow.loss[-1]) < float(flow.loss[0])
    for law_name, q in laws.items():
        check = inv.check_conserved(
            q, problem.loss, model, key=key, rates=rates, trajectory=flow
        )
        assert check.passed, (law_name, check.worst)
        # Dopri8 at 1e-12: drift is solver error, ~1e-11 here; bound 1e-8.
        assert inv.relative_drift(q, flow) <= 1e-8, law_name


@pytest.mark.parametrize("name", CASES)
def test_declared_laws_are_the_public_functions(key, name):
    """`known` takes each law from the model's `known_invariants`; where flowgap
    also has a public function of that name, both give the same values."""
    problem, model, rates = _case(name, key)
    ratio = 1.0 if rates is None else float(rates.direction)
    public = dict(
        diagonal_mirror=lambda m: inv.diagonal_mirror(m, problem.inputs),
        polar_mirror=lambda m: inv.polar_mirror(m, problem.inputs, ratio),
    )
    for law_name, q in inv.known(model, problem, ratio=ratio).items():
        reference = public.get(law_name, getattr(inv, law_name))
        # Same formula on the same values: equal up to round-off.
        np.testing.assert_allclose(q(model), reference(model), rtol=1e-13, atol=1e-15)


def test_equinox_mlp(key):
    """eqx.nn.MLP: rescaling laws exactly when its hidden activation is positively
    homogeneous; otherwise none, with errors naming the class's module path."""
    relu = eqx.nn.MLP(3, 2, 4, 2, key=key)  # default activation: relu
    student = teacher_student(key, n=12, d=3, teacher_width=2, out_dim=2)
    law = inv.known(relu)["unit_rescaling"]
    assert inv.check_conserved(law, student.loss, relu, key=key).passed
    value = inv.unit_rescaling(relu)
    a, b, _ = relu.layers
    first = jnp.sum(a.weight**2, axis=1) + a.bias**2 - jnp.sum(b.weight**2, axis=0)
    assert value.shape == (8,) and np.allclose(value[:4], first, rtol=1e-14)
    no_bias = eqx.nn.MLP(
        3, 2, 4, 1, activation=jax.nn.leaky_relu, use_bias=False, key=key
    )
    assert inv.known(no_bias).keys() == {"unit_rescaling"}
    assert inv.unit_rescaling(no_bias).shape == (4,)
    tanh = eqx.nn.MLP(3, 2, 4, 2, activation=jnp.tanh, key=key)
    assert inv.known(tanh) == {}
    with pytest.raises(ValueError, match=r"`unit_rescaling`.*equinox\.nn\._mlp\.MLP"):
        inv.unit_rescaling(tanh)
    with pytest.raises(ValueError, match=r"equinox\.nn\._mlp\.MLP"):
        inv.count_conservation_laws(relu, key=key)


def test_wrong_candidates_fail(key):
    problem, deep, _ = _case("deep-linear", key)
    only_first = lambda m: jnp.sum(m.weights[0] ** 2)  # noqa: E731
    check = inv.check_conserved(only_first, problem.loss, deep, key=key)
    assert not check.passed and check.worst > 1e-3
    student = teacher_student(key, n=12, d=3, teacher_width=2)
    tanh = TwoLayer(3, 4, 1, activation="tanh", scale=0.6, key=key)
    assert inv.known(tanh) == {}
    rescale = lambda m: jnp.sum(m.w1**2, axis=1) - jnp.sum(m.w2**2, axis=0)  # noqa: E731
    assert not inv.check_conserved(rescale, student.loss, tanh, key=key).passed
    # the polar mirror law at the wrong rate ratio is not conserved
    problem, polar, rates = _case("polar-2", key)
    wrong = inv.known(polar, problem, ratio=1.0)["polar_mirror"]
    assert not inv.check_conserved(
        wrong, problem.loss, polar, key=key, rates=rates
    ).passed


@pytest.mark.parametrize(
    "call",
    [
        lambda k: inv.diagonal_balance(PolarDiagonalNet(3, scale=1.0)),
        lambda k: inv.balancedness(
            TwoLayer(2, 2, 1, activation="relu", scale=1.0, key=k)
        ),
        lambda k: inv.unit_rescaling(
            TwoLayer(2, 2, 1, activation="tanh", scale=1.0, key=k)
        ),
        lambda k: inv.weight_norm_directions(DiagonalNet(3, scale=1.0)),
        lambda k: inv.polar_mirror(
            PolarDiagonalNet(3, scale=1.0, split=True), jnp.ones((2, 3))
        ),
        lambda k: inv.known({"not": "a model"}),
        lambda k: inv.LinearSymmetry(jnp.eye(5), DiagonalNet(3, scale=1.0)),
        lambda k: inv.LinearSymmetry(
            jnp.triu(jnp.ones((6, 6))), DiagonalNet(3, scale=1.0)
        ),
        lambda k: inv.count_conservation_laws(
            TwoLayer(2, 2, 1, activation="tanh", scale=1.0, key=k), key=k
        ),
    ],
)
def test_bad_input(key, call):
    with pytest.raises(ValueError, match="`"):
        call(key)


def test_symmetries_give_their_laws(key):
    student = teacher_student(key, n=12, d=3, teacher_width=2)
    relu = TwoLayer(3, 4, 1, activation="relu", scale=0.6, key=key)
    tanh = TwoLayer(3, 4, 1, activation="tanh", scale=0.6, key=key)
    rescale = inv.RescaleSymmetry(lambda m: m.w1, lambda m: m.w2)
    assert rescale.verify(student.loss, relu, key=key) < 1e-12
    assert rescale.verify(student.loss, tanh, key=key) > 1e-3
    assert inv.check_conserved(rescale.invariant, student.loss, relu, key=key).passed
    wn = WeightNorm(eqx.nn.Linear(3, 1, key=key))
    problem = teacher_student(key, n=12, d=3, teacher_width=2, out_dim=1)
    scale = inv.ScaleSymmetry(lambda m: m.layer.weight)
    assert scale.verify(problem.loss, wn, key=key) < 1e-12
    assert inv.check_conserved(scale.invariant, problem.loss, wn, key=key).passed

    target = jnp.array([1.0, -2.0, 0.5, 3.0])

    def shift_free(theta):  # invariant to θ ↦ θ + a·1
        centred = theta - jnp.mean(theta)
        return 0.5 * jnp.sum((centred - target) ** 2)

    shift = inv.TranslationSymmetry(lambda t: t)
    theta0 = jnp.array([0.3, 0.1, -0.2, 0.7])
    assert shift.verify(shift_free, theta0, key=key) < 1e-12
    flow = flowgap.gradient_flow(
        shift_free, theta0, t1=2.0, ts=jnp.linspace(0, 2, 5), **TIGHT
    )
    assert inv.relative_drift(shift.invariant, flow) < 1e-8

    net = DiagonalNet(3, scale=0.5)  # flat order (u, v): scale u alone is no symmetry
    generator = jnp.diag(jnp.array([1.0, 1.0, 1.0, 0.0, 0.0, 0.0]))
    linear = inv.LinearSymmetry(generator, net)
    sparse = sparse_recovery(key, n=4, d=3, sparsity=1)
    assert linear.verify(sparse.loss, net, key=key) > 1e-3


def _rank(matrix):
    s = np.linalg.svd(np.asarray(matrix), compute_uv=False)
    return int(np.sum(s > 1e-8 * s[0]))


def _known_rank(model, key, law):
    """Independent route: rank of the Jacobian of a known law at a generic point."""
    point = _perturbed(model, key)
    params, static = eqx.partition(point, eqx.is_inexact_array)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    jac = jax.jacrev(lambda t: law(eqx.combine(unravel(t), static)))(flat)
    return _rank(jac)


@pytest.mark.parametrize("dims", [(4, 2, 3), (5, 3, 4), (6, 4, 6)])
def test_count_two_layer_linear(key, dims):
    net = DeepLinear(dims, scale=1.0, key=key)
    count = inv.count_conservation_laws(net, key=key, known=inv.known(net))
    r = dims[1]
    expected = _known_rank(net, key, inv.balancedness)
    assert expected == r * (r + 1) // 2
    assert count.laws == expected and count.complete
    assert count.dim == r * (dims[0] + dims[2])


def test_count_relu_one_law_per_neuron(key):
    net = TwoLayer(4, 5, 3, activation="relu", scale=1.0, key=key)
    count = inv.count_conservation_laws(net, key=key, known=inv.known(net))
    assert _known_rank(net, key, inv.unit_rescaling) == 5
    assert count.laws == 5 and count.complete


def test_count_diagonal_and_a_larger_network(key):
    diag = DiagonalNet(7, scale=1.0)
    assert inv.count_conservation_laws(diag, key=key).laws == 7
    net = DeepLinear((12, 8, 12), scale=1.0, key=key)  # 192 parameters
    count = inv.count_conservation_laws(net, key=key, known=inv.known(net))
    assert count.dim == 192 and count.laws == 36 and count.complete
    relu = TwoLayer(20, 10, 5, activation="relu", scale=1.0, key=key)  # 250
    assert inv.count_conservation_laws(relu, key=key).laws == 10


def test_weight_norm_drift_is_exact_under_gd(key):
    problem = teacher_student(key, n=12, d=3, teacher_width=2, out_dim=2)
    wn = WeightNorm(eqx.nn.Linear(3, 2, key=key))
    traj = flowgap.gradient_descent(problem.loss, wn, lr=0.2, steps=60)
    report = inv.gd_drift(inv.weight_norm_directions, problem.loss, traj, lr=0.2)
    scale = np.max(np.abs(report.measured))
    assert scale > 1e-4  # a real drift
    # quadratic law, ∇Q ⊥ ∇L: measured = Σ (η²/2)gᵀ∇²Qg exactly, up to round-off
    assert np.max(np.abs(report.measured - report.leading)) <= 1e-10 * scale
    assert np.max(np.abs(report.measured - report.taylor)) <= 1e-10 * scale


def test_rescaling_drift_is_exact_under_gd(key):
    problem = teacher_student(key, n=12, d=3, teacher_width=2, out_dim=2)
    relu = TwoLayer(3, 4, 2, activation="relu", scale=0.6, key=key)
    traj = flowgap.gradient_descent(problem.loss, relu, lr=0.1, steps=60)
    report = inv.gd_drift(inv.unit_rescaling, problem.loss, traj, lr=0.1)
    scale = np.max(np.abs(report.measured))
    assert scale > 1e-5
    assert np.max(np.abs(report.measured - report.leading)) <= 1e-10 * scale


def test_non_quadratic_drift_ratio_tends_to_one(key):
    problem = sparse_recovery(key, n=6, d=12, sparsity=2)
    net = _perturbed(DiagonalNet(12, depth=3, scale=0.7), key)
    errors = []
    for lr in (0.005, 0.0025, 0.00125):
        steps = round(0.4 / lr)
        traj = flowgap.gradient_descent(problem.loss, net, lr=lr, steps=steps)
        report = inv.gd_drift(inv.diagonal_balance, problem.loss, traj, lr=lr)
        big = np.argmax(np.abs(report.leading[-1]))
        errors.append(abs(report.measured[-1, big] / report.leading[-1, big] - 1))
    # The neglected terms are O(η³) per step against O(η²): the relative error is
    # O(η), so it halves with η (up to its own O(η²) correction).
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all(np.abs(ratios - 2) < 0.3), (errors, ratios)
    assert errors[-1] < 0.01


@pytest.mark.parametrize("decay", [0.0, 0.3])
def test_exact_identities_with_weight_decay(key, decay):
    problem = teacher_student(key, n=12, d=3, teacher_width=2, out_dim=1)
    relu = TwoLayer(3, 4, 1, activation="relu", scale=0.6, key=key)
    lr = 0.1

    def with_decay(rate):
        return optax.chain(optax.add_decayed_weights(decay), optax.sgd(rate))

    traj = flowgap.gradient_descent(
        problem.loss, relu, lr=lr, steps=40, optimizer=with_decay
    )
    rescale = inv.RescaleSymmetry(lambda m: m.w1, lambda m: m.w2)
    out = inv.symmetry_step_identity(
        rescale, problem.loss, traj, lr=lr, weight_decay=decay
    )
    assert out["max_relative_error"] < 1e-12
    if decay:  # without the (1 − ηλ)² factor the identity would fail
        wrong = inv.symmetry_step_identity(rescale, problem.loss, traj, lr=lr)
        assert wrong["max_relative_error"] > 1e-4
    wn = WeightNorm(eqx.nn.Linear(3, 1, key=key))
    traj = flowgap.gradient_descent(
        problem.loss, wn, lr=lr, steps=40, optimizer=with_decay
    )
    scale = inv.ScaleSymmetry(lambda m: m.layer.weight)
    out = inv.symmetry_step_identity(
        scale, problem.loss, traj, lr=lr, weight_decay=decay
    )
    assert out["max_relative_error"] < 1e-12


def test_salimans_kingma_polar_norm_growth(key):
    problem, polar, rates = _case("polar-2", key)
    traj = flowgap.gradient_descent(problem.loss, polar, lr=0.01, steps=30, rates=rates)
    report = inv.gd_drift(
        inv.polar_direction_norm, problem.loss, traj, lr=0.01, rates=rates
    )
    scale = np.max(np.abs(report.measured))
    assert (
        scale > 0 and np.max(np.abs(report.measured - report.leading)) <= 1e-9 * scale
    )


def test_plot_drift_draws_every_run(key):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problem = teacher_student(key, n=12, d=3, teacher_width=2, out_dim=2)
    relu = TwoLayer(3, 4, 2, activation="relu", scale=0.6, key=key)
    gd = {
        lr: inv.drift_curves(
            inv.unit_rescaling,
            problem.loss,
            flowgap.gradient_descent(problem.loss, relu, lr=lr, steps=round(0.2 / lr)),
            lr=lr,
        )
        for lr in (0.02, 0.01)
    }
    flow = flowgap.gradient_flow(problem.loss, relu, t1=0.2, ts=jnp.linspace(0, 0.2, 5))
    fig, ax = plt.subplots()
    inv.plot_drift(ax, gd, inv.flow_drift(inv.unit_rescaling, flow), label="rescaling")
    assert len(ax.lines) == 2 * 2 + 1 and ax.get_yscale() == "log"
    ts, measured, predicted = gd[0.02]
    assert np.allclose(measured, predicted, rtol=1e-9, atol=1e-16)
    plt.close(fig)
