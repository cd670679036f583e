r"""wn-hessian's Lanczos estimates, all in one compiled program: the tasks
(`_Tasks`), what a group of widths measures (`Plan`) and the program that runs
every estimate on the padded networks (`spectra_program`).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from .._lanczos import default_tol, lanczos_top
from ._wn_hessian_measure import BLOCKS
from ._wn_hessian_padding import padded_hvp, padded_networks

#: The Lanczos program's options: its run time is in loops over long vectors
#: (the reorthogonalisation), which LLVM's first level of passes speeds up five
#: times (quick: compile 1.8 s → 4.3 s, run 11.4 s → 2.2 s CPU; the second level
#: adds 1.7 s of compiling and saves 0.2 s).
_SPECTRA_OPTIONS = {
    "xla_backend_optimization_level": 1,
    "xla_cpu_use_fusion_emitters": False,
}


def _norm_runs(hvps, thetas, masks, starts, xs, tasks, steps, tol):
    """‖M∇²f(x)M‖₂ for each task (kind, model, mask, start, point), as
    `flowgap.analysis.predictor_hessian_norm` with `mask`: Lanczos ("magnitude")
    on v ↦ M·H(Mv) from M·start. One Lanczos loop for all tasks (`lax.map`)."""

    def one(task):
        kind, model, mask, start, point = (task[i] for i in range(5))
        weight, theta, x = masks[mask], thetas[model], xs[point]

        def matvec(v):
            return weight * jax.lax.switch(kind, hvps, theta, x, weight * v)

        values, _, _ = lanczos_top(
            matvec, weight * starts[start], steps, k=1, tol=tol, which="magnitude"
        )
        return jnp.abs(values[0])

    return jax.lax.map(one, tasks)


def _sharpness_runs(hvps, thetas, masks, starts, x, tasks, steps, tol):
    """λ_max(M∇²L M) for each task (kind, model, mask, start, warm), in turn: as
    `flowgap.analysis.sharpness` from the start vector, or, where `warm`, as
    `flowgap.analysis.track_sharpness` from the previous task's top eigenvector
    (kept, and NaN given, at a non-finite save or value)."""

    def body(previous, task):
        kind, model, mask, start, warm = (task[i] for i in range(5))
        weight, theta = masks[mask], thetas[model]
        v = jnp.where(warm > 0, previous, weight * starts[start])

        def matvec(u):
            return weight * jax.lax.switch(kind, hvps, theta, x, weight * u)

        def run():
            values, vectors, _ = lanczos_top(matvec, v, steps, k=1, tol=tol)
            return values[0], vectors[:, 0]

        def skip():
            return jnp.full((), jnp.nan, v.dtype), v

        value, vector = jax.lax.cond(jnp.all(jnp.isfinite(theta)), run, skip)
        finite = jnp.isfinite(value)
        return jnp.where(finite, vector, v), jnp.where(finite, value, jnp.nan)

    return jax.lax.scan(body, jnp.zeros_like(thetas[0]), tasks)[1]


class _Tasks:
    """Lanczos tasks (rows of five integers)."""

    def __init__(self):
        self.rows = []

    def add(self, *columns) -> np.ndarray:
        """A task for every combination of `columns` (integers, or 1-D arrays of
        them); the tasks' numbers, one axis per array column."""
        columns = [np.asarray(c) for c in columns]
        axes = [c for c in columns if c.ndim]
        shape = tuple(len(c) for c in axes)
        mesh = iter(np.meshgrid(*axes, indexing="ij"))
        full = [next(mesh) if c.ndim else np.full(shape, c) for c in columns]
        first = len(self.rows)
        self.rows.extend(np.stack(full, -1).reshape(-1, len(columns)).tolist())
        return np.asarray(first + np.arange(len(self.rows) - first).reshape(shape))

    def array(self) -> np.ndarray:
        return np.asarray(self.rows, np.int32).reshape(-1, 5)


