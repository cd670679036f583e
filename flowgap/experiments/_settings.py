"""Typed, documented experiment settings, parsed from `--set key=value`."""

import dataclasses
import math
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


def resolve(settings: tuple[Setting, ...], overrides: dict) -> dict:
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
    return values
