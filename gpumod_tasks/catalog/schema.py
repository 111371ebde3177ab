"""A small declarative checker for YAML mappings that keeps file:line:column for every problem.

Each field is declared once (type, required, allowed values); ``check_mapping`` walks a ruamel
``CommentedMap`` and returns the clean values plus *every* problem found, so a user fixes a file
in one pass instead of one error per run.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import Problem

ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Field:
    kind: str  # str | int | number | bool | str_list | str_map | map | id | id_list | any
    required: bool = False
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    check: Callable[[Any], str | None] | None = None  # extra rule: returns a message or None


def position(node: Any, key: Any = None, index: int | None = None, at_key: bool = False) -> tuple[int, int]:
    """1-based (line, column) of a key (or list item) inside a ruamel node; (0, 0) if unknown."""
    lc = getattr(node, "lc", None)
    if lc is None:
        return (0, 0)
    try:
        if index is not None:
            line, col = lc.item(index)
        elif key is not None:
            line, col = lc.value(key) if (not at_key and _has_value_pos(lc, key)) else lc.key(key)
        else:
            line, col = lc.line, lc.col
    except (KeyError, IndexError, TypeError):
        return (lc.line + 1, lc.col + 1) if lc.line is not None else (0, 0)
    return (line + 1, col + 1)


def _has_value_pos(lc: Any, key: Any) -> bool:
    try:
        lc.value(key)
        return True
    except (KeyError, TypeError, IndexError):
        return False


class Checker:
    """Collects problems for one file."""

    def __init__(self, file: str):
        self.file = file
        self.problems: list[Problem] = []

    def add(self, node: Any, key: Any, field: str, message: str, index: int | None = None, at_key: bool = False) -> None:
        line, col = position(node, key, index, at_key)
        self.problems.append(Problem(self.file, line, col, field, message))

    def mapping(self, node: Any, schema: dict[str, Field], prefix: str = "") -> dict[str, Any]:
        """Check a mapping against a schema; return the values that passed."""
        out: dict[str, Any] = {}
        if not isinstance(node, dict):
            self.add(node, None, prefix.rstrip(".") or "(document)", f"expected a mapping, got {_kind(node)}")
            return out
        for key in node:
            name = f"{prefix}{key}"
            if key not in schema:
                known = ", ".join(sorted(schema))
                self.add(node, key, name, f"unknown key (known keys: {known})", at_key=True)
                continue
            value = self.value(node, key, node[key], schema[key], name)
            if value is not _BAD:
                out[key] = value
        for key, spec in schema.items():
            if spec.required and key not in node:
                self.add(node, None, f"{prefix}{key}", "required field is missing")
        return out

    def value(self, parent: Any, key: Any, raw: Any, spec: Field, name: str) -> Any:
        kind = spec.kind
        ok: Any = _BAD
        if kind in ("str", "id"):
            if isinstance(raw, str):
                ok = str(raw)
                if kind == "id" and not ID_RE.match(ok):
                    self.add(parent, key, name, f"{ok!r} is not a valid id (must match [a-z0-9][a-z0-9._-]*)")
                    return _BAD
            else:
                self.add(parent, key, name, f"expected a string, got {_kind(raw)}")
                return _BAD
        elif kind == "int":
            if isinstance(raw, int) and not isinstance(raw, bool):
                ok = int(raw)
            else:
                self.add(parent, key, name, f"expected an integer, got {_kind(raw)}")
                return _BAD
        elif kind == "number":
            if isinstance(raw, (int, float)) and not isinstance(raw, bool):
                ok = float(raw)
            else:
                self.add(parent, key, name, f"expected a number, got {_kind(raw)}")
                return _BAD
        elif kind == "bool":
            if isinstance(raw, bool):
                ok = raw
            else:
                self.add(parent, key, name, f"expected true or false, got {_kind(raw)}")
                return _BAD
        elif kind in ("str_list", "id_list"):
            if not isinstance(raw, list):
                self.add(parent, key, name, f"expected a list, got {_kind(raw)}")
                return _BAD
            items = []
            for i, item in enumerate(raw):
                if not isinstance(item, str):
                    self.add(raw, None, f"{name}[{i}]", f"expected a string, got {_kind(item)}", index=i)
                elif kind == "id_list" and not ID_RE.match(item):
                    self.add(raw, None, f"{name}[{i}]", f"{item!r} is not a valid id (must match [a-z0-9][a-z0-9._-]*)", index=i)
                else:
                    items.append(str(item))
            ok = tuple(items)
        elif kind == "str_map":
            if not isinstance(raw, dict):
                self.add(parent, key, name, f"expected a mapping, got {_kind(raw)}")
                return _BAD
            pairs = []
            for k, v in raw.items():
                if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                    self.add(raw, k, f"{name}.{k}", f"expected a string value, got {_kind(v)}")
                else:
                    pairs.append((str(k), str(v)))
            ok = tuple(pairs)
        elif kind == "map":
            if not isinstance(raw, dict):
                self.add(parent, key, name, f"expected a mapping, got {_kind(raw)}")
                return _BAD
            ok = _plain(raw)
        elif kind == "any":
            ok = _plain(raw)
        else:  # pragma: no cover - schema typo
            raise ValueError(kind)
        if spec.choices and ok not in spec.choices:
            self.add(parent, key, name, f"{ok!r} is not one of: {', '.join(spec.choices)}")
            return _BAD
        if spec.minimum is not None and isinstance(ok, (int, float)) and ok < spec.minimum:
            self.add(parent, key, name, f"must be >= {spec.minimum:g}, got {ok}")
            return _BAD
        if spec.check is not None:
            msg = spec.check(ok)
            if msg:
                self.add(parent, key, name, msg)
                return _BAD
        return ok


class _Bad:
    def __repr__(self) -> str:
        return "<bad>"


_BAD: Any = _Bad()


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({value!r})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _plain(value: Any) -> Any:
    """ruamel containers -> plain dict/list/scalars."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return str(value)
    return value
