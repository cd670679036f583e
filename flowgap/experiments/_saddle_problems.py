r"""The regression problems of saddle-to-saddle: a rank-r linear teacher on
anisotropic inputs, Gaussian (`synthetic`) or the principal components of the
UCI digits (`digits`)."""

import jax
import jax.numpy as jnp
import numpy as np

from .. import models, problems
from ._settings import SettingError

PROBLEMS = ("synthetic", "digits")

# Principal directions of the 8×8 digits past about the 50th carry pixel noise
# and the always-blank border (zero variance): the projection stops at the 48th.
LAST_COMPONENT = 48
_IMAGES = 1797  # scikit-learn's copy of the UCI digits


def check_problem(s) -> None:
    """SettingError naming `d` or `n` when the digits cannot supply them."""
    if s["problem"] != "digits":
        return
    if s["d"] > LAST_COMPONENT:
        raise SettingError(
            f"setting `d` must be at most {LAST_COMPONENT} (principal directions of "
            f"the digits) with problem=digits, got {s['d']}"
        )
    if not LAST_COMPONENT < s["n"] <= _IMAGES:
        raise SettingError(
            f"setting `n` must be from {LAST_COMPONENT + 1} to {_IMAGES} with "
            f"problem=digits (the images, enough to resolve {LAST_COMPONENT} "
            f"principal directions), got {s['n']}"
        )


def saddle_problem(s, key) -> problems.RegressionProblem:
    r"""The problem named by setting `problem`, drawn from `key`.

    - `synthetic`: xᵢ ~ N(0, diag(j^(−decay))), the teacher
      `problems.teacher_student` draws (a linear two-layer net of width
      `teacher_rank`, entries N(0, 1)).
    - `digits`: `n` images of `problems.digits` (drawn with `key`, centred),
      projected on d of their principal directions (`digits_projection`), so
      Σ = XᵀX/n is diagonal with the digits' own eigenvalues, from 1 down to
      about 3·10⁻³: the spectrum of real images across two and a half decades.
      Targets yᵢ = T xᵢ from a rank-r linear teacher T = B₂B₁ (entries N(0, 1),
      r = `teacher_rank`), drawn as in `synthetic`.
    """
    if s["problem"] == "synthetic":
        return problems.teacher_student(
            key,
            n=s["n"],
            d=s["d"],
            teacher_width=s["teacher_rank"],
            out_dim=s["out_dim"],
            activation="linear",
            decay=s["decay"],
        )
    kx, kt = jax.random.split(key)
    images = problems.digits(s["n"], key=kx)
    inputs = digits_projection(np.asarray(images.inputs, np.float64), s["d"])
    inputs = jnp.asarray(inputs, images.inputs.dtype)
    teacher = models.TwoLayer(
        s["d"],
        s["teacher_rank"],
        s["out_dim"],
        activation="linear",
        scale=1.0,
        key=kt,
        dtype=inputs.dtype,
    )
    return problems.RegressionProblem(inputs, jax.vmap(teacher)(inputs), teacher)


def component_ranks(d: int) -> np.ndarray:
    r"""d distinct principal-direction ranks (from 0), spaced geometrically from
    the 1st to the `LAST_COMPONENT`-th: r_j = max_{i≤j}(g_i − i) + j, g the
    rounded geometric grid (the max keeps them distinct where g repeats)."""
    grid = np.round(np.geomspace(1, LAST_COMPONENT, d)).astype(int) - 1
    steps = np.arange(d)
    return np.maximum.accumulate(grid - steps) + steps


def digits_projection(x, d: int) -> np.ndarray:
    r"""The centred rows of `x` on the eigenvectors v_r of XᵀX/n at
    `component_ranks(d)`, scaled by 1/√λ₁ (λ₁ the top eigenvalue): columns
    uncorrelated, with variances λ_r/λ₁ — the top d directions alone would span
    λ_d/λ₁ ≈ 0.3 at d = 8, these span two and a half decades."""
    x = x - x.mean(axis=0)
    _, values, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[component_ranks(d)].T * np.sqrt(x.shape[0]) / values[0]
