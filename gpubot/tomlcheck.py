"""TOML with line numbers: the reader under gpubot.toml's schema (:mod:`gpubot.config`).

Pure: standard library only. :class:`TomlSource` parses one file and maps every dotted key to
its line (tomllib reports no lines for valid TOML, so :func:`key_lines` finds them by
scanning the text); :class:`Checker` knows which of two merged files (built-in and the
operator's) a key came from and raises :class:`~gpubot.errors.ConfigError` naming the dotted
key, the file and the line; its typed readers (``string``, ``integer``, ``money``, ``enum``,
...) are what the schema validates values with. A TOML syntax error keeps tomllib's own line.
"""

from __future__ import annotations

import difflib
import enum
import re
import tomllib
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NoReturn

from gpubot.errors import ConfigError

KeyPath = tuple[str, ...]
"""A dotted key as its parts: ``("templates", "train", "run")``."""


class TomlSource:
    """One TOML file: its parsed data and the line of every key."""

    def __init__(self, name: str, text: str, *, base_dir: Path | None) -> None:
        self.name = name
        self.base_dir = base_dir
        try:
            self.data: dict[str, Any] = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            m = re.search(r"line (\d+)", str(e))
            raise ConfigError(
                f"not valid TOML ({e}) [in {name}]", line=int(m.group(1)) if m else None
            ) from e
        self.lines = key_lines(text)

    def line_of(self, path: KeyPath) -> int | None:
        for n in range(len(path), 0, -1):
            line = self.lines.get(path[:n])
            if line is not None:
                return line
        return None


_BARE = r"[A-Za-z0-9_-]+"
_QUOTED = r"\"(?:[^\"\\]|\\.)*\"|'[^']*'"
_PART = rf"(?:{_QUOTED}|{_BARE})"
_DOTTED = rf"{_PART}(?:\s*\.\s*{_PART})*"
_HEADER_RE = re.compile(rf"^\s*\[\[?\s*({_DOTTED})\s*\]\]?\s*(?:#.*)?$")
_KEY_RE = re.compile(rf"^\s*({_DOTTED})\s*=")
_PART_RE = re.compile(_PART)


def _split_dotted(s: str) -> KeyPath:
    parts: list[str] = []
    for m in _PART_RE.finditer(s):
        tok = m.group(0)
        if tok[0] in "\"'":
            tok = tok[1:-1]
        parts.append(tok)
    return tuple(parts)


def key_lines(text: str) -> dict[KeyPath, int]:
    """Map every dotted key path (tables and keys) to the 1-based line where it first appears.

    A line scanner, not a parser: it follows ``[table]``/``[[array]]`` headers and
    ``key = value`` lines (dotted keys too) and skips multi-line strings. Keys inside inline
    tables are not mapped; callers fall back to the nearest mapped parent.
    """
    lines: dict[KeyPath, int] = {}
    table: KeyPath = ()
    in_multiline: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        if in_multiline is not None:
            if raw.count(in_multiline) % 2 == 1:
                in_multiline = None
            continue
        header = _HEADER_RE.match(raw)
        if header:
            table = _split_dotted(header.group(1))
            for n in range(1, len(table) + 1):
                lines.setdefault(table[:n], number)
            continue
        key = _KEY_RE.match(raw)
        if key:
            path = table + _split_dotted(key.group(1))
            for n in range(len(table) + 1, len(path) + 1):
                lines.setdefault(path[:n], number)
            rest = raw[key.end() :]
            for quote in ('"""', "'''"):
                if rest.count(quote) % 2 == 1:
                    in_multiline = quote
                    break
    return lines


def deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def has_path(data: Mapping[str, Any], path: KeyPath) -> int:
    """How many leading parts of ``path`` exist in ``data``."""
    node: Any = data
    for depth, part in enumerate(path):
        if not isinstance(node, Mapping) or part not in node:
            return depth
        node = node[part]
    return len(path)


