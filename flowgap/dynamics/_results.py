import collections

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import is_concrete


class RESULTS(diffrax.RESULTS):  # pyright: ignore[reportGeneralTypeIssues]
    """Run status of a `Trajectory`: Diffrax's result codes plus GD divergence.

    `successful` and `event_occurred` (a `stop_when` condition fired) are normal
    ends; everything else is a failure. Inherited: `max_steps_reached`,
    `dt_min_reached`, `max_steps_rejected`, `internal_error`.

    An item prints as its name, `RESULTS.successful` (Equinox prints the message,
    which is empty for success); a batched one (under `jax.vmap`) as the names,
    `RESULTS[successful, diverged]`, or their counts when there are many.
    `RESULTS[item]` is still the message.
    """

    diverged = (
        "Gradient descent diverged: the loss became non-finite or exceeded `max_loss`."
    )


class _Status(type(diffrax.RESULTS.successful)):
    """A `RESULTS` item that prints its name. Only its repr differs from
    Equinox's item: same fields, equality, `error_if` and pytree flattening."""

    def __repr__(self):
        enumeration = self._enumeration.__name__
        if not is_concrete(self._value):
            return f"{enumeration}<traced>"
        names = {
            int(i._value): name for name, i in self._enumeration._name_to_item.items()
        }
        codes = np.asarray(self._value)
        if codes.ndim == 0:
            return f"{enumeration}.{names.get(int(codes), int(codes))}"
        if codes.size <= _LISTED:
            listed = np.vectorize(lambda c: names.get(int(c), str(c)), otypes=[str])
            return enumeration + _nested(listed(codes).tolist())
        counts = collections.Counter(names.get(int(c), str(c)) for c in codes.ravel())
        shape = "×".join(map(str, codes.shape))
        tally = ", ".join(f"{name} ×{n}" for name, n in counts.most_common())
        return f"{enumeration}[{shape}: {tally}]"


_LISTED = 10  # a batch of at most this many items prints each name


def _nested(names) -> str:
    if isinstance(names, list):
        return "[" + ", ".join(_nested(n) for n in names) + "]"
    return names


def _as_status(item):
    return _Status(item._value, item._enumeration)


def _where(cls, pred, a, b):
    """`a` where the scalar `pred` is true, else `b` (`eqx.Enumeration.where`)."""
    return _as_status(_EQUINOX_WHERE(cls, pred, a, b))


def _promote(cls, item):
    """`item` of Diffrax's `RESULTS` as an item of this one
    (`eqx.Enumeration.promote`)."""
    return _as_status(_EQUINOX_PROMOTE(cls, item))


# Every RESULTS item is a `_Status`: the named ones, and those `where` and
# `promote` build (Equinox's build plain items; its metaclass reserves both names
# in a class body, so they are rebound here). Transformations keep the class.
_EQUINOX_WHERE = eqx.Enumeration.__dict__["where"].__func__
_EQUINOX_PROMOTE = eqx.Enumeration.__dict__["promote"].__func__
for _name, _item in RESULTS._name_to_item.items():
    RESULTS._name_to_item[_name] = _as_status(_item)
RESULTS.where = classmethod(_where)
RESULTS.promote = classmethod(_promote)


class DivergenceError(RuntimeError):
    """Raised by `gradient_descent(..., throw=True)` when a run diverges.

    The trajectory up to the divergence is kept on `.trajectory`.
    """

    def __init__(self, message: str, trajectory=None):
        super().__init__(message)
        self.trajectory = trajectory


class SolverError(RuntimeError):
    """Raised by `gradient_flow(..., throw=True)` when the ODE solve fails.

    The trajectory up to the failure time is kept on `.trajectory`.
    """

    def __init__(self, message: str, trajectory=None):
        super().__init__(message)
        self.trajectory = trajectory


def status_code(result) -> "jax.Array":
    """The integer code of a `RESULTS` item (0 = `successful`), traceable, for
    storing a run's status in an array (a sweep's `status` output, a `.npz`).
    Under `jax.vmap` the item is batched and so is its code."""
    return jnp.asarray(result._value)


def status_name(code: int) -> str:
    """The name of the `RESULTS` item with integer code `code` (e.g.
    "successful", "event_occurred", "diverged", "max_steps_reached")."""
    for name in _NAMES:
        if int(getattr(RESULTS, name)._value) == int(code):
            return name
    raise ValueError(f"`code` {code!r} is not a flowgap.RESULTS code.")


# Equinox enumerations keep their items by name here (the only place that reads it).
_NAMES = tuple(RESULTS._name_to_item)
