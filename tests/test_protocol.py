"""The model protocol (flowgap.models.PROTOCOL): a user's own eqx.Module, which
subclasses nothing of flowgap's, gets flowgap's model features by defining the
same optional methods; and no code outside flowgap.models dispatches on a
flowgap model class."""

import ast
import pathlib

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowgap
from flowgap import dynamics, models, problems
from flowgap import invariants as inv

TIGHT = dict(solver=diffrax.Dopri8(), rtol=1e-12, atol=1e-12)
SINGULAR = np.array([4.0, 1.0, 0.25, 0.1])


def _balance(m):
    return (m.b.T @ m.b - m.a @ m.a.T).ravel()


class Factorised(eqx.Module):
    """A user's model x ↦ B A x, with every hook of the protocol."""

    a: jax.Array
    b: jax.Array

    def __init__(self, d, h, k, *, scale, key):
        ka, kb = jax.random.split(key)
        self.a = scale * jax.random.normal(ka, (h, d))
        self.b = scale * jax.random.normal(kb, (k, h))

    def __call__(self, x):
        return self.b @ (self.a @ x)

    def known_invariants(self, inputs=None, ratio=1.0):
        return {"balancedness": _balance}

    def reparametrisation(self):
        return (self.b @ self.a).ravel()

    def layer_blocks(self):
        return (lambda m: m.a, lambda m: m.b)

    def saddle_units(self):
        return self.a.shape[0], 1.0, (self.b.shape[0], self.a.shape[1])

    def add_unit(self, index, left, right, size):
        s = jnp.sqrt(size)
        model = eqx.tree_at(lambda m: m.a, self, self.a.at[index].set(s * right))
        return eqx.tree_at(lambda m: m.b, model, model.b.at[:, index].set(s * left))


class Bare(eqx.Module):
    """A user's model with none of the hooks."""

    w: jax.Array

    def __call__(self, x):
        return self.w @ x


def test_user_invariants_are_checked_along_a_flow(key):
    problem = problems.low_rank(key, d_in=4, d_out=3, rank=2)
    net = Factorised(4, 5, 3, scale=0.5, key=key)
    laws = inv.known(net)
    assert list(laws) == ["balancedness"]
    flow = flowgap.gradient_flow(
        problem.loss, net, t1=3.0, ts=jnp.linspace(0, 3, 7), **TIGHT
    )
    assert flow.successful and float(flow.loss[-1]) < float(flow.loss[0])
    check = inv.check_conserved(
        laws["balancedness"], problem.loss, net, key=key, trajectory=flow
    )
    assert check.passed, check.worst
    # Dopri8 at 1e-12: the drift is solver error (~1e-11); 1e-8 as for the library.
    assert inv.relative_drift(inv.balancedness, flow) <= 1e-8
    # The library's function evaluates the law the model declares.
    np.testing.assert_array_equal(inv.balancedness(net), _balance(net))
    # Its φ gives the count D − dim Lie(W_φ) = h(h+1)/2 for h = 5, all known.
    count = inv.count_conservation_laws(net, key=key, known=laws)
    assert count.laws == 15 and count.complete


def test_user_layer_blocks_are_resolved(key):
    problem = problems.low_rank(key, d_in=4, d_out=3, rank=2)
    net = Factorised(4, 5, 3, scale=0.5, key=key)
    blocks = models.model_method(net, "layer_blocks")()
    run = dict(lr=0.1, steps=3, save_every=1)
    own = flowgap.gradient_descent(problem.loss, net, layerwise=True, **run)
    given = flowgap.gradient_descent(problem.loss, net, layerwise=blocks, **run)
    assert np.array_equal(own.models.a, given.models.a)
    assert np.array_equal(own.models.b, given.models.b)
    # Step 1 moves only block 0 (A), step 2 only block 1 (B).
    assert not np.array_equal(own.models.a[1], own.models.a[0])
    assert np.array_equal(own.models.b[1], own.models.b[0])
    assert np.array_equal(own.models.a[2], own.models.a[1])
    assert not np.array_equal(own.models.b[2], own.models.b[1])


def _whitened_teacher(key, n=60, d=6, k=4):
    """XᵀX/n = I and y = W*x with singular values `SINGULAR`, as in
    test_saddle_skip: the rank-r saddle loss is ½ Σ_{j>r} s_j²."""
    kx, ku, kv = jax.random.split(key, 3)
    q, _ = jnp.linalg.qr(jax.random.normal(kx, (n, d)))
    x = jnp.sqrt(n) * q
    u, _ = jnp.linalg.qr(jax.random.normal(ku, (k, k)))
    v, _ = jnp.linalg.qr(jax.random.normal(kv, (d, d)))
    truth = u @ jnp.diag(jnp.asarray(SINGULAR)) @ v[:, :k].T
    return problems.RegressionProblem(x, x @ truth.T, truth)


