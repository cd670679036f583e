from jaxtyping import Array, Float

from ._layers import _declared


def polar_direction_norm(model) -> Float[Array, "*radii"]:
    r"""‖θ‖² of the stored direction (per block when `split`).

    The network uses θ/‖θ‖, so L(aθ) = L(θ) (a scale symmetry) and ∇_θL ⊥ θ: the
    flow conserves ‖θ‖² (= 1 from the initialisation); Salimans–Kingma gradient
    steps grow it by η²ρ²‖∇_θL‖² each.
    """
    return _declared(model, "polar_direction_norm", "a PolarDiagonalNet")


def polar_mirror(
    model, inputs: Float[Array, "n dim"], ratio=1.0
) -> Float[Array, " 2*dim"]:
    r"""Mirror law of the polar diagonal network trained at rate ratio ρ = η_θ/η_r
    (`rates=model.rates(ρ)`), docs: theory/invariants.

    With X̃ = [X, −X] and P the projector onto null(X̃), on the unit sphere:

    - depth 2: Q = P(ln θ + (ρ/2) r² 1);
    - depth L ≥ 3: Q = P(exp(−(L−2)(ρ/2) r²) θ^{⊙(2−L)}).

    Derivation (depth L): with z = X̃ᵀ(residual)/n and c = Σθᵢᴸzᵢ, the flow is
    dr/dt = −L r^{L−1} c and dθ/dt = −ρL rᴸ(θ^{L−1}⊙z − cθ); then dQ/dt is a
    multiple of z ∈ range(X̃ᵀ), which P kills.

    The stored θ may be off the unit sphere (the flow conserves ‖θ‖, and
    Salimans–Kingma steps grow it); the network uses θ̂ = θ/‖θ‖, which then moves at
    the effective ratio ρ/‖θ‖². Q is written in θ̂ with that ratio, so it is
    conserved by the flow from any start. Not defined for `split=True`.
    Evaluates the law the model declares (`known_invariants(inputs, ratio)`).
    """
    return _declared(
        model,
        "polar_mirror",
        "a PolarDiagonalNet with split=False",
        inputs=inputs,
        ratio=ratio,
    )
