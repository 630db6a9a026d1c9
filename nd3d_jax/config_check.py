"""The one checker of config values: each key's type, range, choices and path kind.

A schema is a nested dict mirroring a config: sections are dicts, leaves are `Spec`s, and a
section that becomes a dataclass is `from_dataclass(cls)` (field types from the annotations,
ranges and choices from the class's `LIMITS`, so a new field is covered with no edit here).
`check(config, schema)` reports the first bad value as one `UserError` line naming the key,
the value and what is allowed:

    --config.data.batch_size=0: out of range; use an int >= 1
    unknown sampler 'dpm' (--config.sample.sampler); use one of: ddim, ddpm

Values are checked first (every key), paths second (`paths=True`: folders that must exist or
be writable, weight folders, prepared data), so a typo is reported before a missing folder.
The schemas of the commands are `nd3d_jax.config_schema`; `nd3d_jax.cli.run` checks
every config there before the command's `main` runs.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import re
import tempfile
import types
import typing
from collections.abc import Callable, Mapping, Sequence

from nd3d_jax.errors import UserError

_KIND_NAMES = {"int": "an int", "float": "a number", "bool": "true or false", "str": "a string",
               "seq": "a sequence", "dict": "a mapping", "none": "none"}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Spec:
    """What one key accepts. `kinds`: of "int", "float" (ints too), "bool", "str", "seq",
    "dict", "none"; numbers in [low, high] (open ends with `low_open` / `high_open`) or one of
    `also`, multiples of `multiple`; strings one of `choices` (when given), matching `pattern`,
    non-empty unless `empty`; sequences of `item`s, `length` long (or at least `min_length`);
    `path`: a `PATHS` check run in the path phase."""

    kinds: tuple[str, ...]
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    also: tuple = ()
    multiple: int | None = None
    choices: tuple = ()
    pattern: str = ""
    empty: bool = True
    item: Spec | None = None
    length: int | None = None
    min_length: int = 0
    path: str = ""
    note: str = ""

    @property
    def numeric(self) -> bool:
        return bool({"int", "float"} & set(self.kinds))

    def allowed(self) -> str:
        """What is allowed, in words ("an int >= 1", "one of: a, b", ...)."""
        if self.choices:
            text = "one of: " + ", ".join(map(_show, self.choices))
        elif self.path:
            name = self.path.partition(":")[0]
            text = PATH_WORDS.get(name, "a path")
            text += ", or empty (not set)" if name not in NEED_VALUE else ""
        else:
            names = []
            for k in self.kinds:
                if k == "seq" and self.item is not None:
                    n = f"{self.length} " if self.length is not None else ""
                    at_least = f" (at least {self.min_length})" if self.min_length else ""
                    names.append(f"a sequence of {n}{_plural(self.item.allowed())}{at_least}")
                elif k == "seq" and self.length is not None:
                    names.append(f"a sequence of {self.length}")
                elif k != "none":
                    names.append(_KIND_NAMES[k])
            text = " or ".join(names)
            bounds = _bounds(self)
            text += f" {bounds}" if bounds else ""
            if self.multiple:
                text += f", a multiple of {self.multiple}"
            if self.also:
                text += f", or {' or '.join(map(_show, self.also))}"
            if "str" in self.kinds and not self.empty:
                text = f"a non-empty {text[2:]}" if text.startswith("a ") else text
        if "none" in self.kinds:
            text += " (or none)"
        return f"{text}{f' ({self.note})' if self.note else ''}"

    def problem(self, value) -> str | None:
        """Why `value` is not allowed (None when it is)."""
        if value is None:
            return None if "none" in self.kinds else "not set"
        kind = _kind_of(value)
        if kind not in self.kinds and not (kind == "int" and "float" in self.kinds):
            got = _KIND_NAMES.get(kind, f"a {kind}")
            return f"{got}, not {_KIND_NAMES.get(self.kinds[0], '?')}"
        if kind in ("int", "float"):
            if value in self.also and not isinstance(value, bool):
                return None
            if not math.isfinite(value):
                return "not finite"
            if not _in_bounds(self, value) or (self.multiple and value % self.multiple):
                return "out of range"
        if kind == "str":
            if self.choices and value not in self.choices:
                return "not one of the choices"
            if not value and not self.empty:
                return "empty"
            if value and self.pattern and not re.fullmatch(self.pattern, value):
                return "malformed"
        if kind == "seq":
            if self.length is not None and len(value) != self.length:
                return f"{len(value)} long, not {self.length}"
            if len(value) < self.min_length:
                return f"{len(value)} long, fewer than {self.min_length}"
            if self.item is not None:
                for i, v in enumerate(value):
                    if (why := self.item.problem(v)) is not None:
                        return f"item {i} ({_show(v)}) {why}"
        return None


def _kind_of(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, numbers.Integral):
        return "int"
    if isinstance(value, numbers.Real):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, Mapping):
        return "dict"
    if isinstance(value, Sequence):
        return "seq"
    return type(value).__name__


def _in_bounds(s: Spec, v) -> bool:
    lo = s.low is None or (v > s.low if s.low_open else v >= s.low)
    hi = s.high is None or (v < s.high if s.high_open else v <= s.high)
    return lo and hi


def _bounds(s: Spec) -> str:
    if s.low is not None and s.high is not None:
        return f"in {'(' if s.low_open else '['}{s.low:g}, {s.high:g}{')' if s.high_open else ']'}"
    if s.low is not None:
        return f"{'>' if s.low_open else '>='} {s.low:g}"
    if s.high is not None:
        return f"{'<' if s.high_open else '<='} {s.high:g}"
    return ""


def _plural(text: str) -> str:
    for one, many in (("an int", "ints"), ("a number", "numbers"), ("a string", "strings"),
                      ("a non-empty string", "non-empty strings"),
                      ("a sequence", "sequences"), ("true or false", "booleans")):  # fmt: skip
        if text.startswith(one):
            return many + text[len(one) :]
    return text


def _show(v) -> str:
    return repr(v) if isinstance(v, str) and not v else str(v)


# ------------------------------------------------------------------------ constructors
def Int(low=None, high=None, **kw) -> Spec:
    return Spec(("int",), low, high, **kw)


def Float(low=None, high=None, **kw) -> Spec:
    return Spec(("float",), low, high, **kw)


def Bool(**kw) -> Spec:
    return Spec(("bool",), **kw)


def Str(**kw) -> Spec:
    return Spec(("str",), **kw)


def Choice(*values, **kw) -> Spec:
    return Spec(("str",), choices=tuple(values), **kw)


def Seq(item: Spec | None = None, **kw) -> Spec:
    return Spec(("seq",), item=item, **kw)


def Path(kind: str, **kw) -> Spec:
    """A path string checked in the path phase by `PATHS[kind]` (empty: not set, allowed)."""
    return Spec(("str",), path=kind, **kw)


def from_dataclass(cls, open_: bool = False) -> dict:
    """The schema of a config section that becomes `cls(**section)`: each field's type from
    its annotation, refined by `cls.LIMITS[field]` (a `Spec`) where the class declares one.
    `open_`: keys that are not fields are allowed (Hugging Face configs carry keys we ignore)."""
    hints = typing.get_type_hints(cls)
    limits = getattr(cls, "LIMITS", {})
    out: dict = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        nested = isinstance(tp, type) and dataclasses.is_dataclass(tp)
        out[f.name] = from_dataclass(tp) if nested else limits.get(f.name) or spec_of_type(tp)
    out[OPEN] = open_
    return out


OPEN = "__open__"  # a schema section's marker: keys outside it are not errors


def spec_of_type(tp) -> Spec:
    """The `Spec` of an annotation: int, float, bool, str, tuple[X, ...], unions, Optional."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        specs = [spec_of_type(a) for a in typing.get_args(tp)]
        kinds = tuple(dict.fromkeys(k for s in specs for k in s.kinds))
        items = [s.item for s in specs if s.item is not None]
        return Spec(kinds, item=items[0] if items else None)
    if tp is type(None):
        return Spec(("none",))
    if origin in (tuple, list) or tp in (tuple, list):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return Seq(spec_of_type(args[0]) if len(set(args)) == 1 else None)
    if origin in (dict, Mapping) or tp is dict:
        return Spec(("dict",))
    return {int: Int(), float: Float(), bool: Bool(), str: Str()}.get(tp, Spec(tuple(_KIND_NAMES)))


