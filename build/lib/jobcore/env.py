"""The one environment reader: the worker's, the producer's and the sweep's settings parse their
variables here, with the same rules everywhere.

A reader collects problems instead of stopping at the first, one line per problem naming the
variable; the caller raises them all at once (`check`). An unset or blank variable takes its
default. The rules:

- integer: a whole number (`int()`), within the bounds if given;
- number: a finite float, within the bounds if given;
- duration: a number of seconds, never negative (the variables end in `_SECONDS`);
- boolean: 1/true/yes/on or 0/false/no/off, any case;
- bounds: `low`/`high` are inclusive, `above` is an exclusive lower bound ("must be more than");
- a value out of range or unparsable is a problem, and the default stands in for it so that the
  other variables are still read and checked."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping


class EnvError(ValueError):
    """Every problem found, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid settings:\n  " + "\n  ".join(problems))
        self.problems = problems


class EnvReader:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self.problems: list[str] = []

    def problem(self, line: str) -> None:
        """Record a problem the rules below cannot see (one variable against another)."""
        self.problems.append(line)

    def check(self, error: Callable[[list[str]], Exception] = EnvError) -> None:
        """Raise `error(problems)` when anything was wrong."""
        if self.problems:
            raise error(list(self.problems))

    def raw(self, name: str) -> str | None:
        value = self.environ.get(name)
        return value.strip() if value is not None and value.strip() != "" else None

    def is_set(self, name: str) -> bool:
        return self.raw(name) is not None

    def required(self, name: str, *, prefix: tuple[str, ...] = ()) -> str:
        value = self.raw(name)
        if value is None:
            self.problem(f"{name} must be set")
            return ""
        return self._check_prefix(name, value, prefix)

    def optional(self, name: str, *, prefix: tuple[str, ...] = ()) -> str | None:
        value = self.raw(name)
        return None if value is None else self._check_prefix(name, value, prefix)

    def _check_prefix(self, name: str, value: str, prefix: tuple[str, ...]) -> str:
        if prefix and not value.startswith(prefix):
            self.problem(f"{name} must start with {' or '.join(prefix)}")
        return value

    def text(self, name: str, default: str) -> str:
        return self.raw(name) or default

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = (self.raw(name) or default).lower()
        if value not in choices:
            self.problem(f"{name}={value!r} is not one of {', '.join(choices)}")
            return default
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        self.problem(f"{name}={value!r} is not a boolean (true/false/1/0)")
        return default

    def integer(
        self,
        name: str,
        default: int,
        *,
        low: int | None = None,
        high: int | None = None,
        above: int | None = None,
    ) -> int:
        raw = self.raw(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            self.problem(f"{name}={raw!r} is not an integer")
            return default
        return value if self._in_range(name, raw, value, low, high, above) else default

    def number(
        self,
        name: str,
        default: float,
        *,
        low: float | None = None,
        high: float | None = None,
        above: float | None = None,
    ) -> float:
        raw = self.raw(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            self.problem(f"{name}={raw!r} is not a number")
            return default
        return value if self._in_range(name, raw, value, low, high, above) else default

    def duration(
        self,
        name: str,
        default: float,
        *,
        low: float = 0.0,
        high: float | None = None,
        above: float | None = None,
    ) -> float:
        """Seconds: a number, never negative."""
        implied = above is not None and above >= low  # "more than" already says "at least"
        return self.number(name, default, low=None if implied else low, high=high, above=above)

    def _in_range(
        self,
        name: str,
        raw: str,
        value: float,
        low: float | None,
        high: float | None,
        above: float | None,
    ) -> bool:
        if (
            (low is None or value >= low)
            and (high is None or value <= high)
            and (above is None or value > above)
        ):
            return True
        bounds = []
        if above is not None:
            bounds.append(f"more than {above:g}")
        if low is not None and high is not None:
            bounds.append(f"between {low:g} and {high:g}")
        elif low is not None:
            bounds.append(f"at least {low:g}")
        elif high is not None:
            bounds.append(f"at most {high:g}")
        self.problem(f"{name}={raw} is out of range: must be {' and '.join(bounds)}")
        return False
