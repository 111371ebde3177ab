"""The YAML files people write (presets, modes, the inventory): one reader and one field checker.

``read_yaml`` turns a file into ruamel nodes, or into a Problem with file:line:column: unreadable
bytes, YAML syntax, duplicate keys, values YAML itself cannot build (``2001-13-45``).  ``Checker``
walks those nodes against declared fields and collects *every* problem, so a user fixes a
file in one pass.  ``load_twice`` reads with the fast C loader and, only when something is wrong,
again with the round-trip loader, which knows where every key and item is.

What every string must be (these reach unit files, command lines and file names):

- free of control characters: C0 except tab, DEL, C1 and the Unicode line separators.  A newline
  in a preset's ``name`` or an argument word would add systemd directives; tab is allowed because
  every word is quoted where units are written.
- of bounded length: ids at most ``ID_MAX`` bytes, names ``NAME_MAX`` characters, any other text
  ``TEXT_MAX`` characters.

Numbers must be finite (no ``.nan``/``.inf``) and below each field's maximum (``INT_MAX`` when a
field names none).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .errors import CatalogError, Problem

ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: a file name is at most 255 bytes; the longest one gpumod derives from an id is the supervisor's
#: ``gpumod-router-<id>.service.pid``, so an id gets 255 - 14 - 8 - 4 bytes (ids are ASCII)
ID_MAX = 255 - len("gpumod-router-") - len(".service") - len(".pid")
NAME_MAX = 256
TEXT_MAX = 4096
#: the largest integer any field takes unless it names its own maximum (exact as a JSON number)
INT_MAX = 2**53
#: the largest figure in MB anywhere (VRAM, model size, reserve): 16 TiB; anything above is a typo
MB_MAX = 16 * 1024 * 1024
#: how deep a free-form mapping (``unit_vars``, ``vars``) may nest
DEPTH_MAX = 16

_CONTROL_RE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_NAMES = {"\n": "newline", "\r": "carriage return", "\x00": "NUL", "\x1b": "escape", "\x0b": "vertical tab",
                  "\x0c": "form feed", "\x7f": "DEL", "\x85": "next line", "\u2028": "line separator",
                  "\u2029": "paragraph separator"}


def text_problem(value: str, max_len: int = TEXT_MAX) -> str | None:
    """Why a string cannot be used (a control character, too long), or None."""
    m = _CONTROL_RE.search(value)
    if m:
        ch = m.group()
        name = _CONTROL_NAMES.get(ch, "control character")
        return (f"contains a control character (U+{ord(ch):04X}, {name}) at position {m.start() + 1}; "
                "write it on one line without control characters")
    if len(value) > max_len:
        return f"is {len(value)} characters long; at most {max_len} are allowed"
    return None


@dataclass(frozen=True)
class Field:
    kind: str  # str | int | number | bool | str_list | str_map | map | id | id_list | any
    required: bool = False
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None  # numbers: default INT_MAX
    max_len: int | None = None  # strings: default ID_MAX for ids, TEXT_MAX otherwise
    check: Callable[[Any], str | None] | None = None  # extra rule: returns a message or None
    schema: dict[str, Field] | None = None  # map/any: a mapping value is checked against these fields


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
    """Collects problems for one file.  A problem whose node has no position (the fast loader's
    plain dicts) is placed at line 1, so every problem names a line; ``load_twice`` then reads
    the file again with positions."""

    def __init__(self, file: str):
        self.file = file
        self.problems: list[Problem] = []

    def add(self, node: Any, key: Any, field: str, message: str, index: int | None = None, at_key: bool = False) -> None:
        line, col = position(node, key, index, at_key)
        self.problems.append(Problem(self.file, line or 1, col or 1, field, message))

    def mapping(self, node: Any, schema: dict[str, Field], prefix: str = "") -> dict[str, Any]:
        """Check a mapping against a schema; return the values that passed."""
        out: dict[str, Any] = {}
        if not isinstance(node, dict):
            self.add(node, None, prefix.rstrip(".") or "(document)", f"expected a mapping, got {kind_of(node)}")
            return out
        for key in node:
            name = f"{prefix}{key}"
            if not isinstance(key, str) or key not in schema:
                known = ", ".join(sorted(schema))
                self.add(node, key, shown(name), f"unknown key (known keys: {known})", at_key=True)
                continue
            value = self.value(node, key, node[key], schema[key], name)
            if value is not _BAD:
                out[key] = value
        for key, spec in schema.items():
            if spec.required and key not in node:
                self.add(node, None, f"{prefix}{key}", "required field is missing")
        return out

    def text(self, parent: Any, key: Any, name: str, value: str, max_len: int = TEXT_MAX, index: int | None = None) -> bool:
        """Check one string (control characters, length); report at ``parent[key]`` or item ``index``."""
        msg = text_problem(value, max_len)
        if msg:
            self.add(parent, key, name, msg, index=index)
            return False
        return True

    def number(self, parent: Any, key: Any, name: str, value: float, spec: Field, index: int | None = None) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            self.add(parent, key, name, f"must be a finite number, got {value}", index=index)
            return False
        lo = spec.minimum
        hi = INT_MAX if spec.maximum is None else spec.maximum
        if lo is not None and value < lo:
            self.add(parent, key, name, f"must be >= {_limit(lo)}, got {_short_number(value)}", index=index)
            return False
        if value > hi:
            self.add(parent, key, name, f"must be <= {_limit(hi)}, got {_short_number(value)}", index=index)
            return False
        return True

    def value(self, parent: Any, key: Any, raw: Any, spec: Field, name: str) -> Any:
        kind = spec.kind
        ok: Any = _BAD
        if kind in ("str", "id"):
            if not isinstance(raw, str):
                self.add(parent, key, name, f"expected a string, got {kind_of(raw)}")
                return _BAD
            ok = str(raw)
            if kind == "id" and not self.id(parent, key, name, ok):
                return _BAD
            if not self.text(parent, key, name, ok, spec.max_len or TEXT_MAX):
                return _BAD
        elif kind == "int":
            if not (isinstance(raw, int) and not isinstance(raw, bool)):
                self.add(parent, key, name, f"expected an integer, got {kind_of(raw)}")
                return _BAD
            ok = int(raw)
            if not self.number(parent, key, name, ok, spec):
                return _BAD
        elif kind == "number":
            if not (isinstance(raw, (int, float)) and not isinstance(raw, bool)):
                self.add(parent, key, name, f"expected a number, got {kind_of(raw)}")
                return _BAD
            ok = float(raw) if isinstance(raw, float) or abs(raw) <= INT_MAX else raw
            if not self.number(parent, key, name, ok, spec):
                return _BAD
            ok = float(ok)
        elif kind == "bool":
            if not isinstance(raw, bool):
                self.add(parent, key, name, f"expected true or false, got {kind_of(raw)}")
                return _BAD
            ok = raw
        elif kind in ("str_list", "id_list"):
            if not isinstance(raw, list):
                self.add(parent, key, name, f"expected a list, got {kind_of(raw)}")
                return _BAD
            items = []
            bad = False
            for i, item in enumerate(raw):
                iname = f"{name}[{i}]"
                if not isinstance(item, str):
                    self.add(raw, None, iname, f"expected a string, got {kind_of(item)}", index=i)
                elif kind == "id_list" and not self.id(raw, None, iname, item, index=i):
                    pass
                elif self.text(raw, None, iname, item, spec.max_len or TEXT_MAX, index=i):
                    items.append(str(item))
                    continue
                bad = True
            if bad:
                return _BAD
            ok = tuple(items)
        elif kind == "str_map":
            if not isinstance(raw, dict):
                self.add(parent, key, name, f"expected a mapping, got {kind_of(raw)}")
                return _BAD
            pairs = []
            bad = False
            for k, v in raw.items():
                kname = f"{name}.{shown(k)}"
                if not isinstance(k, str):
                    self.add(raw, k, kname, f"expected a name, got {kind_of(k)}", at_key=True)
                elif isinstance(v, bool) or not isinstance(v, (str, int, float)):
                    self.add(raw, k, kname, f"expected a string value, got {kind_of(v)}")
                elif isinstance(v, float) and not math.isfinite(v):
                    self.add(raw, k, kname, f"must be a finite number, got {v}")
                elif self.text(raw, k, kname, str(k), NAME_MAX) and self.text(raw, k, kname, str(v)):
                    pairs.append((str(k), str(v)))
                    continue
                bad = True
            if bad:
                return _BAD
            ok = tuple(pairs)
        elif kind == "map" and not isinstance(raw, dict):
            self.add(parent, key, name, f"expected a mapping, got {kind_of(raw)}")
            return _BAD
        elif kind in ("map", "any") and spec.schema is not None and isinstance(raw, dict):
            before = len(self.problems)
            ok = self.mapping(raw, spec.schema, prefix=f"{name}.")
            if len(self.problems) > before:
                return _BAD
        elif kind in ("map", "any"):
            ok = self.plain(parent, key, raw, name)
        else:  # pragma: no cover - schema typo
            raise ValueError(kind)
        if ok is _BAD:
            return _BAD
        if spec.choices and ok not in spec.choices:
            self.add(parent, key, name, f"{ok!r} is not one of: {', '.join(spec.choices)}")
            return _BAD
        if spec.check is not None:
            msg = spec.check(ok)
            if msg:
                self.add(parent, key, name, msg)
                return _BAD
        return ok

    def id(self, parent: Any, key: Any, name: str, value: str, index: int | None = None, max_len: int = ID_MAX) -> bool:
        if not ID_RE.match(value):
            shown = value if len(value) <= 80 else value[:80] + "..."
            self.add(parent, key, name, f"{shown!r} is not a valid id (must match [a-z0-9][a-z0-9._-]*)", index=index)
            return False
        if len(value) > max_len:
            self.add(parent, key, name, f"is {len(value)} characters long; an id is at most {max_len} "
                     "(it becomes part of unit and file names)", index=index)
            return False
        return True

    def plain(self, parent: Any, key: Any, raw: Any, name: str, depth: int = 0, index: int | None = None) -> Any:
        """A free-form value as plain dict/list/scalars, every string checked; _BAD on any problem."""
        if depth > DEPTH_MAX:
            self.add(parent, key, name, f"nests deeper than {DEPTH_MAX} levels", index=index)
            return _BAD
        if isinstance(raw, dict):
            out: dict[str, Any] = {}
            bad = False
            for k, v in raw.items():
                kname = f"{name}.{shown(k)}"
                if not isinstance(k, str):
                    self.add(raw, k, kname, f"expected a name, got {kind_of(k)}", at_key=True)
                    bad = True
                    continue
                if not self.text(raw, k, kname, k, NAME_MAX):
                    bad = True
                    continue
                got = self.plain(raw, k, v, kname, depth + 1)
                if got is _BAD:
                    bad = True
                else:
                    out[str(k)] = got
            return _BAD if bad else out
        if isinstance(raw, list):
            items = []
            bad = False
            for i, v in enumerate(raw):
                got = self.plain(raw, None, v, f"{name}[{i}]", depth + 1, index=i)
                if got is _BAD:
                    bad = True
                else:
                    items.append(got)
            return _BAD if bad else items
        if isinstance(raw, str):
            return str(raw) if self.text(parent, key, name, raw, index=index) else _BAD
        if raw is None or isinstance(raw, bool):
            return raw
        if isinstance(raw, (int, float)):
            return raw if self.number(parent, key, name, raw, Field("number"), index=index) else _BAD
        self.add(parent, key, name, f"expected a string, number, boolean, list or mapping, got {kind_of(raw)}", index=index)
        return _BAD

    def arg_list(self, node: Any, key: str, name: str) -> tuple[str, ...] | None:
        """``node[key]`` as command-line words: a list of strings or numbers (never a string,
        which would be split into characters).  None when absent or wrong."""
        if not isinstance(node, dict) or key not in node:
            return None
        raw = node[key]
        if not isinstance(raw, list):
            hint = " (write [--flag, value] or one item per line)" if isinstance(raw, str) else ""
            self.add(node, key, name, f"expected a list of arguments, got {kind_of(raw)}{hint}")
            return None
        words = []
        for i, item in enumerate(raw):
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                self.add(raw, None, f"{name}[{i}]", f"expected a string or a number, got {kind_of(item)}", index=i)
                return None
            words.append(str(item))
        return tuple(words)


class _Bad:
    def __repr__(self) -> str:
        return "<bad>"


_BAD: Any = _Bad()


def _limit(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _short_number(value: float) -> str:
    text = str(value)
    return text if len(text) <= 24 else f"{value:.3g}"


def shown(value: Any) -> str:
    text = str(value)
    text = _CONTROL_RE.sub("?", text)
    return text if len(text) <= 80 else text[:80] + "..."


def kind_of(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({value!r})"
    if isinstance(value, int):
        return f"an integer ({_short_number(value)})"
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:60] + "..."
        return f"a string ({shown!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    tag = getattr(value, "tag", None)
    if tag is not None and getattr(tag, "value", None):
        return f"a value tagged {tag.value}"
    return type(value).__name__


# -- reading ------------------------------------------------------------------------------------


def _yaml(fast: bool = False) -> Any:
    from ruamel.yaml import YAML

    # fast: the C-backed safe loader (no positions); rt: the round-trip loader, which knows the
    # line and column of every key and is used to report problems precisely.
    y = YAML(typ="safe", pure=False) if fast else YAML(typ="rt")
    y.allow_duplicate_keys = False
    return y


def read_yaml(path: Path, rel: str, problems: list[Problem], fast: bool = False) -> Any:
    """The document in ``path`` (None when it cannot be read; the reason is added to ``problems``).

    ``fast``: a file whose very bytes were read before comes from ``_DocCache`` (no YAML parsed)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        problems.append(Problem(rel, 0, 0, "", f"cannot read: {exc.strerror or exc}"))
        return None
    if fast:
        hit = _DOCS.get(data)
        if hit is not _MISS:
            return hit
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        problems.append(Problem(rel, line, col, "", "not UTF-8 text"))
        return None
    try:
        doc = _yaml(fast).load(text)
        if fast:
            _DOCS.put(data, doc)
        if not fast:
            # the round-trip loader turns an alias to its own enclosing node into null, so the
            # cycle the fast loader built is found on the composed nodes
            cycle = _alias_cycle(text)
            if cycle:
                problems.append(Problem(rel, cycle[0], cycle[1], "", "YAML error: an alias refers to a mapping or list that contains it"))
                return None
        return doc
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = (exc.problem or str(exc)).strip()
        if "duplicate key" in str(exc).lower():
            what = "duplicate key: " + str(exc).split("found duplicate key")[-1].split("\n")[0].strip(' "')
        problems.append(Problem(rel, line, col, "", f"YAML error: {shown(what)}"))
    except YAMLError as exc:
        problems.append(Problem(rel, 1, 1, "", f"YAML error: {shown(exc)}"))
    except RecursionError:
        problems.append(Problem(rel, 1, 1, "", "YAML error: nested too deeply"))
    except (ValueError, TypeError, OverflowError, AttributeError) as exc:
        # a value YAML recognised but cannot build: a date like 2001-13-45, !!int 'x', an
        # integer of thousands of digits
        line, col = _unbuildable_scalar(text)
        problems.append(Problem(rel, line, col, "", f"YAML error: cannot read this value: {shown(exc)}"))
    return None