def check_fields(obj, prefix: str) -> None:
    """A dataclass instance's fields against `from_dataclass` of its class (its `__post_init__`
    check, so library callers get the same limits as configs): a `UserError` naming the field."""
    schema = from_dataclass(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(schema[f.name], dict):  # a nested dataclass checks itself
            continue
        if (why := schema[f.name].problem(value)) is not None:
            raise UserError(f"{prefix}: {f.name}={_show_value(value)}: {why}; use "
                            f"{schema[f.name].allowed()}")  # fmt: skip


# ------------------------------------------------------------------------ paths
def _writable_folder(path: str, _config) -> str | None:
    """A folder to write into: an existing writable folder, or one that can be created."""
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.exists(path) and not os.path.isdir(path):
        return "is a file, not a folder"
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        return f"{probe} is a file, not a folder"
    try:  # a real write (access() says yes to root on read-only file systems)
        with tempfile.TemporaryFile(dir=probe, prefix=".nd3d_write_check"):
            pass
    except OSError as e:
        where = "" if probe == path else f": cannot create it in {probe}"
        return f"not writable{where} ({e.strerror or e})"
    return None


def _folder(path: str, _config) -> str | None:
    path = os.path.expanduser(path)
    if not os.path.exists(path):
        return "no such folder"
    if not os.path.isdir(path):
        return "is a file, not a folder"
    if not os.access(path, os.R_OK | os.X_OK):
        return "not readable"
    return None


def _file(path: str, _config) -> str | None:
    path = os.path.expanduser(path)
    if not os.path.exists(path):
        return "no such file"
    if os.path.isdir(path):
        return "is a folder, not a file"
    if not os.access(path, os.R_OK):
        return "not readable"
    return None


# kind -> check(value, resolved config) -> problem or None; the command schemas add theirs
PATHS: dict[str, Callable[[str, Mapping], str | None]] = {
    "folder": _folder,
    "file": _file,
    "out": _writable_folder,
}


# ------------------------------------------------------------------------ checking
def _show_value(v) -> str:
    return repr(tuple(v)) if isinstance(v, list) else repr(v)


def _flag(key: str, sources: Mapping[str, str]) -> str:
    return sources.get(key) or f"--config.{key}"


def _walk(node: Mapping, schema: dict, prefix: str = ""):
    """(dotted key, value, spec) of every leaf of `node`: spec None for a key the schema does
    not know (in a plain section), "unknown" for one a closed (dataclass) section lacks. In
    the schema's order (so a command reports what it would meet first), then the rest."""
    order = [k for k in schema if k in node] + [k for k in node if k not in schema]
    for key in order:
        value = node[key]
        dotted = f"{prefix}{key}"
        spec = schema.get(key)
        if isinstance(spec, dict):
            if isinstance(value, Mapping):
                yield from _walk(value, spec, f"{dotted}.")
                continue
            spec = Spec(("dict",))  # a section replaced by a value: the wrong type
        elif spec is None and schema.get(OPEN) is False:
            spec = "unknown"
        yield dotted, value, spec


def leaves(config, schema: dict) -> list:
    """(dotted key, value, Spec | None | "unknown") of every leaf of `config` (see `_walk`)."""
    d = config.to_dict() if hasattr(config, "to_dict") else config
    return list(_walk(d, schema))


def problems(config, schema: dict, sources: Mapping[str, str] | None = None):
    """Every value problem of `config` (a ConfigDict or dict), one line each (lazily)."""
    sources = sources or {}
    d = config.to_dict() if hasattr(config, "to_dict") else config
    for key, value, spec in _walk(d, schema):
        if spec is None:
            continue  # a key no schema knows (checked by the schema coverage test)
        if spec == "unknown":
            section = key.rpartition(".")[0]
            yield f"{_flag(key, sources)}: unknown key in section {section!r}"
            continue
        why = spec.problem(value)
        if why is None:
            continue
        if why == "not one of the choices":
            leaf = key.rpartition(".")[2]
            yield (f"unknown {leaf} {_show_value(value)} ({_flag(key, sources)}); use "
                   f"{spec.allowed()}")  # fmt: skip
        else:
            yield f"{_flag(key, sources)}={_show_value(value)}: {why}; use {spec.allowed()}"


def path_problems(config, schema: dict, sources: Mapping[str, str] | None = None, kinds=None):
    """Every path problem (folders, files, writable outputs, weights, prepared data), lazily;
    `kinds`: only paths of these `PATHS` kinds (None: all)."""
    sources = sources or {}
    d = config.to_dict() if hasattr(config, "to_dict") else config
    for key, value, spec in _walk(d, schema):
        if not isinstance(spec, Spec) or not spec.path or not isinstance(value, str):
            continue
        if kinds is not None and spec.path.partition(":")[0] not in kinds:
            continue
        why = path_problem(spec.path, value, d)
        if why is not None:
            yield f"{_flag(key, sources)}={value!r}: {why}; use {spec.allowed()}"


def path_problem(kind: str, value: str, config: Mapping) -> str | None:
    """`PATHS[kind]` of a value ("kind:arg" passes `arg`); an empty value is not set: fine."""
    name, _, arg = kind.partition(":")
    if not value and name not in NEED_VALUE:
        return None
    return PATHS[name](value, config, arg) if arg else PATHS[name](value, config)


NEED_VALUE: set[str] = set()  # path kinds that decide themselves when the value is empty
PATH_WORDS = {
    "folder": "an existing folder",
    "file": "an existing file",
    "out": "a writable folder (created if missing)",
}  # kind -> what is allowed, in words


def check(config, schema: dict, *, values=True, paths=True, sources=None) -> None:
    """Raises one `UserError` line for the first bad value (`values`), then the first bad
    path (`paths`: True, False or the `PATHS` kinds to check: a command that reads no data
    checks no data folder) of `config`. `sources`: {dotted key: the flag that set it}."""
    first = next(iter(problems(config, schema, sources)), None) if values else None
    if first is None and paths:
        kinds = None if paths is True else set(paths)
        first = next(iter(path_problems(config, schema, sources, kinds)), None)
    if first is not None:
        raise UserError(first)


def spec_at(schema: dict | None, dotted: str) -> Spec | None:
    """The `Spec` of a dotted key in `schema` (None when it names none)."""
    node = schema
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, Spec) else None


