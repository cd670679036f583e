"""Non-smooth models (docs: non-smooth): flowgap finds a model's kinks (its own
`non_smooth` method, or kinked functions among its fields by identity),
`gradient_flow` solves such a model with Heun at rtol 1e-3, and a failed solve
names the kink and those settings."""

import functools
import warnings

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import flowgap
from flowgap import models, problems
from flowgap.dynamics._flow_failure import _non_smooth_advice
from flowgap.dynamics._flow_options import non_smooth_defaults


class Hinge(eqx.Module):
    """A user's model that declares its kink through the protocol."""

    w: jax.Array

    def __call__(self, x):
        return jnp.maximum(self.w @ x, 0.0)

    def non_smooth(self):
        return ("hinge",)


class StaticActivation(eqx.Module):
    """A user's model holding its activation in a static field."""

    w: jax.Array
    activation: object = eqx.field(static=True)

    def __call__(self, x):
        return self.activation(self.w @ x)


class DeclaredSmooth(StaticActivation):
    """Holds `jnp.abs` but applies it where it is smooth, and says so."""

    def non_smooth(self):
        return ()


def _mlp(activation, key, width=16):
    return models.MLP(2, width, 1, depth=2, activation=activation, key=key)


def test_flowgap_mlp_knows_its_kinks(key):
    assert "non_smooth" in models.PROTOCOL
    assert models.non_smooth(_mlp("relu", key)) == ("relu",)
    assert models.non_smooth(_mlp("leaky_relu", key)) == ("leaky_relu",)
    for smooth in ("tanh", "linear", "gelu", "softplus"):
        assert models.non_smooth(_mlp(smooth, key)) == ()
    assert models.model_method(_mlp("relu", key), "non_smooth")() == ("relu",)


def test_eqx_mlp_kinks_are_found_by_identity(key):
    assert models.non_smooth(eqx.nn.MLP(2, 1, 8, 2, key=key)) == ("relu",)  # default
    tanh = eqx.nn.MLP(2, 1, 8, 2, activation=jnp.tanh, key=key)
    assert models.non_smooth(tanh) == ()
    with_abs = eqx.nn.MLP(
        2, 1, 8, 2, activation=jnp.tanh, final_activation=jnp.abs, key=key
    )
    assert models.non_smooth(with_abs) == ("abs",)
    leaky = functools.partial(jax.nn.leaky_relu, negative_slope=0.1)
    scanned = eqx.nn.MLP(2, 1, 8, 3, activation=leaky, scan=True, key=key)
    assert models.non_smooth(scanned) == ("leaky_relu",)
    hard = eqx.nn.MLP(2, 1, 8, 2, activation=jax.nn.hard_tanh, key=key)
    assert models.non_smooth(hard) == ("hard_tanh",)
    # by identity: a lambda calling relu is not seen (declare it with the method)
    wrapped = eqx.nn.MLP(2, 1, 8, 2, activation=lambda z: jax.nn.relu(z), key=key)
    assert models.non_smooth(wrapped) == ()
    nested = eqx.nn.Sequential(
        [eqx.nn.Linear(2, 2, key=key), eqx.nn.Lambda(jax.nn.relu), eqx.nn.MaxPool1d(2)]
    )
    assert models.non_smooth(nested) == ("relu", "max")


def test_user_module_declares_its_kinks():
    w = jnp.ones((1, 2))
    assert models.non_smooth(Hinge(w)) == ("hinge",)
    assert models.non_smooth(StaticActivation(w, jax.nn.relu)) == ("relu",)
    assert models.non_smooth(DeclaredSmooth(w, jnp.abs)) == ()  # the method wins
    assert models.non_smooth(jnp.ones(3)) == ()  # a bare array