_MISS = object()


class _DocCache:
    """What the fast loader made of a file's exact bytes, kept between runs (``$GPUMOD_STATE_DIR``
    or ``~/.cache/gpumod``, one marshal file): a command reads the same few dozen catalog files
    every time, and parsing them (with importing ruamel) was ~30 ms of each.  Keyed by the whole
    content, so an edited file is parsed again; a document marshal cannot hold (a timestamp) is
    not kept; any trouble with the file only means parsing."""

    LIMIT = 512  # documents kept

    def __init__(self) -> None:
        self._docs: dict[bytes, bytes] | None = None
        self._new = False

    def _path(self) -> Path:
        from .paths import cache_file

        return cache_file("yaml-docs.marshal")

    def _load(self) -> dict[bytes, bytes]:
        if self._docs is None:
            import marshal

            try:
                docs = marshal.loads(self._path().read_bytes())
                self._docs = docs if isinstance(docs, dict) else {}
            except (OSError, ValueError, EOFError, TypeError):
                self._docs = {}
        return self._docs

    def get(self, data: bytes) -> Any:
        import marshal

        blob = self._load().get(data)
        if blob is None:
            return _MISS
        try:
            return marshal.loads(blob)  # a fresh document for every caller
        except (ValueError, EOFError, TypeError):
            return _MISS

    def put(self, data: bytes, doc: Any) -> None:
        import marshal

        try:
            blob = marshal.dumps(doc)
        except ValueError:
            return
        docs = self._load()
        if docs.get(data) != blob:
            docs[data] = blob
            if not self._new:
                import atexit

                atexit.register(self.flush)
            self._new = True

    def flush(self) -> None:
        """Write the documents out (at exit, once something new was parsed), atomically."""
        import marshal

        from .paths import write_cache

        if not self._new or self._docs is None:
            return
        self._new = False
        write_cache(self._path(), marshal.dumps(dict(list(self._docs.items())[-self.LIMIT:])))


