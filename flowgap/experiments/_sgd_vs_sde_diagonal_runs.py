"""sgd-vs-sde, part (b), its runs: GD, SGD, label-noise GD and the order-1 SDE on
a depth-2 diagonal network, and what each run reports (α_eff, the identity's
error, the distance to the Woodworth limit at α_eff)."""

import jax
import jax.numpy as jnp
import numpy as np

from .. import analysis, dynamics, models, problems

#: compiled once per shape: `analysis.woodworth_limit` alone re-traces its solves
#: on every call (its objectives are closures), about 2 s each on a CPU
woodworth_limit = jax.jit(analysis.woodworth_limit)


def sparse_problem(key, s):
    """Gaussian X (n × d), an s-sparse β*, y = Xβ*."""
    return problems.sparse_recovery(
        key, n=s["diag_n"], d=s["diag_d"], sparsity=s["diag_sparsity"]
    )


def batch_loss(model, batch):
    """½ mean over the batch of (⟨β, xᵢ⟩ − yᵢ)², β = u² − v²."""
    inputs, targets = batch
    return 0.5 * jnp.mean((inputs @ model.end_to_end() - targets) ** 2)


def _beta_gradient(beta, batch):
    """g = ∇_β L_B(β) = X_Bᵀ(X_Bβ − y_B)/b."""
    inputs, targets = batch
    return inputs.T @ (inputs @ beta - targets) / inputs.shape[0]


def log_shrinkage(betas, batches, lr):
    """Σ_k ln(1 − 4η²g_k²) per coordinate, g_k = ∇_β L_{B_k}(β_k), for the saved
    β_0 … β_K (every step) and `batches(k)` → B_k: the identity's prediction of
    ln(u_K⊙v_K/α²). NaN where a step had |2ηg| ≥ 1 (u or v changed sign)."""
    steps = betas.shape[0] - 1

    def one(k):
        g = _beta_gradient(betas[k], batches(k))
        return jnp.log1p(-4 * lr**2 * g**2)

    terms = jax.vmap(one)(jnp.arange(steps))
    return jnp.sum(terms, axis=0)


def summary(problem, final, scale, shrinkage=None) -> dict:
    """The numbers reported per run: final loss, ℓ₁ norm, recovery error, α_eff
    (= √(u⊙v) at the end), the distance to the Woodworth limit at scale α_eff,
    and with `shrinkage` (the identity's Σ ln(1 − 4η²g²)) the largest error of
    ln(u⊙v) against ln α² + shrinkage. A step with |2ηg| ≥ 1 flips the sign of
    u or v (η too large for the batch): then u⊙v ≤ 0 somewhere, `flipped`
    counts those coordinates, and α_eff, the Woodworth distance and the identity
    are NaN there."""
    u, v = np.asarray(final.u), np.asarray(final.v)
    x, y = np.asarray(problem.inputs), np.asarray(problem.targets)
    beta, product = u**2 - v**2, u * v
    flipped = int(np.sum(product <= 0))
    alpha_eff = np.sqrt(np.where(product > 0, product, np.nan))
    out = dict(
        loss=float(0.5 * np.mean((x @ beta - y) ** 2)),
        l1=float(np.sum(np.abs(beta))),
        recovery=float(np.linalg.norm(beta - np.asarray(problem.truth))),
        alpha_min=float(np.min(alpha_eff)),
        alpha_median=float(np.median(alpha_eff)),
        woodworth=np.nan,
        flipped=flipped,
        alpha_eff=alpha_eff,
        beta=beta,
    )
    if not flipped:
        limit = np.asarray(woodworth_limit(problem.inputs, problem.targets, alpha_eff))
        out["woodworth"] = float(np.linalg.norm(beta - limit))
    if shrinkage is not None:
        predicted = 2 * np.log(scale) + np.asarray(shrinkage)
        with np.errstate(invalid="ignore"):
            error = np.abs(np.log(product) - predicted)
        out["identity"] = float(np.max(error))
    return out