def test_defaults_follow_the_model(key):
    heun, rtol, atol = non_smooth_defaults(
        Hinge(jnp.ones((1, 2))), None, None, None, None
    )
    assert isinstance(heun, diffrax.Heun) and (rtol, atol) == (1e-3, 1e-5)
    # each default only where the caller gave none
    tsit5 = diffrax.Tsit5()
    relu = _mlp("relu", key)
    assert non_smooth_defaults(relu, tsit5, None, 1e-6, None) == (tsit5, 1e-6, 1e-5)
    controller = diffrax.PIDController(rtol=1e-4, atol=1e-6)
    solver, rtol, atol = non_smooth_defaults(relu, None, controller, None, None)
    assert isinstance(solver, diffrax.Heun) and rtol is None and atol is None
    # a smooth model keeps gradient_flow's usual defaults (Tsit5, 1e-8/1e-10)
    assert non_smooth_defaults(_mlp("tanh", key), None, None, None, None) == (
        None,
        None,
        None,
    )


def _problem():
    return problems.teacher_student(jax.random.key(0), n=64, d=2, teacher_width=4)


def _flat(model):
    return jax.flatten_util.ravel_pytree(eqx.filter(model, eqx.is_inexact_array))[0]


def test_relu_flow_reaches_t1_with_the_non_smooth_defaults():
    # The setting (2-D inputs, n 64, width 16, depth 2) to t1 = 5: the
    # smooth defaults (Tsit5, 1e-8) stop at t ≈ 0.6 after 500 steps; Heun at
    # rtol 1e-3 takes about 100 steps (budget 200).
    problem, t1 = _problem(), 5.0
    net = _mlp("relu", jax.random.key(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flow = flowgap.gradient_flow(problem.loss, net, t1=t1, max_steps=200)
    assert flow.successful and float(flow.stop_time) == t1
    steps = int(flow.stats["num_steps"])
    assert int(flow.stats["num_field_evals"]) == 2 * steps  # Heun: 2 stages
    # Reference: Heun at the constant step 5e-4, first order at the kinks: within
    # 3.5e-6 of the step 5e-5. Measured error of the defaults 2.8e-4; the
    # documented bound is 1e-3.
    reference = flowgap.gradient_flow(
        problem.loss,
        net,
        t1=t1,
        solver=diffrax.Heun(),
        stepsize_controller=diffrax.ConstantStepSize(),
        dt0=5e-4,
        max_steps=10_010,
    )
    ref = _flat(reference.final)
    error = jnp.linalg.norm(_flat(flow.final) - ref) / jnp.linalg.norm(ref)
    assert float(error) <= 1e-3


def test_failure_names_the_kink_and_the_settings(key):
    # eqx.nn.MLP's relu is found on the failed trajectory's final model
    net = eqx.nn.MLP(2, 1, 16, 2, key=jax.random.key(1))
    with pytest.raises(flowgap.SolverError) as err:
        flowgap.gradient_flow(
            _problem().loss,
            net,
            t1=5.0,
            solver=diffrax.Tsit5(),
            rtol=1e-8,
            atol=1e-10,
            max_steps=200,
            throw=True,
        )
    message = str(err.value)
    assert "non-smooth (relu)" in message and "steps rejected" in message
    assert "solver=diffrax.Heun(), rtol=1e-3, atol=1e-5" in message
    assert "now Tsit5 at rtol/atol 1e-08/1e-10" in message
    assert "Kvaerno5" not in message  # a stiff solver does not help at kinks


def test_advice_from_the_share_of_rejected_steps():
    usual = ["raise `max_steps`", "loosen", "a stiff solver"]
    bare = jnp.ones(2)  # declares nothing, holds no kinked function
    diagnosis, options = _non_smooth_advice(bare, 1000, 50, "Tsit5", usual)
    assert diagnosis == "" and options == usual  # 5%: as for any failure
    diagnosis, options = _non_smooth_advice(bare, 1000, 300, "Tsit5", usual)
    assert "30% of 1000 steps rejected" in diagnosis and "non-smooth" in diagnosis
    assert "stiffness" in diagnosis and options[1:] == usual
    assert "Heun" in options[0]
    diagnosis, options = _non_smooth_advice(Hinge(bare), 1000, 0, "Tsit5", usual)
    assert "non-smooth (hinge)" in diagnosis and "Heun" in options[0]
