"""Typed, documented experiment settings, parsed from `--set key=value`."""

import dataclasses
import math
from collections.abc import Mapping
from typing import Any


class SettingError(ValueError):
    """A bad setting: unknown key, unparsable or out-of-range value."""


@dataclasses.dataclass(frozen=True)
class Setting:
    """One documented setting.

    `kind` is "int", "float", "floats" (comma-separated), "str" or "bool";
    `positive` requires values > 0; `choices` restricts "str" values;
    `minimum` is an inclusive lower bound for "int".
    """

    name: str
    default: Any
    help: str
    kind: str = "float"
    positive: bool = False
    minimum: int | None = None
    choices: tuple[str, ...] | None = None

    def parse(self, text: str):
        try:
            value = self._convert(text.strip())
        except ValueError:
            raise SettingError(
                f"setting `{self.name}`: cannot parse {text!r} as {self.kind}"
            ) from None
        return self.check(value)

    def _convert(self, text: str):
        if self.kind == "int":
            return int(text)
        if self.kind == "float":
            return float(text)
        if self.kind == "floats":
            if not text:
                raise ValueError
            return tuple(float(part) for part in text.split(","))
        if self.kind == "bool":
            lowered = text.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return lowered in ("true", "1", "yes")
        return text

    def check(self, value):
        values = value if self.kind == "floats" else (value,)
        if self.kind in ("float", "floats"):
            if not all(math.isfinite(v) for v in values):
                raise SettingError(f"setting `{self.name}` must be finite, got {value}")
        if self.positive and not all(v > 0 for v in values):
            raise SettingError(f"setting `{self.name}` must be > 0, got {value}")
        if self.minimum is not None and value < self.minimum:
            raise SettingError(
                f"setting `{self.name}` must be ≥ {self.minimum}, got {value}"
            )
        if self.choices is not None and value not in self.choices:
            raise SettingError(
                f"setting `{self.name}` must be one of {', '.join(self.choices)}; "
                f"got {value!r}"
            )
        return value

    def describe(self) -> str:
        default = (
            ",".join(f"{v:g}" for v in self.default)
            if self.kind == "floats"
            else self.default
        )
        return f"{self.name}={default}  ({self.kind}) {self.help}"


class Config(Mapping):
    """An experiment's resolved settings: immutable, typed by their `Setting`s,
    read as `config.name` or `config["name"]`.

    It is hashable, so a `point(config, ...)` function can take it as a static
    argument of a compiled program; `replace(**changes)` re-checks the changes.
    """

    __slots__ = ("_values", "_specs")

    def __init__(self, values: Mapping, specs: tuple[Setting, ...] = ()):
        object.__setattr__(self, "_values", dict(values))
        object.__setattr__(self, "_specs", tuple(specs))

    def __getattr__(self, name: str):
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"no setting `{name}`") from None

    def __setattr__(self, name, value):
        raise AttributeError("a Config is immutable; use `replace`")

    def __getitem__(self, name: str):
        return self._values[name]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __reduce__(self):
        return (Config, (self._values, self._specs))

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._values.items())))

    def __eq__(self, other) -> bool:
        return isinstance(other, Mapping) and dict(self) == dict(other)

    def __repr__(self) -> str:
        items = ", ".join(f"{k}={v!r}" for k, v in self._values.items())
        return f"Config({items})"

    def replace(self, **changes) -> "Config":
        """A copy with `changes`, checked like `--set` values."""
        if not self._specs:
            return Config({**self._values, **changes})
        return resolve(self._specs, {**self._values, **changes})


def resolve(settings: tuple[Setting, ...], overrides: Mapping) -> Config:
    """Defaults updated by `overrides` (strings from the CLI, or Python values)."""
    by_name = {s.name: s for s in settings}
    unknown = sorted(set(overrides) - set(by_name))
    if unknown:
        raise SettingError(
            f"unknown setting `{unknown[0]}`; known: {', '.join(by_name)}"
        )
    values = {s.name: s.default for s in settings}
    for name, value in overrides.items():
        setting = by_name[name]
        values[name] = (
            setting.parse(value)
            if isinstance(value, str)
            else setting.check(tuple(value) if setting.kind == "floats" else value)
        )
    return Config(values, settings)
