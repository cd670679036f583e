"""Saddle-to-saddle stages of a loss curve, the rank of each saddle, and the
alignment of hidden units during a plateau (docs: theory/saddle-to-saddle)."""

import dataclasses

import numpy as np

from .._precision import tolerance_floor

# In float64 the cut is 1e-10 · L(0), set by a flow's `atol`; a coarser loss
# curve is resolved to about (100·ε)² · L(0) only (100·ε is the relative accuracy
# a flow there is solved to, and the loss is a mean square of residuals), and
# below ten times that its wiggles would count as stages.
_FLOOR_64 = 1e-10
_FLOOR_ULPS_SQUARED = 10


@dataclasses.dataclass(frozen=True)
class Stage:
    """One loss-decrease stage: from the plateau before it to the one after.

    `start`, `end`: times where the fast decrease begins and ends;
    `loss_before`, `loss_after`: the loss at those times;
    `rank_after`: the numerical rank of the end-to-end map at `end` (None if no
    maps were given).
    """

    start: float
    end: float
    loss_before: float
    loss_after: float
    rank_after: int | None


def detect_stages(
    ts, loss, *, maps=None, flat=0.05, min_drop=0.1, rank_tol=1e-2, floor=None
) -> list[Stage]:
    r"""Split a loss curve into plateaus and loss-decrease stages.

    With ℓ = ln L on the saves, its lower envelope m_i = min_{j ≤ i} ℓ_j and the
    envelope's rate r_i = −(m_{i+1} − m_i)/(t_{i+1} − t_i) ≥ 0, a save interval is
    *moving* when r_i > `flat` · max_j r_j and *on a plateau* otherwise. A stage
    is a maximal run of moving intervals whose total decrease m(start) − m(end)
    exceeds `min_drop` nats (shorter runs are noise). The envelope ignores a loss
    spike (e.g. a GD catapult): its recovery reaches no new low, so it neither
    counts as a stage nor sets the rate scale. The stretches between stages are
    the plateaus. The threshold is relative, so the split does not depend on the
    loss's or the clock's units. A final exponential convergence (ℓ falling at a
    constant rate) is part of the last stage.

    `maps`: optional end-to-end maps at the saves (leading axis = saves); the
    rank after each stage counts singular values above `rank_tol` times the
    largest one. The curve is cut where L first falls below `floor` · L(0): below
    that a flow's loss is solver noise (its `atol`), not dynamics. By default
    `floor` is 1e-10, raised for a loss coarser than float64 to 10·(100·ε)²
    (1.4e-9 in float32), where its round-off starts.

    **Returns:** the stages, in time order.
    """
    if floor is None:
        resolution = tolerance_floor(np.result_type(np.asarray(loss).dtype, "f4"))
        floor = max(_FLOOR_64, _FLOOR_ULPS_SQUARED * resolution**2)
    ts = np.asarray(ts, dtype=float)
    loss = np.asarray(loss, dtype=float)
    if ts.ndim != 1 or ts.shape != loss.shape or ts.size < 3:
        raise ValueError("`ts` and `loss` must be 1-D of the same length ≥ 3.")
    if not (0 < flat < 1):
        raise ValueError(f"`flat` must be in (0, 1), got {flat}.")
    keep = np.isfinite(loss) & (loss > 0)
    ts, loss = ts[keep], loss[keep]
    if maps is not None:
        maps = np.asarray(maps)[keep]
    low = np.flatnonzero(loss < floor * loss[0])
    if low.size:
        ts, loss = ts[: low[0] + 1], loss[: low[0] + 1]
    envelope = np.minimum.accumulate(np.log(loss))
    rate = -np.diff(envelope) / np.maximum(np.diff(ts), np.finfo(float).tiny)
    moving = rate > flat * np.max(rate)
    stages = []
    for first, last in _runs(moving):
        drop = envelope[first] - envelope[last + 1]
        if drop > min_drop:
            end = last + 1
            rank = None if maps is None else numerical_rank(maps[end], rank_tol)
            stages.append(
                Stage(
                    float(ts[first]),
                    float(ts[end]),
                    float(loss[first]),
                    float(loss[end]),
                    rank,
                )
            )
    return stages


def _runs(mask: np.ndarray):
    """(first, last) index pairs of the maximal runs of True in `mask`."""
    edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
    return zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1)


def numerical_rank(matrix, tol: float = 1e-2) -> int:
    """Singular values above `tol` × the largest (0 for the zero matrix)."""
    values = np.linalg.svd(np.asarray(matrix, dtype=float), compute_uv=False)
    if values.size == 0 or values[0] == 0:
        return 0
    return int(np.sum(values > tol * values[0]))


def alignment_ratio(w1, w2, coefficient) -> np.ndarray:
    r"""Per hidden unit i, ‖(I − P₁)wᵢ‖ / ‖P₁wᵢ‖ (docs: theory/saddle-to-saddle).

    Unit i is wᵢ = (row i of W₁, column i of W₂) ∈ ℝ^{d+k}. Near a saddle the
    units follow ẇ = [[0, Cᵀ], [C, 0]] w with C (k × d) the coefficient matrix
    −∂L/∂(W₂W₁) there; its top eigenvector is e = (v₁; u₁)/√2 for the top singular
    pair (u₁, σ₁, v₁) of C, and P₁ = eeᵀ. During a plateau every unit turns to e,
    and the ratio decays like e^{−(σ₁ − σ₂)t}.

    **Returns:** the ratio for each unit (inf for a unit orthogonal to e).
    """
    w1, w2 = np.asarray(w1, dtype=float), np.asarray(w2, dtype=float)
    u, _, vt = np.linalg.svd(np.asarray(coefficient, dtype=float))
    e = np.concatenate([vt[0], u[:, 0]]) / np.sqrt(2)
    units = np.concatenate([w1, w2.T], axis=1)  # (width, d + k)
    along = units @ e
    across = np.linalg.norm(units - np.outer(along, e), axis=1)
    with np.errstate(divide="ignore"):
        return across / np.abs(along)
