r"""sgd-vs-sde: SGD against its stochastic modified equations, exactly and in law.

Three parts, on SGD's clock t = kη (docs: theory/sgd):

(a) **Exact moments.** On linear regression the first two moments of SGD and of
its order-1 and order-2 SDEs are exact (`flowgap.analysis.sgd_moments`,
`sde_moments`). Over a ladder of learning rates at a fixed horizon T: the
relative covariance error at T of gradient flow (no noise: error 1) and of both
SDEs, and their weak error in E L(θ_T), with fitted exponents; a Monte Carlo
check of both covariances (`stochastic_descent`, `stochastic_flow`) at one η.

(b) **Implicit bias on a diagonal network.** Sparse regression (n < d) with a
depth-2 `DiagonalNet` from u = v = α: GD, SGD, label-noise GD (then plain GD to
interpolation) and the order-1 SDE. Each step multiplies u⊙v by 1 − 4η²g²
(g = ∇_β of the step's loss), so α_eff = √(u_∞⊙v_∞) is computed along the run
and checked against the end point; SGD's and label-noise GD's α_eff are smaller
than GD's, and their limits sparser. The limits are compared with the Woodworth
minimiser at the per-coordinate scale α_eff, which holds up to O(η³g³) terms.

(c) **A tanh MLP on the UCI digits.** SGD and both SDEs over many keys: the loss
curves' mean and spread, and the final-loss distributions (two-sample KS test).

`flowgap sweep sgd-vs-sde --grid batch_size=... --grid lr=...` sweeps part (a)'s
exact comparison over batch size × learning rate × seeds (one compiled program).
"""

import jax
from tqdm.auto import tqdm

from . import _sgd_vs_sde_diagonal as diagonal
from . import _sgd_vs_sde_mlp as mlp
from . import _sgd_vs_sde_moments as moments
from ._settings import Setting, SettingError
from ._sgd_vs_sde_report import SgdVsSdeResult
from ._sweepable import Sweepable

NAME = "sgd-vs-sde"

_MOMENTS = (
    Setting("n", 16, "(a) regression examples", "int", minimum=2),
    Setting("d", 4, "(a) regression dimension", "int", minimum=1),
    Setting("noise", 0.5, "(a) target noise: y = Xβ* + noise·N(0, 1)", positive=True),
    Setting("batch_size", 4, "(a) SGD batch size (with replacement)", "int", minimum=1),
    Setting("horizon", 1.0, "(a) horizon T (time t = kη)", positive=True),
    Setting("lr", 0.1, "(a) largest η of the ladder η = lr/2^j", positive=True),
    Setting("rungs", 5, "(a) learning rates in the ladder", "int", minimum=3),
    Setting("mc_lr", 0.05, "(a) η of the Monte Carlo check", positive=True),
    Setting("paths", 2000, "(a) Monte Carlo runs per method", "int", minimum=2),
    Setting(
        "sweep_batch_sizes",
        (1.0, 2.0, 4.0, 8.0, 16.0),
        "(sweep) the batch sizes a sweep may use (one branch each)",
        "floats",
        positive=True,
    ),
    Setting(
        "sweep_max_steps", 1000, "(sweep) most SGD steps, horizon/lr", "int", minimum=1
    ),
)

_DIAGONAL = (
    Setting("diag_n", 20, "(b) measurements (rows of X)", "int", minimum=1),
    Setting("diag_d", 40, "(b) dimension of β", "int", minimum=1),
    Setting("diag_sparsity", 3, "(b) non-zeros of β*", "int", minimum=1),
    Setting("diag_scale", 0.2, "(b) init scale α (u = v = α)", positive=True),
    Setting("diag_lr", 0.04, "(b) learning rate η of every run", positive=True),
    Setting("diag_batch_size", 1, "(b) SGD batch size", "int", minimum=1),
    Setting(
        "diag_steps", 5000, "(b) steps of GD and SGD (T = steps·η)", "int", minimum=1
    ),
    Setting("diag_keys", 4, "(b) keys of SGD, label-noise GD, SDE", "int", minimum=1),
    Setting("label_noise", 1.0, "(b) label noise δ", positive=True),
    Setting(
        "label_noise_steps",
        5000,
        "(b) label-noise steps before diag_steps of plain GD",
        "int",
        minimum=1,
    ),
    Setting(
        "diag_rungs",
        3,
        "(b) learning rates η/2^j of the Woodworth check",
        "int",
        minimum=3,
    ),
    Setting("diag_saves", 200, "(b) saves of the SDE's loss", "int", minimum=1),
)

