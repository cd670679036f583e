r"""The model protocol: the optional methods through which flowgap learns about a
model.

flowgap never asks which class a model is. A feature that needs to know something
about the model (its conservation laws, its layers, how to switch on a unit) looks
for one of the methods below on the model's class, through `model_method`. So a
user's own `eqx.Module` that defines a method gets the feature exactly as flowgap's
models do, without subclassing anything. Every method is optional; a feature that
needs a missing one raises an error naming the method.

Below, θ are the model's trainable parameters (its floating-point arrays) and
"`Model` → array" means a function of a model of the same structure, as used by
`flowgap.invariants` (it is differentiated through, so it must be traceable).

**`end_to_end(self) -> Array`.** For a model linear in its input, f(x) = M x (or
⟨β, x⟩): the matrix M (vector β) at θ. Used by the experiments and
`flowgap.analysis` to measure recovery errors ‖M − M*‖ against a problem's
`truth`. flowgap: `DiagonalNet`, `PolarDiagonalNet` (β), `DeepLinear` (W_N⋯W₁).

**`known_invariants(self, inputs=None, ratio=1.0) -> dict[str, Callable]`.** The
model's conservation laws of the gradient flow dθ/dt = −P∇L, by name: each value is
a function Q: `Model` → array with ⟨∇Q(θ), P∇L(θ)⟩ = 0 for every loss L of the
model's output (docs: theory/invariants). Data-dependent ("mirror") laws, which hold
only for losses of X·(something), are included only when `inputs` = X is given;
`ratio` is the rate ratio ρ = η_θ/η_r of models trained at two rates
(`PolarDiagonalNet`; others ignore it). It must not touch array values (it is called
while tracing), and a value must compute its law, not call
`flowgap.invariants.<name>` (which looks the law up here). An empty dict claims
none. Used by `flowgap.invariants.known` (hence
`count_conservation_laws(known=...)`, the invariants experiment) and by
`flowgap.invariants.balancedness`, `unit_rescaling`, `weight_norm_directions`,
`diagonal_balance`, `diagonal_mirror`, `polar_direction_norm` and `polar_mirror`,
which evaluate the law of that name. flowgap: every model; also `eqx.nn.MLP`
(below).

**`reparametrisation(self) -> Array | None`.** φ(θ) for a factorisation
f(θ, x) = f̃(φ(θ), x) of the model through fewer or simpler coordinates, or None
if the model has none. By Marcotte, Gribonval & Peyré (2023) the number of
independent conservation laws valid for every data set and loss is
D − dim Lie(W_φ)(θ) at a generic θ, W_φ = span{∇φᵢ}. Used by
`flowgap.invariants.count_conservation_laws` (its default φ). flowgap:
`DiagonalNet` (β), `DeepLinear` (W_N⋯W₁), a linear `TwoLayer` (W₂W₁), a ReLU or
leaky-ReLU `TwoLayer` (the per-unit rank-one matrices W₂[:, i]W₁[i]).

**`layer_blocks(self) -> tuple[Callable, ...]`.** The layers, as selectors
`Model` → array or pytree of arrays (as for `eqx.tree_at`) that partition the
trainable arrays: block b is θ_b. Used by `flowgap.gradient_descent(...,
layerwise=True)`, which updates only block k mod B at step k. flowgap:
`DeepLinear` (each W_j), `TwoLayer` (W₁, W₂), `MLP` (each layer); also
`eqx.nn.MLP` (each layer).

**`saddle_units(self) -> tuple[int, float, tuple[int, int]]`** and
**`add_unit(self, index, left, right, size) -> Model`.** The hooks of the
plateau-skipping trainer `flowgap.dynamics.saddle_skip` (docs:
theory/saddle-to-saddle).
`saddle_units` returns (m, σ'(0), (k, d)): the model is a sum of m units that
vanish at θ = 0, which is a saddle, and its linearisation there in the units'
weights is x ↦ σ'(0)·A x with A ∈ ℝ^{k×d} bilinear in the units (for a two-layer
net A = W₂W₁). `add_unit` returns the model with unit `index` (zero so far)
switched on along the rank-one direction that adds size·left·rightᵀ to σ'(0)·A
(`left` ∈ ℝᵏ, `right` ∈ ℝᵈ unit vectors, `size` > 0), and unused units left at
zero. flowgap: `TwoLayer` with σ(0) = 0 < σ'(0) (linear, tanh), `DeepLinear` with
a hidden layer.

**`non_smooth(self) -> tuple[str, ...]`.** The names of the model's kinks:
functions in f(θ, x) whose derivative jumps (ReLU, leaky ReLU, |·|, max, hard
tanh, …), so that ∇L jumps wherever a unit's input crosses one and the gradient
flow is non-smooth; () for a model smooth in θ. Used through `non_smooth` (below)
by `flowgap.gradient_flow`, whose defaults for a non-smooth model are
`diffrax.Heun()` at rtol 1e-3, atol 1e-5 (docs: non-smooth), and by its
`SolverError` advice. flowgap: `MLP`, `TwoLayer`. A model without the method is
looked at
generically instead: see `non_smooth`.

**Models flowgap cannot edit.** `eqx.nn.MLP` gets `known_invariants` (the
per-unit rescaling laws ‖incoming‖² − ‖outgoing‖² when its hidden activation is
positively homogeneous) and `layer_blocks` from an adapter registered here; the
adapter is used only when the class itself defines no such method. Its kinks
(an `activation` or `final_activation` such as `jax.nn.relu`) are found by
`non_smooth`'s look at function-valued fields, as any module's are.
"""

