"""Declared params: :class:`Param`, :data:`REQUIRED`, :func:`check_params`, and
:func:`require_column` for the input schema; TOML-shaped hints for their messages."""

from __future__ import annotations

import copy
import difflib
import json
import re
from typing import Any, Iterable, Mapping

import pyarrow as pa

from .errors import ConfigError


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: Marks a :class:`Param` without a default.
REQUIRED: Any = _Required()

_TYPE_NAMES = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "a table",
    type(None): "null",
}


class Param:
    """One declared params key, for ``@stage(params={...})``.

    A plain value in that dict is shorthand for ``Param(default=value)``.

    :param default: the value when the key is absent; :data:`REQUIRED` (the default) makes the
        key required.
    :param type: ``bool``, ``int``, ``float``, ``str``, ``list`` or ``dict``, or a tuple of
        them; inferred from ``default`` when omitted (``None`` default: any type). ``float``
        accepts integers (and converts them); ``int`` does not accept booleans.
    :param items: the type of a list's elements, or of a table's values.
    :param choices: the allowed values.
    :param example: a TOML value shown in hints, e.g. ``'["cat", "dog"]'``.
    :param doc: what the key means (for the plugin's own documentation).
    """

    def __init__(
        self,
        default: Any = REQUIRED,
        type: Any = None,
        *,
        items: Any = None,
        choices: Iterable[Any] | None = None,
        example: str | None = None,
        doc: str = "",
    ):
        if type is None and default is not REQUIRED and default is not None:
            type = float if isinstance(default, float) else default.__class__
        self.default = default
        self.type = type
        self.items = items
        self.choices = list(choices) if choices is not None else None
        self.example = example
        self.doc = doc

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def _hint(self, key: str) -> str | None:
        if self.example is not None:
            return f"{_toml_key(key)} = {self.example}"
        if self.choices:
            return f"{_toml_key(key)} = {_toml(self.choices[0])}"
        if not self.required and self.default is not None:
            return f"{_toml_key(key)} = {_toml(self.default)}"
        return None

    def validate(self, key: str, value: Any) -> Any:
        """The checked (and, for floats, converted) value; raises :class:`ConfigError`."""
        value = _coerce(key, key, value, self.type, self._hint(key))
        if self.items is not None and isinstance(value, list):
            value = [_coerce(key, f"{key}[{i}]", v, self.items, self._hint(key)) for i, v in enumerate(value)]
        elif self.items is not None and isinstance(value, dict):
            value = {k: _coerce(key, f"{key}.{k}", v, self.items, self._hint(key)) for k, v in value.items()}
        if self.choices is not None and value not in self.choices:
            shown = ", ".join(_toml(c) for c in self.choices)
            close = _close(str(value), [str(c) for c in self.choices])
            hint = f"did you mean {_toml(close)}?" if close else self._hint(key)
            raise ConfigError(key, f"must be one of {shown}, got {_toml(value)}", hint)
        return value


def _coerce(key: str, where: str, value: Any, typ: Any, hint: str | None) -> Any:
    if typ is None:
        return value
    types = typ if isinstance(typ, tuple) else (typ,)
    for t in types:
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t is type(None) and value is None:
            return None
        if t not in (float, int, type(None)) and isinstance(value, t):
            return value
    wanted = " or ".join(_TYPE_NAMES.get(t, getattr(t, "__name__", str(t))) for t in types)
    raise ConfigError(key, f"{where} must be {wanted}, got {_show(value)}", hint)


def _show(value: Any) -> str:
    kind = _TYPE_NAMES.get(type(value), type(value).__name__)
    text = _toml(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({kind})"


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _toml(value: Any) -> str:
    """A value written as TOML (for messages and hints)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{_toml_key(str(k))} = {_toml(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    return json.dumps(str(value))


def _close(word: str, options: Iterable[str]) -> str | None:
    found = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return found[0] if found else None


def check_params(params: Mapping[str, Any] | None, spec: Mapping[str, Any]) -> dict:
    """Checks ``params`` against a declaration and returns them with defaults filled in.

    ``spec`` maps each allowed key to a :class:`Param` or to a default value. Raises
    :class:`ConfigError` for an unknown key (with a "did you mean" hint), a missing required
    key, a value of the wrong type, or a value outside ``choices``.
    """
    params = dict(params or {})
    decl = {k: v if isinstance(v, Param) else Param(v) for k, v in spec.items()}
    for key in params:
        if key not in decl:
            close = _close(key, decl)
            if close:
                hint = f'did you mean "{close}"?'
            elif decl:
                hint = "known params: " + ", ".join(decl)
            else:
                hint = "this plugin takes no params"
            raise ConfigError(key, f'unknown param "{key}"', hint)
    out = {}
    for key, p in decl.items():
        if key in params:
            out[key] = p.validate(key, params[key])
        elif p.required:
            raise ConfigError(key, f'"{key}" is required', p._hint(key))
        else:
            out[key] = copy.deepcopy(p.default)
    return out


def _type_matches(t: pa.DataType, wanted: Any) -> bool:
    if isinstance(wanted, pa.DataType):
        return t == wanted
    if callable(wanted):
        return bool(wanted(t))
    return False


def _describe_wanted(wanted: Any) -> str:
    if isinstance(wanted, pa.DataType):
        return str(wanted)
    name = getattr(wanted, "__name__", str(wanted))
    return name[3:] if name.startswith("is_") else name


def require_column(schema: pa.Schema, name: str, *types: Any, key: str | None = None) -> pa.Field:
    """Returns the field ``name`` of ``schema``, or raises :class:`ConfigError` on ``key``.

    ``types`` (optional) are the accepted Arrow types: ``pa.DataType`` instances, tuples of
    them (:data:`TEXT_TYPES`, :data:`BINARY_TYPES`), or predicates such as
    ``pa.types.is_floating``. ``key`` is the params key that named the column (usually
    ``"column"``), so the diagnostic points at it.
    """
    flat: list[Any] = []
    for t in types:
        flat.extend(t if isinstance(t, (tuple, list)) else [t])
    index = schema.get_field_index(name)
    if index < 0:
        close = _close(name, schema.names)
        hint = f'did you mean "{close}"?' if close else "the input has: " + ", ".join(schema.names)
        raise ConfigError(key, f'column "{name}" is not in the input', hint)
    field = schema.field(index)
    if flat and not any(_type_matches(field.type, t) for t in flat):
        wanted = " or ".join(dict.fromkeys(_describe_wanted(t) for t in flat))
        raise ConfigError(key, f'column "{name}" is {field.type}, expected {wanted}')
    return field