def descents(problem, s, key):
    """GD and, over `diag_keys` keys, SGD and label-noise GD (noise for
    `label_noise_steps`, then plain GD), every step saved; with each run's
    batches as a function of the step."""
    data = (problem.inputs, problem.targets)
    model = models.DiagonalNet(s["diag_d"], scale=s["diag_scale"])
    lr, steps = s["diag_lr"], s["diag_steps"]
    keys = jax.random.split(key, s["diag_keys"])
    sgd_batches = dict(batch_size=s["diag_batch_size"], replace=True)
    noise_batches = dict(
        batch_size=problem.n, replace=False, label_noise=s["label_noise"]
    )

    def full(model):
        return batch_loss(model, data)

    @jax.jit
    def run(keys):
        gd = dynamics.gradient_descent(full, model, lr=lr, steps=steps)

        def sgd(key):
            return dynamics.stochastic_descent(
                batch_loss, model, data, lr=lr, steps=steps, key=key, **sgd_batches
            ).models

        def noisy(key):
            first = dynamics.stochastic_descent(
                batch_loss,
                model,
                data,
                lr=lr,
                steps=s["label_noise_steps"],
                key=key,
                **noise_batches,
            )
            second = dynamics.gradient_descent(full, first.final, lr=lr, steps=steps)
            return first.models, second.models

        return gd.models, jax.vmap(sgd)(keys), jax.vmap(noisy)(keys)

    gd, sgd, (noisy, clean) = jax.tree.map(np.asarray, run(keys))
    return dict(
        gd=gd,
        sgd=sgd,
        noisy=noisy,
        clean=clean,
        keys=keys,
        sgd_batches=sgd_batches,
        noise_batches=noise_batches,
    )


def _betas(models_):
    """β = u² − v² of stacked depth-2 diagonal nets (any leading axes)."""
    return models_.u**2 - models_.v**2


def full_losses(problem, models_):
    """L at each save of stacked diagonal nets (NumPy)."""
    x, y = np.asarray(problem.inputs), np.asarray(problem.targets)
    beta = np.asarray(_betas(models_))
    return 0.5 * np.mean((beta @ x.T - y) ** 2, axis=-1)


def last_save(models_):
    """The last save of stacked models (a leading axis of saves)."""
    return jax.tree.map(lambda x: x[-1], models_)


def shrinkages(problem, s, runs) -> dict:
    """The identity's Σ ln(1 − 4η²g_k²) for every run, from its saved steps:
    `gd` (d,), `sgd` and `noisy` (keys × d; label-noise GD's over both phases)."""
    data = (problem.inputs, problem.targets)
    lr = s["diag_lr"]

    def stochastic(models_, key, batches):
        mb = dynamics.Minibatches(data, key, **batches)
        return log_shrinkage(_betas(models_), mb.batch, lr)

    def plain(models_):
        return log_shrinkage(_betas(models_), lambda k: data, lr)

    @jax.jit
    def compute(gd, sgd, noisy, clean, keys):
        sgd = jax.vmap(lambda m, k: stochastic(m, k, runs["sgd_batches"]))(sgd, keys)
        first = jax.vmap(lambda m, k: stochastic(m, k, runs["noise_batches"]))
        return dict(
            gd=plain(gd), sgd=sgd, noisy=first(noisy, keys) + jax.vmap(plain)(clean)
        )

    return compute(runs["gd"], runs["sgd"], runs["noisy"], runs["clean"], runs["keys"])