import dataclasses
import functools
from collections.abc import Callable

import equinox as eqx

from ._activations import kink_name
from ._equinox import EQX_MLP_METHODS

#: The protocol's method names, with what each gives.
PROTOCOL = {
    "end_to_end": "the linear map M of a model f(x) = Mx",
    "known_invariants": "the conservation laws of the flow, by name",
    "reparametrisation": "φ(θ) with f(θ, x) = f̃(φ(θ), x), or None",
    "layer_blocks": "selectors of the layers, for layer-wise descent",
    "saddle_units": "(units, σ'(0), (k, d)) for saddle_skip",
    "add_unit": "a unit switched on along a rank-one direction, for saddle_skip",
    "non_smooth": "the names of the model's kinks (relu, abs, …), () if smooth",
}

_ADAPTERS = {eqx.nn.MLP: EQX_MLP_METHODS}


def model_method(model, name: str) -> Callable | None:
    """The protocol method `name` of `model`, bound to it, or None if the model's
    class does not define it (and no adapter does; see the module docstring).

    The method is looked up on the class, not the instance, so a field that happens
    to share the name is never mistaken for it.
    """
    if name not in PROTOCOL:
        raise ValueError(
            f"`name` must be one of the model protocol's methods "
            f"({', '.join(PROTOCOL)}), got {name!r}."
        )
    if callable(getattr(type(model), name, None)):
        return getattr(model, name)
    for cls in type(model).__mro__:
        adapted = _ADAPTERS.get(cls, {}).get(name)
        if adapted is not None:
            return functools.partial(adapted, model)
    return None


def _fields(node) -> list:
    """The values inside one node of a model: a module's fields (static ones
    included), a sequence's items, a dict's values."""
    if isinstance(node, eqx.Module):
        return [getattr(node, f.name, None) for f in dataclasses.fields(node)]
    if isinstance(node, list | tuple):
        return list(node)
    if isinstance(node, dict):
        return list(node.values())
    return []


def non_smooth(model) -> tuple[str, ...]:
    """The names of `model`'s kinks, in order of first appearance; () if none
    are known.

    The model's own `non_smooth()` method when its class defines one (the
    model protocol; it may also declare a model smooth, returning ()). Otherwise
    a look at every function-valued field of the model and of the modules,
    tuples, lists and dicts inside it, static fields included, for a function
    with a kink, by identity (`jax.nn.relu`, `jax.nn.leaky_relu`, `jnp.abs`,
    `jax.nn.hard_tanh`, `lax.max`, … or a `functools.partial` of one): this finds
    an `eqx.nn.MLP`'s `activation`, an `eqx.nn.Lambda(jax.nn.relu)` or an
    `eqx.nn.MaxPool2d`. A kink applied in `__call__` and held in no field is not
    seen; declare it with the method.

    A kink makes ∇L jump where a unit's input changes sign, and the flow may then
    slide along such a boundary, where an adaptive high-order solver shrinks its
    step to the tolerance; `flowgap.gradient_flow` picks other defaults for such
    a model (docs: non-smooth).
    """
    method = model_method(model, "non_smooth")
    if method is not None:
        return tuple(method())
    found, seen, stack = [], {}, [model]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen[id(node)] = node  # held, so its id is not reused during the walk
        name = None if isinstance(node, eqx.Module) else kink_name(node)
        if name is not None and name not in found:
            found.append(name)
        stack.extend(reversed(_fields(node)))
    return tuple(found)


def class_path(model) -> str:
    """The full module path of `model`'s class, for error messages."""
    cls = type(model)
    return f"{cls.__module__}.{cls.__qualname__}"
