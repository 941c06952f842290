"""Reading TOML tables key by key: every error names the key path and the reason, and
keys nobody asked for are rejected (a misspelt key must not silently fall back to a
default)."""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from opsims._native import ConfigError

_MISSING = object()


def as_float(value: float) -> float:
    """A number as a float; an integer beyond float range (TOML integers are unbounded)
    becomes an infinity of its sign, which range checks then refuse."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


class TableReader:
    """Typed access to one TOML table that remembers which keys were used."""

    def __init__(self, table: Mapping[str, Any], path: str) -> None:
        if not isinstance(table, Mapping):
            where = path or "the document"
            raise ConfigError(f"{where}: expected a table, got {type(table).__name__} {table!r}")
        self.table = table
        self.path = path
        self.used: set[str] = set()

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = _MISSING) -> Any:
        self.used.add(key)
        if key not in self.table:
            if default is _MISSING:
                raise ConfigError(f"{self.path}.{key}: required key is missing")
            return default
        value = self.table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int in Python; a config that says `nx = true` is a mistake.
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            expected = " or ".join(k.__name__ for k in kinds)
            raise ConfigError(
                f"{self.path}.{key}: expected {expected}, got {type(value).__name__} {value!r}"
            )
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            raise ConfigError(f"{self.path}.{key}: must not be negative, got {value}")
        return value

    def get_marker(self, key: str, default: int) -> int:
        """A marker input, named 1..8 as PicoQuant does (0 = unused), as a bit mask."""
        number: int = self.get(key, int, default)
        if number > 8:
            raise ConfigError(
                f"{self.path}.{key}: marker input {number} is outside 1..8 (0 = unused)"
            )
        return 0 if number == 0 else 1 << (number - 1)

    def get_float(
        self,
        key: str,
        default: float | None = None,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        exclusive_minimum: bool = False,
    ) -> float:
        """A finite number (an integer is accepted) within the given bounds."""
        value = as_float(self.get(key, (int, float), _MISSING if default is None else default))
        if not math.isfinite(value):
            raise self.error(key, f"must be finite, got {value}")
        if minimum is not None and (value < minimum or (exclusive_minimum and value == minimum)):
            bound = ">" if exclusive_minimum else ">="
            raise self.error(key, f"must be {bound} {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise self.error(key, f"must be <= {maximum}, got {value}")
        return value

    def error(self, key: str, reason: str) -> ConfigError:
        return ConfigError(f"{self.path}.{key}: {reason}")

    def reject_unknown(self) -> None:
        # Keys of a control message's tables can be bytes as well as str.
        unknown = sorted(map(str, set(self.table) - self.used))
        if unknown:
            raise ConfigError(f"{self.path}: unknown key(s) {', '.join(unknown)}")


def load_toml(path: str | Path) -> dict[str, Any]:
    """A configuration file, with read and syntax errors as ConfigError naming the file."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the configuration: {e.strerror}") from e
    except ValueError as e:  # TOMLDecodeError, or an integer of more than 4300 digits
        raise ConfigError(f"{path}: not valid TOML: {e}") from e


def apply_overrides(doc: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Set ``dotted.key=value`` items (value in TOML syntax) on a parsed document, as a
    command line's ``--set`` does; the result is checked like the file itself."""
    for item in overrides:
        key, sep, text = item.partition("=")
        path = key.strip().split(".")
        if not sep or not all(path):
            raise ConfigError(f"--set {item!r}: expected dotted.key=value")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except ValueError as e:  # TOMLDecodeError, or an integer of more than 4300 digits
            raise ConfigError(
                f"--set {item!r}: the value is not TOML (strings need quotes): {e}"
            ) from e
        table = doc
        for part in path[:-1]:
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a table")
        table[path[-1]] = value
    return doc