def sde_paths(problem, s, key):
    """The order-1 SDE of SGD (Euler–Maruyama at dt0 = η·`sde_dt`) to the same
    time as SGD, over `diag_keys` keys: the final models, and the losses of the
    first path on `diag_saves` + 1 times."""
    data = (problem.inputs, problem.targets)
    model = models.DiagonalNet(s["diag_d"], scale=s["diag_scale"])
    lr = s["diag_lr"]
    t1 = s["diag_steps"] * lr
    ts = jnp.linspace(0.0, t1, s["diag_saves"] + 1)

    @jax.jit
    def run(keys):
        def one(key):
            path = dynamics.stochastic_flow(
                batch_loss,
                model,
                data,
                lr=lr,
                batch_size=s["diag_batch_size"],
                t1=t1,
                ts=ts,
                key=key,
                dt0=lr * s["sde_dt"],
                max_steps=round(s["diag_steps"] / s["sde_dt"]) + 16,
            )
            return path.final, path.loss

        return jax.vmap(one)(keys)

    finals, losses = jax.tree.map(
        np.asarray, run(jax.random.split(jax.random.fold_in(key, 1), s["diag_keys"]))
    )
    return finals, np.asarray(ts), losses[0]


def woodworth_ladder(problem, s, key) -> dict:
    """GD and SGD (the first key) at η_j = `diag_lr`/2^j, j < `diag_rungs`, each
    for T/η_min steps (T = `diag_steps`·`diag_lr`, so each runs at least to T):
    per η the distance of β_∞ to the Woodworth limit at the run's own α_eff,
    and ‖β_∞‖₁, with the log–log fits of the distances against η."""
    data = (problem.inputs, problem.targets)
    model = models.DiagonalNet(s["diag_d"], scale=s["diag_scale"])
    lrs = s["diag_lr"] / 2.0 ** np.arange(s["diag_rungs"])
    steps = s["diag_steps"] * 2 ** (s["diag_rungs"] - 1)
    key = jax.random.split(key, s["diag_keys"])[0]

    @jax.jit
    def run(lrs):
        def one(lr):
            sgd = dynamics.stochastic_descent(
                batch_loss,
                model,
                data,
                lr=lr,
                steps=steps,
                save_every=steps,
                key=key,
                batch_size=s["diag_batch_size"],
                replace=True,
            )
            gd = dynamics.gradient_descent(
                lambda m: batch_loss(m, data),
                model,
                lr=lr,
                steps=steps,
                save_every=steps,
            )
            return dict(sgd=sgd.final, gd=gd.final)

        return jax.vmap(one)(lrs)

    finals = jax.tree.map(np.asarray, run(jnp.asarray(lrs)))
    out = dict(lrs=lrs)
    for name, stacked in finals.items():
        found = [
            summary(problem, jax.tree.map(lambda x, j=j: x[j], stacked), None)
            for j in range(lrs.size)
        ]
        out[name] = {
            k: np.asarray([f[k] for f in found]) for k in ("woodworth", "l1", "loss")
        }
        out[name]["fit"] = _fit(lrs, out[name]["woodworth"])
    return out


def _fit(lrs, distances) -> dict:
    """`loglog_slope` of the distances, or NaN where one is not finite (a run
    whose u or v flipped sign)."""
    if np.all(np.isfinite(distances) & (distances > 0)):
        return analysis.loglog_slope(lrs, distances)
    return dict(slope=np.nan, intercept=np.nan, stderr=np.nan, ci=(np.nan, np.nan))


def mean_summary(items: list) -> dict:
    """The per-key summaries of one method, averaged (ℓ₁ with its spread; the
    worst loss, identity error and smallest α_eff)."""
    out = {
        k: float(np.mean([it[k] for it in items]))
        for k in items[0]
        if np.ndim(items[0][k]) == 0
    }
    out["l1_sd"] = float(np.std([it["l1"] for it in items]))
    out["flipped"] = sum(it["flipped"] for it in items)
    out["loss"] = max(it["loss"] for it in items)
    out["alpha_min"] = float(np.min([it["alpha_min"] for it in items]))
    if "identity" in items[0]:
        out["identity"] = float(np.max([it["identity"] for it in items]))
    out["alpha_eff"] = items[0]["alpha_eff"]
    out["beta"] = items[0]["beta"]
    return out
