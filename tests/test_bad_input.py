"""Bad input, everywhere: each case raises ValueError/TypeError naming the
argument; on the command line each prints one line (no traceback) and exits 2."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowgap
from flowgap import analysis, dynamics, experiments, invariants, models, problems
from flowgap._cli import main
from flowgap.sweeps import sweep
from flowgap.sweeps._spec import parse_axis

KEY = jax.random.key(0)
PROBLEM = problems.sparse_recovery(KEY, n=4, d=6, sparsity=1)
NET = models.DiagonalNet(6, scale=0.1)


def gd(**kwargs):
    settings = dict(lr=0.1, steps=10) | kwargs
    return flowgap.gradient_descent(PROBLEM.loss, NET, **settings)


def gf(**kwargs):
    settings = dict(t1=1.0) | kwargs
    return flowgap.gradient_flow(PROBLEM.loss, NET, **settings)


def point(scale):
    return scale


LIBRARY = [
    # trainers: learning rates, steps, saves, optimizers, rates
    ("lr zero", lambda: gd(lr=0.0), ValueError, "lr"),
    ("lr negative", lambda: gd(lr=-0.1), ValueError, "lr"),
    ("lr nan", lambda: gd(lr=float("nan")), ValueError, "lr"),
    ("lr string", lambda: gd(lr="fast"), TypeError, "lr"),
    ("steps zero", lambda: gd(steps=0), ValueError, "steps"),
    ("steps float", lambda: gd(steps=2.5), TypeError, "steps"),
    ("save_every not dividing", lambda: gd(save_every=3), ValueError, "save_every"),
    ("optimizer name", lambda: gd(optimizer="adam"), TypeError, "optimizer"),
    ("rates wrong tree", lambda: gd(rates=(1.0, 2.0)), ValueError, "rates"),
    (
        "rates negative",
        lambda: gd(rates=jax.tree.map(lambda x: -1.0, NET)),
        ValueError,
        "rates",
    ),
    ("max_loss zero", lambda: gd(max_loss=0.0), ValueError, "max_loss"),
    ("stop_when not a condition", lambda: gd(stop_when=1e-3), TypeError, "stop_when"),
    ("t1 zero", lambda: gf(t1=0.0), ValueError, "t1"),
    ("t1 negative", lambda: gf(t1=-1.0), ValueError, "t1"),
    ("rtol zero", lambda: gf(rtol=0.0), ValueError, "rtol"),
    ("atol negative", lambda: gf(atol=-1e-9), ValueError, "atol"),
    ("ts out of order", lambda: gf(ts=jnp.array([0.0, 0.5, 0.2])), ValueError, "ts"),
    ("ts beyond t1", lambda: gf(ts=jnp.array([0.0, 2.0])), ValueError, "ts"),
    ("ts negative", lambda: gf(ts=jnp.array([-1.0, 0.5])), ValueError, "ts"),
    ("max_steps zero", lambda: gf(max_steps=0), ValueError, "max_steps"),
    (
        "modified order",
        lambda: dynamics.modified_flow(PROBLEM.loss, NET, lr=0.1, order=3, t1=1.0),
        ValueError,
        "order",
    ),
    ("stop tol", lambda: dynamics.LossBelow(0.0), ValueError, "tol"),
    # models and problems
    ("dim zero", lambda: models.DiagonalNet(0, scale=0.1), ValueError, "dim"),
    (
        "depth one",
        lambda: models.DiagonalNet(6, depth=1, scale=0.1),
        ValueError,
        "depth",
    ),
    ("scale zero", lambda: models.DiagonalNet(6, scale=0.0), ValueError, "scale"),
    (
        "activation unknown",
        lambda: models.TwoLayer(2, 3, 1, activation="swishy", scale=0.1, key=KEY),
        ValueError,
        "activation",
    ),
    (
        "polar split type",
        lambda: models.PolarDiagonalNet(6, scale=0.1, split="yes"),
        TypeError,
        "split",
    ),
    (
        "sparsity above d",
        lambda: problems.sparse_recovery(KEY, n=4, d=6, sparsity=7),
        ValueError,
        "sparsity",
    ),
    (
        "targets rows",
        lambda: problems.RegressionProblem(jnp.ones((4, 3)), jnp.ones((5, 1))),
        ValueError,
        "targets",
    ),
    (
        "inputs integer",
        lambda: problems.RegressionProblem(
            np.ones((4, 3), dtype=np.int32), jnp.ones((4, 1))
        ),
        TypeError,
        "inputs",
    ),
    # analysis and invariants
    (
        "implicit bias scale",
        lambda: analysis.woodworth_limit(PROBLEM.inputs, PROBLEM.targets, 0.0),
        ValueError,
        "scale",
    ),
    (
        "invariant ratio",
        lambda: invariants.known(
            models.PolarDiagonalNet(6, scale=0.1), PROBLEM, ratio=-1.0
        ),
        ValueError,
        "ratio",
    ),
    # sweeps and experiments
    ("grid empty axis", lambda: sweep(point, {"scale": []}), ValueError, "scale"),
    ("grid not a dict", lambda: sweep(point, [1.0]), ValueError, "grid"),
    (
        "chunk_size zero",
        lambda: sweep(point, {"scale": [1.0]}, chunk_size=0),
        ValueError,
        "chunk_size",
    ),
    ("fn not callable", lambda: sweep(3, {"scale": [1.0]}), TypeError, "fn"),
    ("grid log spec", lambda: parse_axis("scale=0:1:3:log"), ValueError, "scale"),
    (
        "experiment unknown",
        lambda: experiments.run("nope", save=False),
        ValueError,
        "nope",
    ),
    (
        "experiment seed",
        lambda: experiments.run("gap", seed=-1, save=False),
        ValueError,
        "seed",
    ),
    (
        "experiment dtype",
        lambda: experiments.run("gap", dtype="float16", save=False),
        ValueError,
        "dtype",
    ),
    (
        "experiment setting",
        lambda: experiments.run("gap", overrides={"t1": "-1"}, save=False),
        ValueError,
        "t1",
    ),
    (
        "experiment unknown setting",
        lambda: experiments.run("gap", overrides={"colour": "1"}, save=False),
        ValueError,
        "colour",
    ),
]


@pytest.mark.parametrize(
    "build, error, name", [c[1:] for c in LIBRARY], ids=[c[0] for c in LIBRARY]
)
def test_library_names_the_argument(build, error, name):
    with pytest.raises(error) as info:
        build()
    assert f"`{name}`" in str(info.value) or f"'{name}'" in str(info.value)


CLI = [
    (["run", "nope"], "nope"),
    (["run", "gap", "--set", "t1=-1"], "t1"),
    (["run", "gap", "--set", "t1"], "key=value"),
    (["run", "gap", "--set", "colour=red"], "colour"),
    (["run", "gap", "--set", "lrs="], "lrs"),
    (["run", "gap", "--seed", "-3"], "--seed"),
    (["run", "gap", "--dtype", "float16"], "--dtype"),
    (["run", "gap", "--set", "t1=1", "--set", "t1=2"], "t1"),
    (["sweep", "step-vs-flow", "--grid", "scale=1e-3:10:0:log"], "NUM"),
    (["sweep", "step-vs-flow", "--grid", "ratio=1,2"], "ratio"),
    (["sweep", "step-vs-flow", "--grid", "lr=1", "--grid", "lr=2"], "lr"),
    (["sweep", "gap", "--grid", "lr=1"], "cannot be swept"),
    (["frobnicate"], "frobnicate"),
]


@pytest.mark.parametrize("args, needle", CLI, ids=[" ".join(a) for a, _ in CLI])
def test_cli_is_one_line_and_exit_2(args, needle, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_debug_shows_the_traceback(capsys):
    assert main(["run", "gap", "--set", "t1=-1", "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_there_are_at_least_thirty_cases():
    assert len(LIBRARY) + len(CLI) >= 30 and len(LIBRARY) >= 30
