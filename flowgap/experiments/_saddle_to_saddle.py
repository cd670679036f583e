r"""saddle-to-saddle: small-init two-layer nets learn in stages, one rank at a time.

A two-layer net f(x) = W₂σ(W₁x) (σ linear or tanh) from N(0, α²) entries fits a
rank-3 linear teacher on anisotropic Gaussian inputs by GD and by the exact flow
(docs: theory/saddle-to-saddle). The loss is a staircase: each plateau sits at a saddle
whose
end-to-end map has rank k, and each stage adds one rank. Stages are detected
automatically (`analysis.detect_stages`) on both clocks, at two init scales.

Finite steps slow each plateau down: near a saddle the units grow like
(1 + ησ_k)^k per GD step against e^{σ_k t} in continuous time, so the time to
escape grows with δ = −ln α at rate η/ln(1 + ησ_k) for GD against 1/σ_k for the
flow. The ratio of the two slopes, measured from the two init scales (the O(1)
parts cancel in the difference), is compared with ησ_k/ln(1 + ησ_k), σ_k the k-th
singular value of the coefficient matrix C = (1/n)YᵀX at the origin.
Layer-wise GD on a three-layer linear net shows the same plateaus with every layer
close to rank 1 during the first.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from .. import analysis, dynamics, models, problems
from ._settings import Setting, SettingError

NAME = "saddle-to-saddle"

SETTINGS = (
    Setting("n", 200, "samples", "int", minimum=1),
    Setting("d", 8, "input dimension", "int", minimum=2),
    Setting("out_dim", 4, "output dimension", "int", minimum=1),
    Setting(
        "teacher_rank", 3, "width (= rank) of the linear teacher", "int", minimum=1
    ),
    Setting("width", 8, "student width", "int", minimum=1),
    Setting("decay", 1.0, "input spectrum λ_j = j^(−decay)", positive=True),
    Setting("scales", (1e-6, 1e-12), "two init scales α", "floats", positive=True),
    Setting("lr", 0.1, "GD learning rate η", positive=True),
    Setting("t1", 200.0, "horizon (time units t = kη)", positive=True),
    Setting(
        "layerwise_steps", 6000, "steps of layer-wise GD (3-layer)", "int", minimum=1
    ),
    Setting("layerwise_scale", 0.01, "init scale of the 3-layer net", positive=True),
)

QUICK = dict(scales=(1e-4, 1e-8), t1=100.0, layerwise_steps=3000)

ACTIVATIONS = ("linear", "tanh")


def _check(s):
    if len(s["scales"]) != 2 or s["scales"][0] <= s["scales"][1]:
        raise SettingError(
            "setting `scales` must be two init scales, the larger first, got "
            f"{s['scales']}"
        )
    steps = s["t1"] / s["lr"]
    if abs(steps - round(steps)) > 1e-9 * steps:
        raise SettingError(
            f"setting `t1` must be a whole number of steps of lr = {s['lr']}"
        )
    return int(round(steps))


def _runs(problem, s, steps, progress):
    """GD (every step saved) and GF (at GD's times) per activation and scale."""
    out = {}
    jobs = [(a, scale) for a in ACTIVATIONS for scale in s["scales"]]
    for activation, scale in tqdm(jobs, desc="saddle-to-saddle", disable=not progress):
        net = models.TwoLayer(
            s["d"],
            s["width"],
            s["out_dim"],
            activation=activation,
            scale=scale,
            key=jax.random.key(1),
        )
        gd = dynamics.gradient_descent(problem.loss, net, lr=s["lr"], steps=steps)
        gf = dynamics.gradient_flow(
            problem.loss,
            net,
            t1=s["t1"],
            ts=gd.ts,
            rtol=1e-10,
            atol=1e-12,
            max_steps=1_000_000,
        )
        out[activation, scale] = {"gd": gd, "gf": gf}
    return out


def _end_to_end(traj):
    """W₂W₁ at every save (for tanh: the linearisation at 0, as tanh'(0) = 1)."""
    return np.asarray(jnp.einsum("tkm,tmd->tkd", traj.models.w2, traj.models.w1))


def _slowdown(stages, sigma, lr, scales):
    """Per stage k: slopes of the stage start against δ = −ln α on both clocks, their
    ratio, and the prediction ησ_k/ln(1 + ησ_k)."""
    delta = np.log(scales[0]) - np.log(scales[1])
    fits = []
    for k in range(min(len(stages["gd", 0]), len(stages["gd", 1]), len(sigma))):
        slope = {
            c: (stages[c, 1][k].start - stages[c, 0][k].start) / delta
            for c in ("gd", "gf")
        }
        predicted = lr * sigma[k] / np.log1p(lr * sigma[k])
        # starts are known to one save spacing (η) each: slope error ≤ 2η/Δδ
        bound = 2 * lr / delta
        tolerance = predicted * bound * (1 / slope["gd"] + 1 / slope["gf"])
        fits.append(
            dict(
                stage=k + 1,
                sigma=float(sigma[k]),
                gf_slope=float(slope["gf"]),
                gd_slope=float(slope["gd"]),
                inverse_sigma=float(1 / sigma[k]),
                measured_ratio=float(slope["gd"] / slope["gf"]),
                predicted_ratio=float(predicted),
                tolerance=float(tolerance),
            )
        )
    return fits


def _alignment(traj, coefficient):
    """Median over units of the alignment ratio at every save."""
    w1, w2 = np.asarray(traj.models.w1), np.asarray(traj.models.w2)
    return np.array(
        [np.median(analysis.alignment_ratio(a, b, coefficient)) for a, b in zip(w1, w2)]
    )


def _layerwise(problem, s):
    """Layer-wise GD on W₃W₂W₁ (docs: theory/saddle-to-saddle): loss and σ₂/σ₁ of each
    layer."""
    dims = (s["d"], s["width"], s["width"], s["out_dim"])
    net = models.DeepLinear(dims, scale=s["layerwise_scale"], key=jax.random.key(2))
    traj = dynamics.gradient_descent(
        problem.loss, net, lr=s["lr"], steps=s["layerwise_steps"], layerwise=True
    )
    ratios = []
    for weights in traj.models.weights:
        values = np.linalg.svd(np.asarray(weights), compute_uv=False)
        ratios.append(values[:, 1] / values[:, 0])
    return traj, np.stack(ratios, axis=1)


def _product(weights) -> np.ndarray:
    """W_N ⋯ W₁ at every save (weights with a leading save axis)."""
    product = np.asarray(weights[0])
    for w in weights[1:]:
        product = np.asarray(w) @ product
    return product


def _plateau_ratio(stages, ts, ratios):
    """Median over the plateau after the first stage (to the next stage or the
    end) of the largest σ₂/σ₁ among the layers: ≪ 1 when every layer is near
    rank 1. None if there is no first stage."""
    if not stages:
        return None
    stop = stages[1].start if len(stages) > 1 else ts[-1]
    inside = (ts >= stages[0].end) & (ts <= stop)
    return float(np.median(ratios[inside].max(axis=1))) if inside.any() else None


def run(settings: dict, *, seed: int, progress: bool = True):
    s = settings
    steps = _check(s)
    problem = problems.teacher_student(
        jax.random.key(seed),
        n=s["n"],
        d=s["d"],
        teacher_width=s["teacher_rank"],
        out_dim=s["out_dim"],
        activation="linear",
        decay=s["decay"],
    )
    coefficient = np.asarray(problem.targets.T @ problem.inputs / s["n"])
    sigma = np.linalg.svd(coefficient, compute_uv=False)
    runs = _runs(problem, s, steps, progress)
    rows, stages, curves = [], {}, {}
    for (activation, scale), pair in runs.items():
        for clock, traj in pair.items():
            maps = _end_to_end(traj)
            found = analysis.detect_stages(traj.ts, traj.loss, maps=maps)
            if activation == "linear":
                stages[clock, s["scales"].index(scale)] = found
            for k, stage in enumerate(found):
                rows.append(
                    dict(
                        activation=activation,
                        scale=scale,
                        clock=clock,
                        stage=k + 1,
                        start=stage.start,
                        end=stage.end,
                        loss_before=stage.loss_before,
                        loss_after=stage.loss_after,
                        rank_after=stage.rank_after,
                    )
                )
            key = f"{activation}/{scale:g}/{clock}"
            curves[f"{key}/ts"] = np.asarray(traj.ts)
            curves[f"{key}/loss"] = np.asarray(traj.loss)
            curves[f"{key}/singular_values"] = np.linalg.svd(maps, compute_uv=False)
    small = runs["linear", s["scales"][1]]["gd"]
    curves["alignment"] = _alignment(small, coefficient)
    first = stages["gd", 1][0].start if stages["gd", 1] else None
    layer_traj, layer_ratios = _layerwise(problem, s)
    curves["layerwise/ts"] = np.asarray(layer_traj.ts)
    curves["layerwise/loss"] = np.asarray(layer_traj.loss)
    curves["layerwise/sigma2_over_sigma1"] = layer_ratios
    layer_stages = analysis.detect_stages(
        layer_traj.ts, layer_traj.loss, maps=_product(layer_traj.models.weights)
    )
    fits = dict(
        sigma=sigma.tolist(),
        slowdown=_slowdown(stages, sigma, s["lr"], s["scales"]),
        alignment_at_first_escape=(
            None
            if first is None
            else float(np.interp(first, np.asarray(small.ts), curves["alignment"]))
        ),
        layerwise_stages=[
            dict(
                start=x.start,
                end=x.end,
                loss_after=x.loss_after,
                rank_after=x.rank_after,
            )
            for x in layer_stages
        ],
        layerwise_plateau_ratio=_plateau_ratio(
            layer_stages, curves["layerwise/ts"], layer_ratios
        ),
    )
    return SaddleToSaddleResult(dict(s), rows, fits, curves)


@dataclasses.dataclass
class SaddleToSaddleResult:
    """Stage table (`rows`), slowdown fits and alignment (`fits`), curves."""

    settings: dict
    rows: list
    fits: dict
    curves: dict

    def stages(self, activation="linear", scale=None, clock="gd") -> list:
        scale = self.settings["scales"][1] if scale is None else scale
        return [
            r
            for r in self.rows
            if r["activation"] == activation
            and r["scale"] == scale
            and r["clock"] == clock
        ]

    def table(self) -> str:
        head = (
            f"{'act':<7} {'α':>7} {'clock':<5} {'stage':>5} {'start':>8} {'end':>8} "
            f"{'loss before':>12} {'loss after':>11} {'rank':>4}"
        )
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(
                f"{r['activation']:<7} {r['scale']:>7.0e} {r['clock']:<5} "
                f"{r['stage']:>5} {r['start']:>8.2f} {r['end']:>8.2f} "
                f"{r['loss_before']:>12.4e} {r['loss_after']:>11.3e} "
                f"{r['rank_after'] if r['rank_after'] is not None else '':>4}"
            )
        lines += [
            "",
            "finite-step slowdown per plateau (linear net): escape time per unit of "
            "δ = −ln α",
            f"{'stage':>5} {'σ_k':>7} {'GF slope':>9} {'1/σ_k':>7} {'GD slope':>9} "
            f"{'GD/GF':>7} {'ησ/ln(1+ησ)':>12} {'±':>6}",
        ]
        for f in self.fits["slowdown"]:
            lines.append(
                f"{f['stage']:>5} {f['sigma']:>7.3f} {f['gf_slope']:>9.3f} "
                f"{f['inverse_sigma']:>7.3f} {f['gd_slope']:>9.3f} "
                f"{f['measured_ratio']:>7.4f} {f['predicted_ratio']:>12.4f} "
                f"{f['tolerance']:>6.4f}"
            )
        a = self.fits["alignment_at_first_escape"]
        if a is not None:
            lines.append(
                f"\nmedian alignment ratio ‖(I−P₁)wᵢ‖/‖P₁wᵢ‖ at the end of the first "
                f"plateau (GD, α = {self.settings['scales'][1]:g}): {a:.2e}"
            )
        r = self.fits["layerwise_plateau_ratio"]
        lines.append(
            f"layer-wise GD, 3-layer linear net: {len(self.fits['layerwise_stages'])} "
            "stages; on the plateau after the first, median of the largest σ₂/σ₁ "
            "over the layers: " + ("n/a" if r is None else f"{r:.2e}")
        )
        return "\n".join(lines)

    def figure(self):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        s, c = self.settings, self.curves
        small = s["scales"][1]
        fig, axes = plt.subplots(1, 4, figsize=(20, 4.4))
        ax = axes[0]
        for activation, colour in zip(ACTIVATIONS, ("C0", "C3")):
            for clock, style in (("gd", "-"), ("gf", "--")):
                key = f"{activation}/{small:g}/{clock}"
                ax.semilogy(
                    c[f"{key}/ts"],
                    c[f"{key}/loss"],
                    style,
                    color=colour,
                    label=f"{activation} {clock.upper()}",
                )
        for stage in self.stages():
            ax.axvspan(stage["start"], stage["end"], color="0.9", zorder=0)
        ax.set(xlabel="time t = kη", ylabel="loss", title=f"staircase (α = {small:g})")
        ax.legend(fontsize=8)
        ax = axes[1]
        for clock, style in (("gd", "-"), ("gf", "--")):
            values = c[f"linear/{small:g}/{clock}/singular_values"]
            for j in range(values.shape[1]):
                ax.semilogy(
                    c[f"linear/{small:g}/{clock}/ts"],
                    values[:, j],
                    style,
                    color=f"C{j}",
                    label=f"σ{j + 1} {clock.upper()}" if j < 4 else None,
                )
        ax.set(
            xlabel="time",
            ylabel="singular values of W₂W₁",
            title="one rank per stage",
            ylim=(1e-12, None),
        )
        ax.legend(fontsize=7, ncol=2)
        ax = axes[2]
        ax.semilogy(c[f"linear/{small:g}/gd/ts"], c["alignment"])
        for stage in self.stages():
            ax.axvline(stage["start"], color="0.6", lw=0.8)
        ax.set(
            xlabel="time",
            ylabel="median ‖(I−P₁)wᵢ‖/‖P₁wᵢ‖",
            title="units align with C's top pair on plateau 1",
        )
        ax = axes[3]
        ax.semilogy(c["layerwise/ts"], c["layerwise/loss"], "k", label="loss")
        for j in range(c["layerwise/sigma2_over_sigma1"].shape[1]):
            ax.semilogy(
                c["layerwise/ts"],
                c["layerwise/sigma2_over_sigma1"][:, j],
                "--",
                label=f"σ₂/σ₁ of W{j + 1}",
            )
        ax.set(xlabel="time", title="layer-wise GD, 3-layer linear net")
        ax.legend(fontsize=8)
        fig.suptitle(
            f"teacher rank {s['teacher_rank']}, n={s['n']}, d={s['d']}, "
            f"width {s['width']}, η={s['lr']:g}",
            fontsize=10,
        )
        fig.tight_layout()
        return fig