_DOCS = _DocCache()


def _alias_cycle(text: str) -> tuple[int, int] | None:
    """Position of a mapping or list that contains itself through an alias, or None."""
    from ruamel.yaml.nodes import MappingNode, SequenceNode

    try:
        root = _yaml(fast=False).compose(text)
    except Exception:  # noqa: BLE001 - load() already succeeded; nothing more to find
        return None
    if root is None:
        return None
    open_ids: set[int] = set()
    done: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, leaving = stack.pop()
        if leaving:
            open_ids.discard(id(node))
            done.add(id(node))
            continue
        if id(node) in open_ids:
            return (node.start_mark.line + 1, node.start_mark.column + 1)
        if id(node) in done or not isinstance(node, (MappingNode, SequenceNode)):
            continue
        open_ids.add(id(node))
        stack.append((node, True))
        children = node.value if isinstance(node, SequenceNode) else [x for kv in node.value for x in kv]
        stack.extend((c, False) for c in reversed(children))
    return None


def _unbuildable_scalar(text: str) -> tuple[int, int]:
    """Where the first scalar is that YAML cannot build; (1, 1) when it cannot be found."""
    from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode

    y = _yaml(fast=False)
    try:
        root = y.compose(text)
    except Exception:  # noqa: BLE001 - only a position is sought; the error itself is reported
        return (1, 1)
    stack: list[Any] = [root]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, ScalarNode):
            try:
                y.constructor.construct_object(node, deep=True)
            except Exception:  # noqa: BLE001
                return (node.start_mark.line + 1, node.start_mark.column + 1)
        elif isinstance(node, SequenceNode):
            stack.extend(reversed(node.value))
        elif isinstance(node, MappingNode):
            for k, v in reversed(node.value):
                stack.extend((v, k))
    return (1, 1)


def relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


T = TypeVar("T")


def load_twice(load: Callable[[bool], T]) -> T:
    """``load(fast)``: try the fast loader; when it finds any problem, load again with positions."""
    try:
        return load(True)
    except CatalogError:
        return load(False)
