r"""Minibatches of a data set, drawn from a key by step number: what SGD and
label-noise GD train on, and what the SDE's diffusion is built from.

Data are a pytree of arrays with a leading example axis (`(inputs, targets)`, a
dict, a `RegressionProblem`'s arrays...), and a loss is `loss(model, batch)`, the
mean loss over a batch of the same structure (docs: theory/sgd)."""

import inspect
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax import lax
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree

from .._checks import positive_int, positive_scalar, prng_key


def check_batch_loss(loss) -> Callable:
    """`loss(model, batch)`: a callable taking the model and a batch."""
    if not callable(loss):
        raise TypeError(
            "`loss` must be a callable loss(model, batch) -> scalar (the mean loss "
            f"over a batch), got {type(loss).__name__}."
        )
    try:
        inspect.signature(loss).bind(None, None)
    except TypeError:
        raise TypeError(
            "`loss` must take the model and a batch, loss(model, batch) -> scalar "
            "(the mean loss over the batch); the given callable does not accept two "
            "positional arguments. For a full-batch loss(model), use "
            "`gradient_descent`/`gradient_flow`."
        ) from None
    except ValueError:  # a builtin without a signature: accept it
        pass
    return loss


def check_data(data) -> tuple[PyTree, int]:
    """(data, n): a pytree of arrays sharing the leading example axis n ≥ 1."""
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError("`data` must be a pytree of arrays, got no array leaves.")
    data = jax.tree.map(jnp.asarray, data)
    sizes = {x.shape[0] if x.ndim else None for x in jax.tree.leaves(data)}
    if None in sizes:
        raise ValueError(
            "`data` leaves must have a leading example axis; a scalar leaf has none."
        )
    if len(sizes) != 1:
        raise ValueError(
            "`data` leaves must share the leading example axis, got sizes "
            f"{sorted(sizes)}."
        )
    return data, sizes.pop()


def check_batch_size(batch_size, n: int) -> int:
    batch_size = positive_int("batch_size", batch_size)
    if batch_size > n:
        raise ValueError(
            f"`batch_size` must be at most the number of examples n = {n}, got "
            f"{batch_size}."
        )
    return batch_size


def last_leaf(batch):
    """The default `targets` selector: the last array of the batch in tree order
    (the targets of `(inputs, targets)`)."""
    return jax.tree.leaves(batch)[-1]


def take(data, indices: Int[Array, " b"]):
    """The examples at `indices` of every leaf."""
    return jax.tree.map(lambda x: jnp.take(x, indices, axis=0), data)


def one_example(data, index):
    """Example `index` as a batch of one (leading axis of size 1)."""
    return jax.tree.map(lambda x: lax.dynamic_slice_in_dim(x, index, 1), data)


class Minibatches(eqx.Module):
    r"""The minibatch B_k of step k, and its label noise, as a pure function of
    (key, k): a run replayed from the same key sees the same batches, and a
    vmapped batch of keys sees independent ones.

    - `replace=True`: B_k is b indices drawn uniformly with replacement, from
      `fold_in(key, k)`.
    - `replace=False` (and `epochs=True`): epochs of random permutations. Epoch
      e = ⌊k/m⌋, with m = ⌊n/b⌋ steps per epoch, permutes the examples with
      `fold_in(key, e)`; step k takes the (k mod m)-th block of b of it (the last
      n − m·b examples of each permutation are dropped). With b = n this is
      full-batch descent, taken in data order.
    - `replace=False, epochs=False`: each B_k is an independent uniform b-subset
      (the first b of a permutation drawn from `fold_in(key, k)`): the law whose
      one-step noise the SDE's factor (n − b)/(n − 1) describes at every step.
    - `label_noise` δ: the targets (the leaf that `targets` selects, as `where` in
      `eqx.tree_at`) get i.i.d. N(0, δ²) noise, fresh at every step and for
      every drawn example.
    """

    data: PyTree
    key: PRNGKeyArray
    label_noise: Float[Array, ""] | None
    batch_size: int = eqx.field(static=True)
    replace: bool = eqx.field(static=True)
    epochs: bool = eqx.field(static=True)
    targets: Callable = eqx.field(static=True)

    def __init__(
        self,
        data,
        key,
        *,
        batch_size,
        replace=True,
        epochs=True,
        label_noise=None,
        targets=None,
    ):
        self.data, n = check_data(data)
        self.key = prng_key("key", key)
        self.batch_size = check_batch_size(batch_size, n)
        if not isinstance(replace, bool):
            raise TypeError(f"`replace` must be True or False, got {replace!r}.")
        self.replace = replace
        if not isinstance(epochs, bool):
            raise TypeError(f"`epochs` must be True or False, got {epochs!r}.")
        self.epochs = epochs
        self.label_noise = (
            None if label_noise is None else positive_scalar("label_noise", label_noise)
        )
        if targets is not None and not callable(targets):
            raise TypeError(
                "`targets` must be a callable batch -> the target array (as `where` "
                f"in `eqx.tree_at`), got {type(targets).__name__}."
            )
        self.targets = last_leaf if targets is None else targets

    @property
    def n(self) -> int:
        return jax.tree.leaves(self.data)[0].shape[0]

    @property
    def full_batch(self) -> bool:
        """Whether every step sees the whole data set (b = n, no replacement)."""
        return not self.replace and self.epochs and self.batch_size == self.n

    def indices(self, step) -> Int[Array, " b"]:
        """The examples of B_k."""
        sample_key, _ = jr.split(self.key)
        n, b = self.n, self.batch_size
        if self.replace:
            return jr.randint(jr.fold_in(sample_key, step), (b,), 0, n)
        if not self.epochs:
            return jr.permutation(jr.fold_in(sample_key, step), n)[:b]
        per_epoch = n // b
        permutation = jr.permutation(jr.fold_in(sample_key, step // per_epoch), n)
        return lax.dynamic_slice_in_dim(permutation, (step % per_epoch) * b, b)

    def batch(self, step):
        """B_k, with its label noise."""
        batch = self.data if self.full_batch else take(self.data, self.indices(step))
        if self.label_noise is None:
            return batch
        _, noise_key = jr.split(self.key)
        noise_key = jr.fold_in(noise_key, step)

        def noisy(y):
            return y + self.label_noise * jr.normal(noise_key, y.shape, y.dtype)

        return eqx.tree_at(self.targets, batch, replace_fn=noisy)


def check_targets(targets, data):
    """The `targets` selector applied to `data`: it must pick one array whose
    leading axis is the example axis."""
    try:
        picked = (last_leaf if targets is None else targets)(data)
    except Exception as err:
        raise ValueError(f"`targets` could not select a leaf of `data`: {err}") from err
    if not isinstance(picked, jax.Array) or picked.ndim < 1:
        raise ValueError(
            "`targets` must select one array of `data` with the example axis first."
        )
    return picked