class Plan:
    """What a group measures, from its static settings alone: the rows of its
    tables of flat parameters (`_draw_group`'s order: the width study's plain
    nets then WN nets, (widths, draws); the probe's rescaled WN nets; for each GD
    width, the plain run's saves then the WN run's), masks (for each real width:
    plain, WN, then the WN blocks of `BLOCKS`) and start vectors (for each real
    width: plain, WN); its Lanczos tasks; and where each answer lies."""

    def __init__(self, widths, draws, probe_width, factors, gd_widths, saves, points):
        self.real = sorted({*widths, *gd_widths} | ({probe_width} - {None}))
        per = 2 + len(BLOCKS)
        mask = {w: (per * i, per * i + 1) for i, w in enumerate(self.real)}
        block = {
            w: {b: per * i + 2 + j for j, b in enumerate(BLOCKS)}
            for i, w in enumerate(self.real)
        }
        start = {w: (2 * i, 2 * i + 1) for i, w in enumerate(self.real)}
        self.norms, self.sharps = _Tasks(), _Tasks()
        points = np.arange(points)
        rows = 0
        if widths:
            shape = (len(widths), draws)
            ids = [
                np.arange(n, n + draws * len(widths)).reshape(shape)
                for n in (0, shape[0] * draws)
            ]
            rows = 2 * len(widths) * draws
            names = ("wn", "wn_v", "wn_inner")
            tasks = [
                dict(
                    plain=self.norms.add(0, ids[0][i], mask[w][0], start[w][0], points),
                    blocks=self.norms.add(
                        1, ids[1][i], [block[w][b] for b in names], start[w][1], points
                    ),
                    sharpness_plain=self.sharps.add(
                        0, ids[0][i], mask[w][0], start[w][0], 0
                    ),
                    sharpness_wn=self.sharps.add(
                        1, ids[1][i], mask[w][1], start[w][1], 0
                    ),
                )
                for i, w in enumerate(widths)
            ]
            self.width = {q: np.stack([t[q] for t in tasks]) for q in tasks[0]}
        if probe_width is not None:
            w = probe_width
            ids = np.arange(rows, rows + factors)
            rows += factors
            self.probe = self.norms.add(
                1, ids, list(block[w].values()), start[w][1], points
            )
        self.gd = {}
        for i, w in enumerate(gd_widths):
            for kind, name in enumerate(("plain", "WN")):
                ids = np.arange(rows, rows + saves)
                rows += saves
                self.gd[name, i] = (
                    self.norms.add(kind, ids, mask[w][kind], start[w][kind], 0),
                    np.array(
                        [
                            self.sharps.add(
                                kind, row, mask[w][kind], start[w][kind], j > 0
                            )
                            for j, row in enumerate(ids)
                        ]
                    ),
                )

        self.rows = rows

    def masks(self, layouts, dim: int) -> np.ndarray:
        rows = []
        for w in self.real:
            plain, wn = layouts[w]
            rows += [plain.ones, wn.ones, *wn.blocks]
        return np.stack([np.pad(r, (0, dim - r.size)) for r in rows])


@functools.partial(
    jax.jit,
    static_argnames=("activation", "depth", "size", "iters"),
    compiler_options=_SPECTRA_OPTIONS,
)
def spectra_program(
    thetas, masks, starts, problem, xs, norms, sharps, *, activation, depth, size, iters
):
    """The Lanczos estimates of `measure_group`: ‖M∇²f(x)M‖₂ for each task of
    `norms` and λ_max(M∇²L M) for each of `sharps` (see `_norm_runs`,
    `_sharpness_runs`), on the padded networks' flat parameters `thetas`."""
    d, k = problem.inputs.shape[1], problem.targets.shape[1]
    padded = padded_networks(activation, depth, size, d, k)
    dim = thetas.shape[1]
    tol = jnp.asarray(default_tol(thetas.dtype), thetas.dtype)
    steps = min(iters, dim)
    norm = sharp = jnp.zeros((0,), thetas.dtype)
    if len(norms):
        hvps = [
            padded_hvp(rebuild, n, dim, lambda f, x: jnp.reshape(f(x), ()))
            for rebuild, n in padded
        ]
        norm = _norm_runs(hvps, thetas, masks, starts, xs, norms, steps, tol)
    if len(sharps):
        hvps = [
            padded_hvp(rebuild, n, dim, lambda f, x: problem.loss(f.net))
            for rebuild, n in padded
        ]
        sharp = _sharpness_runs(hvps, thetas, masks, starts, xs[0], sharps, steps, tol)
    return norm, sharp