_MLP = (
    Setting("mlp_n", 256, "(c) digits examples", "int", minimum=2),
    Setting("mlp_classes", 10, "(c) digit classes (2 to 10)", "int", minimum=2),
    Setting("mlp_width", 16, "(c) hidden width of the tanh MLP", "int", minimum=1),
    Setting("mlp_lr", 0.1, "(c) learning rate η", positive=True),
    Setting("mlp_batch_size", 8, "(c) SGD batch size", "int", minimum=1),
    Setting("mlp_steps", 200, "(c) SGD steps (T = steps·η)", "int", minimum=1),
    Setting("mlp_keys", 32, "(c) keys per method", "int", minimum=2),
    Setting(
        "mlp_subset",
        0,
        "(c) rows estimating the SDE's noise per window (0: all)",
        "int",
        minimum=0,
    ),
    Setting("mlp_saves", 50, "(c) saves of the loss curves", "int", minimum=1),
    Setting(
        "sde_dt",
        0.1,
        "(a, b, c) Euler–Maruyama step dt0 of the SDE paths, as a fraction of η",
        positive=True,
    ),
)

SETTINGS = _MOMENTS + _DIAGONAL + _MLP

QUICK = dict(
    paths=400,
    diag_steps=2500,
    diag_keys=2,
    label_noise_steps=2500,
    diag_saves=100,
    mlp_n=64,
    mlp_width=8,
    mlp_steps=80,
    mlp_keys=16,
    mlp_saves=20,
    sde_dt=0.25,
)


def _check(s) -> None:
    """Settings that must agree with each other."""
    pairs = (
        ("batch_size", "n"),
        ("diag_batch_size", "diag_n"),
        ("diag_sparsity", "diag_d"),
        ("mlp_batch_size", "mlp_n"),
        ("mlp_saves", "mlp_steps"),
    )
    for small, large in pairs:
        if s[small] > s[large]:
            raise SettingError(f"setting `{small}` must be at most `{large}`")
    if s["mlp_subset"] and not 2 <= s["mlp_subset"] < s["mlp_n"]:
        raise SettingError("setting `mlp_subset` must be 0 or in 2..mlp_n − 1")
    if s["mlp_classes"] > 10:
        raise SettingError("setting `mlp_classes` must be from 2 to 10")
    if s["sde_dt"] > 1:
        raise SettingError("setting `sde_dt` must be at most 1 (dt0 ≤ η)")
    lrs = [s["lr"] / 2**j for j in range(s["rungs"])] + [s["mc_lr"]]
    for lr in lrs:
        try:
            moments.steps_for(s["horizon"], lr)
        except ValueError as err:
            raise SettingError(f"settings `horizon`, `lr`, `mc_lr`: {err}") from None


#: the study's parts, in order: each `measure(settings, key) -> (rows, fits, curves)`
PARTS = dict(moments=moments.measure, diagonal=diagonal.measure, mlp=mlp.measure)


def part_keys(seed: int) -> dict:
    """The key of each part (independent of the others, so a part can be rerun
    alone with the numbers of the full run)."""
    return dict(zip(PARTS, jax.random.split(jax.random.key(seed), len(PARTS))))


def run(settings, *, seed: int, progress: bool = True) -> SgdVsSdeResult:
    """Run sgd-vs-sde with resolved `settings` (see `SETTINGS`)."""
    _check(settings)
    keys = part_keys(seed)
    rows, fits, curves = [], {}, {}
    for name in tqdm(PARTS, desc=NAME, disable=not progress, leave=False):
        part_rows, part_fits, part_curves = PARTS[name](settings, keys[name])
        rows += part_rows
        fits.update(part_fits)
        curves.update(part_curves)
    return SgdVsSdeResult(settings=settings, rows=rows, fits=fits, curves=curves)


SWEEP = Sweepable(axes=("batch_size", "lr"), point=moments.point, metric="cov_error")
