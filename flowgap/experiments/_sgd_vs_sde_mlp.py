r"""sgd-vs-sde, part (c): SGD against its order-1 and order-2 SDEs on a tanh MLP
fitted to the UCI digits (one-hot targets, half-MSE), in distribution.

`mlp_keys` SGD runs and as many paths of each SDE (Euler–Maruyama, saved on SGD's
clock t = kη) give the loss curves' mean and spread, and the distributions of
the final loss, compared by a two-sample Kolmogorov–Smirnov test
(`scipy.stats.ks_2samp`). Gradient flow is the noiseless reference.
"""

import jax
import jax.numpy as jnp
import numpy as np

from .. import dynamics, models, problems

#: the runs of part (c): name → label
METHODS = {
    "sgd": "SGD",
    "sde1": "SDE order 1",
    "sde2": "SDE order 2",
    "gf": "gradient flow",
}


def mean_squared_error(model, batch):
    """½ mean over the batch of ‖f(xᵢ) − yᵢ‖² (as `RegressionProblem.loss`)."""
    inputs, targets = batch
    return 0.5 * jnp.mean(jnp.sum((jax.vmap(model)(inputs) - targets) ** 2, -1))


def setup(s, key):
    """The digits subset and the tanh MLP (one hidden layer of `mlp_width`)."""
    k_data, k_model = jax.random.split(key)
    problem = problems.digits(s["mlp_n"], key=k_data, classes=s["mlp_classes"])
    model = models.MLP(
        problem.inputs.shape[1],
        s["mlp_width"],
        s["mlp_classes"],
        depth=1,
        activation="tanh",
        key=k_model,
    )
    return (problem.inputs, problem.targets), model


def save_steps(s) -> int:
    """SGD saves every this many steps (about `mlp_saves` saves)."""
    return max(1, s["mlp_steps"] // s["mlp_saves"])


def losses(s, data, model, keys) -> dict:
    """The full training loss at SGD's saves, per key (keys × saves), of SGD and
    the two SDEs, and gradient flow's (saves,); with the save times `t`."""
    lr, steps, every = s["mlp_lr"], s["mlp_steps"], save_steps(s)
    steps = steps - steps % every
    ts = jnp.arange(0, steps + 1, every) * lr
    batch = dict(lr=lr, batch_size=s["mlp_batch_size"])
    subset = s["mlp_subset"] or None

    @jax.jit
    def sgd(keys):
        def one(key):
            return dynamics.stochastic_descent(
                mean_squared_error,
                model,
                data,
                steps=steps,
                key=key,
                save_every=every,
                **batch,
            ).loss

        return jax.vmap(one)(keys)

    def sde(order):
        @jax.jit
        def run(keys):
            def one(key):
                return dynamics.stochastic_flow(
                    mean_squared_error,
                    model,
                    data,
                    t1=ts[-1],
                    ts=ts,
                    key=key,
                    order=order,
                    subset=subset,
                    dt0=lr * s["sde_dt"],
                    max_steps=round(steps / s["sde_dt"]) + 16,
                    **batch,
                ).loss

            return jax.vmap(one)(keys)

        return run

    flow = dynamics.gradient_flow(
        lambda m: mean_squared_error(m, data), model, t1=ts[-1], ts=ts
    )
    sde_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    return dict(
        t=np.asarray(ts),
        sgd=np.asarray(sgd(keys)),
        sde1=np.asarray(sde(1)(sde_keys)),
        sde2=np.asarray(sde(2)(sde_keys)),
        gf=np.asarray(flow.loss),
    )


def compare(found: dict) -> list:
    """Per method, the final loss's mean, standard error, spread and quartiles,
    and (SDEs) the KS statistic and p-value of its final losses against SGD's."""
    from scipy.stats import ks_2samp

    reference = found["sgd"][:, -1]
    rows = []
    for name in ("sgd", "sde1", "sde2"):
        final = found[name][:, -1]
        row = dict(
            part="mlp",
            method=METHODS[name],
            final_mean=float(np.mean(final)),
            final_se=float(np.std(final, ddof=1) / np.sqrt(final.size)),
            final_sd=float(np.std(final, ddof=1)),
            q10=float(np.quantile(final, 0.1)),
            q50=float(np.quantile(final, 0.5)),
            q90=float(np.quantile(final, 0.9)),
        )
        if name != "sgd":
            test = ks_2samp(reference, final)
            row.update(ks=float(test.statistic), p_value=float(test.pvalue))
            row["mean_gap_se"] = (row["final_mean"] - rows[0]["final_mean"]) / float(
                np.hypot(row["final_se"], rows[0]["final_se"])
            )
        rows.append(row)
    rows.append(
        dict(part="mlp", method=METHODS["gf"], final_mean=float(found["gf"][-1]))
    )
    return rows


def measure(s, key) -> tuple[list, dict, dict]:
    """Part (c): its rows, fits and curves (keys `mlp/...`)."""
    k_setup, k_runs = jax.random.split(key)
    data, model = setup(s, k_setup)
    found = losses(s, data, model, jax.random.split(k_runs, s["mlp_keys"]))
    rows = compare(found)
    fits = dict(
        mlp_ks_pvalue={r["method"]: r["p_value"] for r in rows if "p_value" in r}
    )
    curves = {"t": found["t"], "gf/loss": found["gf"]}
    for name in ("sgd", "sde1", "sde2"):
        curves[f"{name}/mean"] = found[name].mean(axis=0)
        curves[f"{name}/sd"] = found[name].std(axis=0, ddof=1)
        curves[f"{name}/final"] = np.sort(found[name][:, -1])
    return rows, fits, {f"mlp/{k}": np.asarray(v) for k, v in curves.items()}