def test_saddle_skip_trains_a_user_model(key):
    problem = _whitened_teacher(key)
    net = Factorised(6, 3, 4, scale=1e-8, key=key)
    run = dict(lr=0.2, jump=1e-2, grad_tol=1e-9)
    user = dynamics.saddle_skip(problem.loss, net, **run)
    assert user.result == dynamics.RESULTS.successful
    exact = [0.5 * float(np.sum(SINGULAR[r:] ** 2)) for r in range(4)]
    # Eckart–Young saddles; stages end at ‖∇L‖ < 1e-9, so O(1e-18) in loss.
    np.testing.assert_allclose(user.stats["saddle_loss"], exact, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(user.stats["saddle_rank"], [0, 1, 2, 3])
    # The same run as flowgap's linear TwoLayer of the same shape: the hooks do
    # the same thing, so only round-off in the forward pass can differ.
    own = models.TwoLayer(6, 3, 4, activation="linear", scale=1e-8, key=key)
    library = dynamics.saddle_skip(problem.loss, own, **run)
    assert int(user.stats["num_grad_evals"]) == int(library.stats["num_grad_evals"])
    np.testing.assert_allclose(
        user.final.b @ user.final.a,
        library.final.w2 @ library.final.w1,
        rtol=0,
        atol=1e-12,
    )


def test_missing_hooks_are_named(key):
    bare = Bare(jnp.ones((4, 6)))
    problem = _whitened_teacher(key)
    with pytest.raises(TypeError, match="`saddle_units"):
        dynamics.saddle_skip(problem.loss, bare, lr=0.1)
    with pytest.raises(ValueError, match="`known_invariants`"):
        inv.known(bare)
    with pytest.raises(ValueError, match="test_protocol.Bare"):
        inv.unit_rescaling(bare)
    with pytest.raises(ValueError, match="`reparametrisation"):
        inv.count_conservation_laws(bare, key=key)
    assert models.model_method(bare, "layer_blocks") is None
    with pytest.raises(ValueError, match="`name`"):
        models.model_method(bare, "end_to_emd")


FLOWGAP = pathlib.Path(flowgap.__file__).parent
MODEL_CLASSES = {
    name
    for name, obj in vars(models).items()
    if isinstance(obj, type) and issubclass(obj, eqx.Module)
}


def _from_models(node: ast.ImportFrom) -> bool:
    module = node.module or ""
    parts = module.split(".")
    return "models" in parts and (node.level > 0 or parts[0] == "flowgap")


def _model_class_checks(path: pathlib.Path, root: pathlib.Path = FLOWGAP) -> list[str]:
    """`isinstance`/`issubclass` calls in `path` whose class argument is a
    flowgap.models class (imported by name, or as `models.X`)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    imported = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and _from_models(node)
        for alias in node.names
        if alias.name in MODEL_CLASSES
    }

    def names_a_model(ref) -> bool:
        if isinstance(ref, ast.Name):
            return ref.id in imported
        if isinstance(ref, ast.Attribute) and ref.attr in MODEL_CLASSES:
            base = ref.value
            return (isinstance(base, ast.Name) and base.id == "models") or (
                isinstance(base, ast.Attribute) and base.attr == "models"
            )
        return False

    found = []
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("isinstance", "issubclass")
            and len(node.args) == 2
        ):
            continue
        refs = node.args[1]
        refs = refs.elts if isinstance(refs, ast.Tuple) else [refs]
        if any(names_a_model(ref) for ref in refs):
            found.append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def test_the_scan_sees_model_class_checks(tmp_path):
    source = tmp_path / "example.py"
    source.write_text(
        "from ..models import TwoLayer as T, DeepLinear\n"
        "from .. import models\n"
        "import equinox as eqx\n"
        "isinstance(m, T)\n"
        "isinstance(m, (int, DeepLinear))\n"
        "isinstance(m, models.MLP)\n"
        "isinstance(m, eqx.nn.MLP)\n"  # not flowgap's
        "isinstance(m, int)\n"
    )
    assert MODEL_CLASSES >= {"TwoLayer", "DeepLinear", "MLP", "DiagonalNet"}
    hits = [h.rsplit(":", 1)[1] for h in _model_class_checks(source, tmp_path)]
    assert hits == ["4", "5", "6"]


def test_no_isinstance_on_model_classes_outside_models():
    offenders = [
        hit
        for path in sorted(FLOWGAP.rglob("*.py"))
        if FLOWGAP / "models" not in path.parents
        for hit in _model_class_checks(path, FLOWGAP.parent)
    ]
    assert offenders == [], offenders