class Checker:
    """Validation context: knows which file each key came from, to report its line."""

    def __init__(self, builtin: TomlSource, user: TomlSource | None) -> None:
        self.builtin = builtin
        self.user = user

    def source_of(self, path: KeyPath) -> TomlSource:
        if self.user is None:
            return self.builtin
        in_user = has_path(self.user.data, path)
        in_builtin = has_path(self.builtin.data, path)
        if in_user == len(path) or in_user >= in_builtin:
            return self.user
        return self.builtin

    def fail(self, path: KeyPath, message: str, *, key: str | None = None) -> NoReturn:
        """Raise ConfigError for ``path`` (its file and line); ``key`` overrides the dotted
        name shown (e.g. ``templates.x.data.inputs[1].src`` for a list element)."""
        src = self.source_of(path)
        raise ConfigError(
            f"{message} [in {src.name}]", key=key or ".".join(path), line=src.line_of(path)
        )

    # -- typed readers ---------------------------------------------------------------------

    def table(self, path: KeyPath, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(path, "must be a table")
        return value

    def keys(self, path: KeyPath, table: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
        for key in table:
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                self.fail(
                    path + (key,), f"unknown key {key!r}{extra}; known: {', '.join(allowed)}"
                )

    def string(self, path: KeyPath, value: Any, *, empty: bool = True) -> str:
        if not isinstance(value, str):
            self.fail(path, f"must be a string, not {type_name(value)}")
        if not empty and not value.strip():
            self.fail(path, "must not be empty")
        if any(ord(c) < 32 and c not in "\t" for c in value) and path[-1] not in ("help",):
            self.fail(path, "must not contain control characters or newlines")
        return value

    def boolean(self, path: KeyPath, value: Any) -> bool:
        if not isinstance(value, bool):
            self.fail(path, f"must be true or false, not {type_name(value)}")
        return value

    def number(
        self, path: KeyPath, value: Any, *, lo: float | None = None, hi: float | None = None
    ) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(path, f"must be a number, not {type_name(value)}")
        x = float(value)
        if x != x or x in (float("inf"), float("-inf")):
            self.fail(path, "must be a finite number")
        if lo is not None and x < lo:
            self.fail(path, f"must be >= {lo:g}, got {x:g}")
        if hi is not None and x > hi:
            self.fail(path, f"must be <= {hi:g}, got {x:g}")
        return x

    def integer(
        self, path: KeyPath, value: Any, *, lo: int | None = None, hi: int | None = None
    ) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, f"must be an integer, not {type_name(value)}")
        if lo is not None and value < lo:
            self.fail(path, f"must be >= {lo}, got {value}")
        if hi is not None and value > hi:
            self.fail(path, f"must be <= {hi}, got {value}")
        return value

    def money(self, path: KeyPath, value: Any, *, optional: bool = False) -> Decimal | None:
        if optional and isinstance(value, str) and value.strip().lower() == "none":
            return None
        if isinstance(value, bool):
            self.fail(path, "must be an amount in USD such as 5 or 0.40")
        if isinstance(value, int | float):
            amount = Decimal(str(value))
        elif isinstance(value, str):
            try:
                amount = Decimal(value.strip().removeprefix("$"))
            except InvalidOperation:
                self.fail(path, f"must be an amount in USD such as 5 or 0.40, not {value!r}")
        else:
            self.fail(path, f"must be an amount in USD, not {type_name(value)}")
        if not amount.is_finite() or amount < 0:
            self.fail(path, f"must be a non-negative amount, got {value!r}")
        return amount

    def str_list(self, path: KeyPath, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list):
            self.fail(path, f"must be a list of strings, not {type_name(value)}")
        return tuple(self.string(path, v, empty=False) for v in value)

    def enum(self, path: KeyPath, value: Any, kind: type[enum.Enum]) -> Any:
        options = [m.value for m in kind]
        if not isinstance(value, str) or value not in options:
            self.fail(path, f"must be one of {', '.join(options)}, not {value!r}")
        return kind(value)


def type_name(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)
