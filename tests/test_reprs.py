"""What users see when they print: a run's status by name, a drift report as a
summary, and errors that name the argument and what it must satisfy."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowgap
from flowgap import RESULTS
from flowgap import invariants as inv
from flowgap.models import MLP, DiagonalNet


def _loss(model):
    return jnp.sum((model.end_to_end() - 1.0) ** 2)


def _status(lr):
    net = DiagonalNet(3, scale=1.0)
    return flowgap.gradient_descent(_loss, net, lr=lr, steps=50).result


def test_a_status_prints_its_name():
    result = _status(0.1)
    assert repr(result) == str(result) == "RESULTS.successful"
    assert repr(_status(5.0)) == "RESULTS.diverged"
    # only the repr changed: the message, equality and the codes are Equinox's
    assert RESULTS[result] == "" and bool(result == RESULTS.successful)
    assert RESULTS[RESULTS.diverged].startswith("Gradient descent diverged")
    code = int(flowgap.dynamics.status_code(result))
    assert flowgap.dynamics.status_name(code) == "successful"


def test_a_batched_status_prints_names_or_counts():
    few = jax.vmap(_status)(jnp.array([0.1, 5.0]))
    assert repr(few) == "RESULTS[successful, diverged]"
    many = jax.vmap(_status)(jnp.concatenate([jnp.full(3, 0.1), jnp.full(17, 5.0)]))
    assert repr(many) == "RESULTS[20: diverged ×17, successful ×3]"

    @jax.jit
    def traced(lr):
        assert repr(_status(lr)) == "RESULTS<traced>"
        return lr

    traced(0.1)


def test_built_statuses_are_one_kind_of_item():
    """`where` and `promote` build the same item class as the named ones, so
    branches of `lax.cond` and loop carries agree on the pytree structure."""
    promoted = RESULTS.promote(diffrax.RESULTS.max_steps_reached)
    assert repr(promoted) == "RESULTS.max_steps_reached"
    chosen = jax.lax.cond(
        jnp.array(True),
        lambda: RESULTS.successful,
        lambda: RESULTS.where(jnp.array(True), RESULTS.diverged, promoted),
    )
    assert repr(chosen) == "RESULTS.successful"
    assert jax.tree.structure(chosen) == jax.tree.structure(promoted)


def test_drift_report_prints_a_summary():
    net = DiagonalNet(3, scale=1.0)
    traj = flowgap.gradient_descent(_loss, net, lr=0.01, steps=300)
    assert "result=RESULTS.successful" in eqx.tree_pformat(traj)
    report = inv.gd_drift(inv.diagonal_balance, _loss, traj, lr=0.01)
    text = repr(report)
    assert len(text.splitlines()) <= 6, text
    assert text.startswith("DriftReport(301 saves, Q with 3 component(s), t = 0 … 3")
    top = np.max(np.abs(report.measured))
    assert f"max |measured| = {top:.3e}" in text
    assert "measured/leading at the end 1.0" in text


def test_unit_rescaling_says_what_the_model_lacks(key):
    tanh = eqx.nn.MLP(2, 1, 4, 2, activation=jnp.tanh, key=key)
    with pytest.raises(ValueError) as error:
        inv.unit_rescaling(tanh)
    message = str(error.value)
    assert message.startswith("`unit_rescaling`: its argument `model` must conserve")
    assert "positively homogeneous" in message
    assert "got equinox.nn._mlp.MLP(activation=tanh), which declares none" in message
    normalised = MLP(2, 4, 1, activation="relu", weight_norm=True, key=key)
    with pytest.raises(ValueError, match=r"declares weight_norm_directions"):
        inv.unit_rescaling(normalised)
    with pytest.raises(ValueError, match=r"`model` must be a model instance"):
        inv.unit_rescaling(eqx.nn.MLP)