def check_flags(specs: Mapping[str, Spec], values: Mapping[str, object], paths: bool = True):
    """A command's own flags (`--out=...`, `--steps=...`): strings parsed to the spec's type
    (int, float, bool), then checked like config values; returns the parsed values."""
    parsed = dict(values)
    for name, spec in specs.items():
        raw = values.get(name)
        if raw is None:
            continue
        value = _parse(raw, spec) if isinstance(raw, str) else raw
        why = "not parseable" if value is _BAD else spec.problem(value)
        if why is None and paths and spec.path:
            why = path_problem(spec.path, value, {})
        if why is not None:
            raise UserError(f"--{name}={raw}: {why}; use {spec.allowed()}")
        parsed[name] = value
    return parsed


_BAD = object()


def _parse(raw: str, spec: Spec):
    kinds = spec.kinds
    try:
        if "int" in kinds and re.fullmatch(r"[+-]?\d+", raw.strip()):
            return int(raw)
        if "float" in kinds:
            return float(raw)
        if "int" in kinds:
            return _BAD
    except ValueError:
        return _BAD
    if "bool" in kinds:
        low = raw.strip().lower()
        return {"true": True, "1": True, "yes": True, "false": False, "0": False,
                "no": False}.get(low, _BAD)  # fmt: skip
    return raw
