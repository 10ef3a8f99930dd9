"""Write pipe ``process`` stages in Python.

A ``process`` stage runs a program that talks to pipe over stdin/stdout (the contract is
``plugins/PROTOCOL.md``, version 1). This module speaks that protocol, so a plugin is one
decorated function::

    import pyarrow as pa
    import pyarrow.compute as pc
    from pipe_plugin import stage

    @stage(adds={"chars": pa.int64()})
    def count_chars(batch, ctx):
        return ctx.with_columns(batch, chars=pc.utf8_length(batch["text"]))

    if __name__ == "__main__":
        count_chars.run()

Two modes:

* **batch mode** (the default): ``fn(batch: pa.RecordBatch, ctx) -> RecordBatch | Table | None``
  receives each input batch and returns the rows it became (``None``: no rows).
* **row mode** (``@stage(rows=True, adds=...)``): ``fn(row: dict, ctx) -> dict | None`` is
  called for each row; the returned values are merged into the row, ``None`` drops it, and an
  exception becomes that row's error (``"ExcType: message"``).

The output schema is declared at describe time, before any data moves: by ``schema=`` (a
``pa.Schema``, or ``callable(input_schema, params) -> pa.Schema``), by ``adds=`` (input fields
plus these), or, in batch mode without either, inferred by calling ``fn`` once on an empty batch
of the input schema.

The module depends on pyarrow only. ``python -m pipe_plugin SCRIPT ...`` runs a plugin over
local files the way pipe would (see ``python -m pipe_plugin --help``), and
:func:`run_batches` does the same in-process, for unit tests.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import os
import re
import sys
import traceback
from typing import Any, Callable, Iterable, Mapping

import pyarrow as pa

__version__ = "0.1.0"

#: The protocol version this module speaks.
PROTOCOL = 1

__all__ = [
    "PROTOCOL",
    "BINARY_TYPES",
    "TEXT_TYPES",
    "ConfigError",
    "Context",
    "LocalRun",
    "Param",
    "PluginError",
    "REQUIRED",
    "Stage",
    "check_params",
    "require_column",
    "run_batches",
    "stage",
]

#: Arrow types that hold text (Utf8 and its large and view variants).
TEXT_TYPES = (pa.string(), pa.large_string(), pa.string_view())
#: Arrow types that hold bytes (Binary and its large and view variants).
BINARY_TYPES = (pa.binary(), pa.large_binary(), pa.binary_view())


# --------------------------------------------------------------------------------------------
# Errors


class ConfigError(Exception):
    """A problem with the stage's params or input schema, found before any data moves.

    Raise it from a ``check`` hook, from ``setup``/``schema=`` callables, or from ``fn`` while
    the output schema is being inferred. pipe reports it (``pipe validate`` and ``pipe run``)
    with the stage id and, when ``key`` names a params key, the line of that key in the
    pipeline file.

    :param key: the params key at fault, or ``None``.
    :param message: what is wrong, e.g. ``"must be a non-empty list of strings"``.
    :param hint: optional, what to write instead, e.g. ``'keywords = ["cat"]'``.
    """

    def __init__(self, key: str | None, message: str, hint: str | None = None):
        super().__init__(message)
        self.key = key
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        text = f"{self.key}: {self.message}" if self.key else self.message
        return f"{text} (hint: {self.hint})" if self.hint else text


class PluginError(Exception):
    """Raised by :func:`run_batches` for what pipe would report as a failure of the plugin
    (a result whose schema differs from the declared one, for instance)."""


# --------------------------------------------------------------------------------------------
# Params


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


# --------------------------------------------------------------------------------------------
# Context


class Context:
    """What a stage function sees besides its data.

    Attributes:
        stage: the stage id from the pipeline file.
        params: the stage's params (checked, with defaults filled in when the stage declares
            ``params=``).
        input_schema: the input schema pipe described.
        output_schema: the declared output schema (``None`` until it is known).
        state: a dict the plugin may keep anything in, across batches (``setup`` fills it).
        seq: the number of the batch being handled, or ``None``.
    """

    def __init__(self, stage: str, params: dict, input_schema: pa.Schema):
        self.stage = stage
        self.params = params
        self.input_schema = input_schema
        self.output_schema: pa.Schema | None = None
        self.state: dict = {}
        self.seq: int | None = None
        self._phase = "idle"  # "idle" | "infer" | "batch"
        self._batch: pa.RecordBatch | None = None
        self._ids: set | None = None
        self._errors: dict[str, str] = {}

    # -- per-row errors ----------------------------------------------------------------------

    def reject(self, row_id: str, reason: str) -> None:
        """Reports that the row ``row_id`` of the current batch failed, with ``reason``.

        pipe applies the stage's ``on_error`` to it ("fail" stops the run naming the row,
        "skip" records it in rejects.jsonl). The SDK removes rows with that id from this
        batch's output, whatever ``fn`` returns. Rejecting the same row twice keeps the first
        reason. Raises ``ValueError`` for an id that is not in the current batch.
        """
        if self._phase == "infer":
            return
        if self._phase != "batch":
            raise RuntimeError("ctx.reject() can only be called while a batch is being handled")
        row_id = str(row_id)
        if self._ids is None:
            self._ids = set(self._batch.column("id").to_pylist())
        if row_id not in self._ids:
            raise ValueError(f"ctx.reject({row_id!r}): no row with this id in batch {self.seq}")
        self._errors.setdefault(row_id, _clip(str(reason)) or "rejected")

    @property
    def rejected(self) -> dict[str, str]:
        """The rows rejected so far in the current batch: id -> reason."""
        return dict(self._errors)

    # -- helpers -----------------------------------------------------------------------------

    def log(self, *parts: Any) -> None:
        """Writes a line to stderr; pipe shows it as ``[<stage id>] <line>``."""
        print(*parts, file=sys.stderr, flush=True)

    def with_columns(self, batch: pa.RecordBatch, columns: Mapping[str, Any] | None = None, **more: Any) -> pa.RecordBatch:
        """A batch in the output schema: each output column is taken from ``columns``/``more``
        when given there (a pyarrow array, a numpy array or a list, converted to the declared
        type), else from ``batch`` (by name). The usual return value with ``adds=``::

            return ctx.with_columns(batch, width=widths, height=heights)
        """
        given = dict(columns or {}, **more)
        schema = self.output_schema
        if schema is None:
            raise RuntimeError("ctx.with_columns() needs a declared output schema (adds= or schema=)")
        unknown = [name for name in given if schema.get_field_index(name) < 0]
        if unknown:
            raise ValueError(f"ctx.with_columns(): {', '.join(map(repr, unknown))} not in the output schema")
        arrays = []
        for field in schema:
            if field.name in given:
                arrays.append(_to_arrow(given[field.name], field.type))
            else:
                arrays.append(batch.column(field.name))
        return pa.RecordBatch.from_arrays(arrays, schema=schema)

    # -- used by the SDK ---------------------------------------------------------------------

    def _begin(self, phase: str, seq: int | None = None, batch: pa.RecordBatch | None = None) -> None:
        self._phase, self.seq, self._batch, self._ids, self._errors = phase, seq, batch, None, {}

    def _end(self) -> dict[str, str]:
        errors = self._errors
        self._phase, self.seq, self._batch, self._ids, self._errors = "idle", None, None, None, {}
        return errors


def _to_arrow(values: Any, typ: pa.DataType) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        return values if values.type == typ else values.cast(typ)
    if isinstance(typ, pa.BaseExtensionType):
        return pa.ExtensionArray.from_storage(typ, pa.array(values, type=typ.storage_type))
    return pa.array(values, type=typ)


# --------------------------------------------------------------------------------------------
# Stages


def _as_fields(adds: Any) -> list[pa.Field] | None:
    if adds is None:
        return None
    if isinstance(adds, Mapping):
        items = list(adds.items())
        fields = []
        for name, t in items:
            if isinstance(t, pa.Field):
                fields.append(t.with_name(name))
            elif isinstance(t, pa.DataType):
                fields.append(pa.field(name, t))
            else:
                raise TypeError(f"adds[{name!r}] must be a pyarrow DataType or Field, not {type(t).__name__}")
        return fields
    fields = list(adds)
    for f in fields:
        if not isinstance(f, pa.Field):
            raise TypeError("adds must be a dict of name -> pyarrow DataType, or a list of pyarrow Fields")
    return fields


def _merge(schema: pa.Schema, adds: list[pa.Field]) -> pa.Schema:
    """``schema`` with ``adds``: a field of the same name is replaced in place, others append."""
    fields = list(schema)
    names = {f.name: i for i, f in enumerate(fields)}
    for f in adds:
        if f.name in names:
            fields[names[f.name]] = f
        else:
            names[f.name] = len(fields)
            fields.append(f)
    return pa.schema(fields, metadata=schema.metadata)


class Stage:
    """A plugin stage made by :func:`stage`. Call :meth:`run` to serve pipe.

    The decorated function stays callable (``my_stage(batch, ctx)``), and the hooks below
    register the optional parts:

    * ``@my_stage.check`` -- ``check(params, input_schema)``, at describe time: raise
      :class:`ConfigError` for bad params or a missing column (``pipe validate`` shows it).
    * ``@my_stage.setup`` -- ``setup(ctx)``, once, before ``fn`` is first called: load a
      model, compile patterns, into ``ctx.state``. When the output schema is declared
      (``adds=``/``schema=``), that is when the first batch arrives, so ``pipe validate``
      never pays for it (and the first batch's ``timeout`` includes it); when it is inferred,
      it is at describe time. An exception in ``setup`` is fatal: the traceback goes to
      stderr and the process exits with status 1.
    * ``@my_stage.finish`` -- ``finish(ctx)``, at the end of the input: may return rows
      (RecordBatch, Table or a list of dicts, in the output schema) that pipe receives last.
    """

    def __init__(
        self,
        fn: Callable,
        *,
        rows: bool = False,
        adds: Any = None,
        schema: pa.Schema | Callable[[pa.Schema, dict], pa.Schema] | None = None,
        params: Mapping[str, Any] | None = None,
        name: str | None = None,
    ):
        if not callable(fn):
            raise TypeError("@stage decorates a function")
        if schema is not None and not (callable(schema) or isinstance(schema, pa.Schema)):
            raise TypeError("schema= must be a pyarrow Schema or a callable(input_schema, params)")
        self.fn = fn
        self.rows = bool(rows)
        self.adds = _as_fields(adds)
        self.schema = schema
        self.params = dict(params) if params is not None else None
        self.name = name or getattr(fn, "__name__", "stage")
        self._check: Callable | None = None
        self._setup: Callable | None = None
        self._finish: Callable | None = None
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<pipe_plugin.Stage {self.name} ({'rows' if self.rows else 'batch'} mode)>"

    def check(self, fn: Callable[[dict, pa.Schema], None]) -> Callable:
        """Registers ``check(params, input_schema)``, run at describe time."""
        self._check = fn
        return fn

    def setup(self, fn: Callable[[Context], None]) -> Callable:
        """Registers ``setup(ctx)``, run once before ``fn`` is first called."""
        self._setup = fn
        return fn

    def finish(self, fn: Callable[[Context], Any]) -> Callable:
        """Registers ``finish(ctx)``, run when the input ends; it may return final rows."""
        self._finish = fn
        return fn

    def run(self) -> None:
        """Serves the protocol on stdin/stdout until pipe says ``end``; then exits.

        Exit status: 0 after ``end``; 1 when stdin closes without ``end``, stdout closes, or
        ``setup``/``finish`` raise. ``print`` goes to stderr from the start.
        """
        sys.exit(_serve(self))

    main = run

    def run_local(self, data: Any, params: Mapping[str, Any] | None = None, **kwargs: Any) -> "LocalRun":
        """Shorthand for :func:`run_batches` (``self, data, params, ...``)."""
        return run_batches(self, data, params, **kwargs)


def stage(
    fn: Callable | None = None,
    /,
    *,
    rows: bool = False,
    adds: Any = None,
    schema: pa.Schema | Callable[[pa.Schema, dict], pa.Schema] | None = None,
    params: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> Any:
    """Makes a function a pipe stage; use bare (``@stage``) or with options.

    :param rows: row mode: ``fn(row: dict, ctx) -> dict | None`` per row instead of
        ``fn(batch, ctx)`` per batch.
    :param adds: ``{"name": pa.DataType}`` (or a list of ``pa.Field``): the output schema is the
        input's fields plus these (a field of an existing name replaces it, in place).
    :param schema: the output schema, or ``callable(input_schema, params) -> pa.Schema``.
        Without ``schema``/``adds``, a batch-mode output schema is inferred by calling ``fn``
        on an empty batch of the input schema, and a row-mode one is the input schema.
    :param params: the params the stage takes: ``{"key": default}`` or ``{"key": Param(...)}``.
        When given, unknown keys, missing required keys and wrong types are configuration
        errors, and ``ctx.params`` has every key (defaults filled in). Without it, params
        arrive unchecked.
    :param name: a name for messages (default: the function's).
    """

    def wrap(f: Callable) -> Stage:
        return Stage(f, rows=rows, adds=adds, schema=schema, params=params, name=name)

    return wrap(fn) if fn is not None else wrap


# --------------------------------------------------------------------------------------------
# The protocol, without the transport


def _clip(text: str, limit: int = 4000) -> str:
    """Keeps messages well under the protocol's 1 MiB header limit, whatever a batch holds."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _exc_line(e: BaseException) -> str:
    text = str(e).strip()
    return _clip(f"{type(e).__name__}: {text}" if text else type(e).__name__)


def _log(*parts: Any) -> None:
    print("pipe_plugin:", *parts, file=sys.stderr, flush=True)


_INT_WIDTH = {pa.int8(): 8, pa.int16(): 16, pa.int32(): 32, pa.int64(): 64}
_UINT_WIDTH = {pa.uint8(): 8, pa.uint16(): 16, pa.uint32(): 32, pa.uint64(): 64}
_FLOAT_MANTISSA = {pa.float16(): 11, pa.float32(): 24, pa.float64(): 53}


def _widens(src: pa.DataType, dst: pa.DataType) -> bool:
    """True when every value of ``src`` is exactly a value of ``dst`` (a lossless cast)."""
    if src == dst or pa.types.is_null(src):
        return True
    if src in _INT_WIDTH and dst in _INT_WIDTH:
        return _INT_WIDTH[src] < _INT_WIDTH[dst]
    if src in _UINT_WIDTH and dst in _UINT_WIDTH:
        return _UINT_WIDTH[src] < _UINT_WIDTH[dst]
    if src in _UINT_WIDTH and dst in _INT_WIDTH:
        return _UINT_WIDTH[src] < _INT_WIDTH[dst]
    if src in _FLOAT_MANTISSA and dst in _FLOAT_MANTISSA:
        return _FLOAT_MANTISSA[src] < _FLOAT_MANTISSA[dst]
    if src in _INT_WIDTH and dst in _FLOAT_MANTISSA:
        return _INT_WIDTH[src] < _FLOAT_MANTISSA[dst]
    if src in _UINT_WIDTH and dst in _FLOAT_MANTISSA:
        return _UINT_WIDTH[src] <= _FLOAT_MANTISSA[dst]
    return (src, dst) in ((pa.string(), pa.large_string()), (pa.binary(), pa.large_binary()))


def _schema_diff(declared: pa.Schema, got: pa.Schema) -> str:
    parts = []
    missing = [n for n in declared.names if got.get_field_index(n) < 0]
    extra = [n for n in got.names if declared.get_field_index(n) < 0]
    if missing:
        parts.append("missing " + ", ".join(missing))
    if extra:
        parts.append("not declared: " + ", ".join(extra))
    for f in declared:
        i = got.get_field_index(f.name)
        if i >= 0 and got.field(i).type != f.type:
            parts.append(f"{f.name}: declared {f.type}, got {got.field(i).type}")
    if len(set(got.names)) != len(got.names):
        parts.append("duplicate column names")
    return "; ".join(parts) or "field order or nullability"


class _Session:
    """The plugin side of one process's conversation, minus the bytes (so it can be driven
    in-process by :func:`run_batches` as well as over pipes by :func:`_serve`)."""

    def __init__(self, st: Stage):
        self.st = st
        self.ctx: Context | None = None
        self.out_schema: pa.Schema | None = None
        self.refusal: str | None = None  # why batches cannot be handled (a refused describe)
        self._set_up = False
        self._phase = "schema"
        self._plans: dict = {}
        self._warned: set = set()

    # -- describe ----------------------------------------------------------------------------

    def describe(self, header: dict, input_schema: pa.Schema | None) -> tuple[dict, pa.Schema | None]:
        """The answer to ``describe``: (``schema`` header, schema) or (``error`` header, None)."""
        self.out_schema, self.ctx, self._plans = None, None, {}
        asked = header.get("protocol", PROTOCOL)
        if asked != PROTOCOL:
            return self._refuse(
                None,
                f"this plugin speaks process protocol {PROTOCOL} (pipe_plugin {__version__}), not {asked}",
                "run a pipe that speaks protocol 1, or upgrade pipe_plugin",
            )
        if input_schema is None:
            return self._refuse(None, "describe came without the input schema")
        params = header.get("params")
        if params is None:
            params = {}
        if not isinstance(params, dict):
            return self._refuse("params", f"must be a table, got {_show(params)}")
        stage_id = str(header.get("stage") or os.environ.get("PIPE_STAGE") or self.st.name)
        phase = "params"
        try:
            if self.st.params is not None:
                params = check_params(params, self.st.params)
            ctx = self.ctx = Context(stage_id, params, input_schema)
            phase = "check"
            if self.st._check is not None:
                self.st._check(params, input_schema)
            phase = "schema"
            out = self._output_schema(ctx)
        except ConfigError as e:
            return self._refuse(e.key, e.message, e.hint)
        except _InferError as e:  # fn failed on the empty batch: a bug, or it needs a declared schema
            _log(f"{self.st.name}() failed on the empty batch used to infer the output schema:")
            cause = e.__cause__
            traceback.print_exception(type(cause), cause, cause.__traceback__)
            return self._refuse(
                None,
                f"could not infer the output schema: {self.st.name}() raised {_exc_line(e.__cause__)} on an empty batch",
                "declare the schema with @stage(adds={...}) or @stage(schema=...), or let the function accept an empty batch",
            )
        except Exception as e:  # a bug in check/setup/schema: say where, keep the traceback
            phase = self._phase if phase == "schema" else phase
            _log(f"describe failed in {phase}:")
            traceback.print_exc()
            return self._refuse(None, f"{phase} raised {_exc_line(e)}")
        i = out.get_field_index("id")
        if i < 0 or out.field(i).type != pa.string():
            got = f"id is {out.field(i).type}" if i >= 0 else "there is no id"
            return self._refuse(None, f"the output schema must have a Utf8 id column ({got})")
        ctx.output_schema = self.out_schema = out
        self.refusal = None
        return {"type": "schema", "protocol": PROTOCOL}, out

    def _refuse(self, key: str | None, message: str, hint: str | None = None) -> tuple[dict, None]:
        self.refusal = message
        self.out_schema = None
        return {"type": "error", "key": key, "message": message, "hint": hint}, None

    def _output_schema(self, ctx: Context) -> pa.Schema:
        st = self.st
        if st.schema is not None:
            out = st.schema(ctx.input_schema, ctx.params) if callable(st.schema) else st.schema
            if not isinstance(out, pa.Schema):
                raise TypeError(f"schema= returned {type(out).__name__}, not a pyarrow Schema")
            return out
        if st.adds is not None or st.rows:
            return _merge(ctx.input_schema, st.adds or [])
        # Batch mode, nothing declared: the schema of what fn makes of an empty batch.
        self._ensure_setup()
        empty = pa.RecordBatch.from_pylist([], schema=ctx.input_schema)
        ctx._begin("infer", None, empty)
        try:
            result = st.fn(empty, ctx)
        except ConfigError:
            raise
        except Exception as e:
            raise _InferError(e) from e
        finally:
            ctx._end()
        if isinstance(result, (pa.RecordBatch, pa.Table)):
            return result.schema
        raise ConfigError(
            None,
            f"could not infer the output schema: {st.name}() returned {type(result).__name__} for an empty batch",
            "return a RecordBatch or Table (an empty one is fine), or declare the schema with adds= or schema=",
        )

    def _ensure_setup(self) -> None:
        if not self._set_up:
            self._set_up = True
            if self.st._setup is not None:
                self._phase = "setup"
                self.st._setup(self.ctx)
            self._phase = "schema"

    # -- batches -----------------------------------------------------------------------------

    def batch(self, seq: int, batch: pa.RecordBatch) -> tuple[dict, pa.Schema | None, list[pa.RecordBatch]]:
        """The answer to batch ``seq``: a ``result`` (header, schema, batches) or ``failed``."""
        if self.out_schema is None:
            why = self.refusal or "no describe came first"
            return {"type": "failed", "seq": seq, "message": f"not configured: {why}"}, None, []
        ctx = self.ctx
        try:
            self._ensure_setup()
        except Exception:
            _log("setup() failed; the plugin cannot go on:")
            raise  # fatal, by design: _serve prints the traceback and exits 1
        ctx._begin("batch", seq, batch)
        try:
            if self.st.rows:
                out = self._rows(batch, ctx)
            else:
                out = self._conform(self.st.fn(batch, ctx), f"batch {seq}")
            errors = ctx._errors
            if errors and out:
                out = _drop_ids(out, errors)
        except Exception as e:
            ctx._end()
            ids = batch.column("id") if batch.num_rows else None
            where = f"batch {seq}" + (f" (ids {ids[0]} .. {ids[-1]}, {len(ids)} rows)" if ids is not None else "")
            _log(f"{self.st.name}() failed on {where}:")
            traceback.print_exc()
            return {"type": "failed", "seq": seq, "message": _exc_line(e)}, None, []
        errors = ctx._end()
        header: dict = {"type": "result", "seq": seq}
        if errors:
            header["errors"] = [{"id": k, "reason": v} for k, v in errors.items()]
        return header, (out[0].schema if out else self.out_schema), out

    def end(self) -> tuple[dict, pa.Schema | None, list[pa.RecordBatch]]:
        """The answer to ``end``: ``bye``, with the rows ``finish`` returns."""
        out: list[pa.RecordBatch] = []
        if self.st._finish is not None and self.out_schema is not None:
            try:
                self._ensure_setup()
                result = self.st._finish(self.ctx)
            except Exception:
                _log("finish() failed; no bye:")
                raise  # _serve prints the traceback and exits 1: pipe reports a crash
            if isinstance(result, list):
                result = _rows_to_table(result, self.out_schema)
            out = self._conform(result, "finish()")
        return {"type": "bye"}, (out[0].schema if out else self.out_schema), out

    # -- shaping results ---------------------------------------------------------------------

    def _conform(self, result: Any, where: str) -> list[pa.RecordBatch]:
        """``result`` as batches in the declared schema: columns reordered by name, and cast
        where the cast is lossless by type (null -> any, narrower -> wider ints/floats, ints ->
        floats that hold them exactly, string/binary -> large). Anything else is sent as is, so
        that pipe reports the mismatch; a line on stderr says what differs."""
        if result is None:
            return []
        if isinstance(result, pa.Table):
            batches = [b for b in result.to_batches() if b.num_rows]
            schema = result.schema
        elif isinstance(result, pa.RecordBatch):
            batches = [result] if result.num_rows else []
            schema = result.schema
        else:
            raise TypeError(f"{self.st.name}() returned {type(result).__name__}; expected a pyarrow RecordBatch, Table or None")
        target = self.out_schema
        if schema.equals(target):
            return batches
        plan = self._plans.get(schema)
        if plan is None:
            plan = self._plans[schema] = self._plan(schema, target)
        if plan is False:
            if schema not in self._warned:
                self._warned.add(schema)
                _log(f"{where}: the result does not match the declared output schema ({_schema_diff(target, schema)}); sent as is")
            return batches
        return [
            pa.RecordBatch.from_arrays(
                [b.column(i) if cast is None else b.column(i).cast(cast) for i, cast in plan], schema=target
            )
            for b in batches
        ]

    @staticmethod
    def _plan(got: pa.Schema, target: pa.Schema) -> list | bool:
        if len(got) != len(target) or len(set(got.names)) != len(got.names):
            return False
        plan = []
        for f in target:
            i = got.get_field_index(f.name)
            if i < 0:
                return False
            t = got.field(i).type
            if t == f.type:
                plan.append((i, None))
            elif _widens(t, f.type):
                plan.append((i, f.type))
            else:
                return False
        return plan

    def _rows(self, batch: pa.RecordBatch, ctx: Context) -> list[pa.RecordBatch]:
        fn = self.st.fn
        target = self.out_schema
        out_names = set(target.names)
        rows = batch.to_pylist()
        kept: list[int] = []
        results: list[dict] = []
        changed: set = set()
        errors = ctx._errors
        for i, row in enumerate(rows):
            try:
                ret = fn(row, ctx)
                if ret is None:
                    continue
                if not isinstance(ret, dict):
                    raise TypeError(f"{self.st.name}() returned {type(ret).__name__}; expected a dict or None")
                if not out_names.issuperset(ret):
                    extra = ", ".join(repr(k) for k in ret if k not in out_names)
                    raise ValueError(f"returned {extra}, not in the output schema (declare it in adds=)")
            except Exception as e:
                rid = row.get("id")
                if rid is not None:
                    errors.setdefault(str(rid), _exc_line(e))
                    continue
                raise
            kept.append(i)
            results.append(ret)
            changed.update(ret)
        if errors:
            pairs = [(i, r) for i, r in zip(kept, results) if rows[i].get("id") not in errors]
            kept, results = [i for i, _ in pairs], [r for _, r in pairs]
        while True:
            if not kept:
                return []
            try:
                return [self._assemble(batch, rows, kept, results, changed)]
            except _BadValues as bad:
                for pos in sorted(bad.positions, reverse=True):
                    errors.setdefault(str(rows[kept[pos]].get("id")), bad.reasons[pos])
                    del kept[pos], results[pos]

    def _assemble(self, batch, rows, kept, results, changed) -> pa.RecordBatch:
        target = self.out_schema
        in_schema = batch.schema
        all_kept = len(kept) == batch.num_rows
        take = None if all_kept else pa.array(kept, type=pa.int64())
        arrays = []
        for field in target:
            name = field.name
            j = in_schema.get_field_index(name)
            if name not in changed and j >= 0 and in_schema.field(j).type == field.type:
                col = batch.column(j)
                arrays.append(col if all_kept else col.take(take))
                continue
            values = [r[name] if name in r else rows[i].get(name) for i, r in zip(kept, results)]
            try:
                arrays.append(_to_arrow(values, field.type))
            except (pa.ArrowException, TypeError, ValueError, OverflowError):
                raise _BadValues(values, field) from None
        return pa.RecordBatch.from_arrays(arrays, schema=target)


class _InferError(Exception):
    pass


class _BadValues(Exception):
    """Row-mode values that do not fit their column: which positions, and why."""

    def __init__(self, values: list, field: pa.Field):
        self.positions: list[int] = []
        self.reasons: dict[int, str] = {}
        for pos, v in enumerate(values):
            try:
                _to_arrow([v], field.type)
            except Exception as e:
                self.positions.append(pos)
                self.reasons[pos] = f"{type(e).__name__}: column {field.name!r} ({field.type}) cannot hold {v!r:.80}"
        if not self.positions:  # fails only as a whole: blame every row
            self.positions = list(range(len(values)))
            self.reasons = {p: f"column {field.name!r} ({field.type}): values do not convert" for p in self.positions}
        super().__init__(field.name)


def _drop_ids(batches: list[pa.RecordBatch], ids: Mapping[str, str]) -> list[pa.RecordBatch]:
    import pyarrow.compute as pc

    value_set = pa.array(list(ids), type=pa.string())
    out = []
    for b in batches:
        i = b.schema.get_field_index("id")
        if i < 0:
            out.append(b)
            continue
        keep = pc.invert(pc.is_in(b.column(i), value_set=value_set))
        kept = b.filter(keep)
        if kept.num_rows:
            out.append(kept)
    return out


def _rows_to_table(rows: list, schema: pa.Schema) -> pa.Table:
    arrays = [_to_arrow([r.get(f.name) for r in rows], f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


# --------------------------------------------------------------------------------------------
# The transport: header lines and Arrow IPC streams on stdin/stdout


_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # the IPC stream's end-of-stream marker
_schema_cache: list = [None, None]  # [schema, its serialized message, or None if it has dictionaries]


def _has_dictionary(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return True
    if isinstance(t, pa.BaseExtensionType):
        return _has_dictionary(t.storage_type)
    return any(_has_dictionary(t.field(i).type) for i in range(t.num_fields))


def _ipc_parts(schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> list:
    """One IPC stream (schema message, batch messages, end marker) as a list of buffers.

    The schema message is serialized once per schema and each batch by ``serialize()``: the
    same bytes ``pa.ipc.new_stream`` writes, without its per-stream cost. Schemas with
    dictionary-encoded columns (which need dictionary messages) go through the stream writer.
    """
    if _schema_cache[0] is not schema and not (_schema_cache[0] is not None and _schema_cache[0].equals(schema, check_metadata=True)):
        _schema_cache[0] = schema
        _schema_cache[1] = None if any(_has_dictionary(f.type) for f in schema) else schema.serialize()
    head = _schema_cache[1]
    if head is None:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, schema) as writer:
            for b in batches:
                writer.write_batch(b)
        return [sink.getvalue()]
    return [head, *(b.serialize() for b in batches), _EOS]


def _encode(header: dict, schema: pa.Schema | None, batches: Iterable[pa.RecordBatch] = ()) -> list:
    """The message as a list of buffers: the header line, then the payload's parts."""
    parts = _ipc_parts(schema, batches) if schema is not None else []
    header["bytes"] = sum(len(p) for p in parts)
    line = (json.dumps(header, separators=(",", ":")) + "\n").encode()
    return [line, *parts]


def _write_all(fd: int, parts: list) -> None:
    views = [memoryview(p) for p in parts if len(p)]
    if not hasattr(os, "writev"):
        data = b"".join(views)
        while data:
            data = data[os.write(fd, data):]
        return
    while views:
        n = os.writev(fd, views)
        while n:
            if n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            else:
                views[0] = views[0][n:]
                n = 0


class _Wire:
    def __init__(self, inp, out_fd: int):
        self.inp = inp
        self.out_fd = out_fd

    def read(self) -> tuple[dict, Any] | None:
        """The next (header, payload) or None at the end of stdin."""
        line = self.inp.readline()
        if not line:
            return None
        if not line.endswith(b"\n"):
            return None  # cut off: stdin closed mid-message
        header = json.loads(line)
        n = header.get("bytes") or 0
        payload = None
        if n > 0:
            payload = self.inp.read(n)
            if len(payload) != n:
                return None
        return header, payload

    def send(self, header: dict, schema: pa.Schema | None = None, batches: Iterable[pa.RecordBatch] = ()) -> None:
        _write_all(self.out_fd, _encode(header, schema, batches))


def _open(payload: Any) -> pa.ipc.RecordBatchStreamReader:
    return pa.ipc.open_stream(pa.py_buffer(payload))


def _one_batch(payload: Any, schema: pa.Schema | None) -> pa.RecordBatch:
    if payload is None:
        return pa.RecordBatch.from_pylist([], schema=schema or pa.schema([("id", pa.string())]))
    reader = _open(payload)
    batches = list(reader)
    if len(batches) == 1:
        return batches[0]
    if not batches:
        return pa.RecordBatch.from_pylist([], schema=reader.schema)
    return pa.Table.from_batches(batches).combine_chunks().to_batches()[0]


_redirected = False


def _protect_stdout() -> None:
    """Points ``sys.stdout`` (``print``) at stderr and ``sys.stdin`` at /dev/null, so that
    nothing a plugin prints or reads can disturb the protocol. Writes to file descriptor 1 by
    other means (C libraries, child processes) still reach pipe: send those to stderr."""
    global _redirected
    if _redirected:
        return
    _redirected = True
    try:
        sys.stdout.flush()
    except Exception:
        pass
    sys.stdout = sys.stderr
    sys.stdin = open(os.devnull)


if os.environ.get("PIPE_PROTOCOL"):
    # Started by pipe: protect the protocol from prints made before run() is reached.
    _protect_stdout()


def _serve(st: Stage) -> int:
    inp = sys.__stdin__.buffer
    _protect_stdout()
    wire = _Wire(inp, 1)
    session = _Session(st)
    input_schema: pa.Schema | None = None
    try:
        while True:
            try:
                msg = wire.read()
            except (ValueError, UnicodeDecodeError) as e:
                _log(f"cannot read a message from pipe: {e}")
                return 1
            if msg is None:
                return 1  # stdin closed without "end": pipe is gone or gave up
            header, payload = msg
            kind = header.get("type")
            if kind == "describe":
                schema = _open(payload).schema if payload is not None else None
                answer, out = session.describe(header, schema)
                input_schema = schema
                wire.send(answer, out)
            elif kind == "batch":
                seq = header.get("seq")
                batch = _one_batch(payload, input_schema)
                answer, schema, batches = session.batch(seq, batch)
                wire.send(answer, schema if batches else None, batches)
            elif kind == "end":
                answer, schema, batches = session.end()
                wire.send(answer, schema if batches else None, batches)
                return 0
            # Other message types are later additions this version may ignore.
    except (BrokenPipeError, ConnectionResetError):
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception:
        _log("stopped by an error it cannot report to pipe:")
        traceback.print_exc()
        return 1


# --------------------------------------------------------------------------------------------
# Testing without pipe


class LocalRun:
    """What :func:`run_batches` returns.

    Attributes:
        schema: the declared output schema.
        table: every output row (results in order, then ``finish``'s rows), as a ``pa.Table``.
        errors: per-row errors, ``[{"seq", "id", "reason"}]``.
        failed: whole-batch failures, ``[{"seq", "message"}]``.
    """

    def __init__(self, schema: pa.Schema, table: pa.Table, errors: list, failed: list):
        self.schema = schema
        self.table = table
        self.errors = errors
        self.failed = failed

    def rows(self) -> list[dict]:
        """The output rows as dicts."""
        return self.table.to_pylist()

    def __repr__(self) -> str:
        return f"<LocalRun {self.table.num_rows} rows, {len(self.errors)} errors, {len(self.failed)} failed batches>"


def _as_batches(data: Any, batch_size: int) -> list[pa.RecordBatch]:
    if isinstance(data, pa.RecordBatch):
        parts = [data]
    elif isinstance(data, pa.Table):
        parts = [data]
    elif isinstance(data, list) and data and all(isinstance(d, (pa.RecordBatch, pa.Table)) for d in data):
        return [b for d in data for b in _as_batches(d, len(d) or 1)]
    elif isinstance(data, list):
        parts = [pa.Table.from_pylist(data)]
    else:
        raise TypeError("data must be a pyarrow Table or RecordBatch, a list of them, or a list of dicts")
    out = []
    for part in parts:
        table = part if isinstance(part, pa.Table) else pa.Table.from_batches([part])
        if "id" not in table.column_names:
            table = table.add_column(0, "id", pa.array([str(i) for i in range(table.num_rows)], pa.string()))
        table = table.combine_chunks()
        if table.num_rows == 0:
            out.append(pa.RecordBatch.from_pylist([], schema=table.schema))
        for start in range(0, table.num_rows, batch_size):
            out.extend(table.slice(start, batch_size).to_batches())
    return out


def _roundtrip(schema: pa.Schema, batches: list) -> tuple[pa.Schema, list]:
    parts = _encode({}, schema, batches)
    reader = _open(b"".join(parts[1:]))
    return reader.schema, list(reader)


def run_batches(
    st: Stage,
    data: Any,
    params: Mapping[str, Any] | None = None,
    *,
    batch_size: int = 64,
    stage_id: str = "test",
) -> LocalRun:
    """Runs ``st`` in-process the way pipe would, for tests: describe, every batch, end.

    ``data``: a ``pa.Table`` (split into ``batch_size`` rows), a ``pa.RecordBatch``, a list
    of batches/tables (one batch each), or a list of dicts. An ``id`` column ("0", "1", ...) is
    added when missing. Everything crosses Arrow IPC as with pipe.

    Raises :class:`ConfigError` when describe is refused, and :class:`PluginError` for what
    pipe would stop the run for: a result whose schema differs from the declared one, or an
    error naming an id that is not in its batch.
    """
    batches = _as_batches(data, batch_size)
    if not batches:
        raise ValueError("run_batches: no data")
    session = _Session(st)
    in_schema, _ = _roundtrip(batches[0].schema, [])
    answer, out_schema = session.describe(
        {"type": "describe", "protocol": PROTOCOL, "stage": stage_id, "params": dict(params or {})}, in_schema
    )
    if answer["type"] == "error":
        raise ConfigError(answer.get("key"), answer["message"], answer.get("hint"))
    out_schema, _ = _roundtrip(out_schema, [])
    produced: list[pa.RecordBatch] = []
    errors: list = []
    failed: list = []

    def take(header: dict, schema: pa.Schema | None, out: list, what: str) -> None:
        if not out:
            return
        got, received = _roundtrip(schema, out)
        if got.remove_metadata() != out_schema.remove_metadata():
            raise PluginError(f"{what}: the result's schema differs from the declared one:\n"
                              f"declared: {out_schema}\ngot: {got}")
        produced.extend(received)

    for seq, b in enumerate(batches):
        _, (b,) = _roundtrip(b.schema, [b])
        header, schema, out = session.batch(seq, b)
        if header["type"] == "failed":
            failed.append({"seq": seq, "message": header["message"]})
            continue
        ids = set(b.column("id").to_pylist())
        for e in header.get("errors", []):
            if e["id"] not in ids:
                raise PluginError(f"batch {seq}: error for id {e['id']!r}, which is not in the batch")
            errors.append({"seq": seq, **e})
        take(header, schema, out, f"batch {seq}")
    header, schema, out = session.end()
    take(header, schema, out, "bye")
    table = pa.Table.from_batches(produced, schema=out_schema)
    return LocalRun(out_schema, table, errors, failed)


# --------------------------------------------------------------------------------------------
# python -m pipe_plugin: run a plugin over local data, as pipe would


def _local_files(root: str, include: list[str], load: str) -> pa.Table:
    import fnmatch

    ids = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                continue
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            if not include or any(
                fnmatch.fnmatch(rel, g) or (g.startswith("**/") and fnmatch.fnmatch(rel, g[3:])) for g in include
            ):
                ids.append(rel)
    ids.sort()
    paths = [os.path.join(root, i) for i in ids]
    fields = [pa.field("id", pa.string(), False), pa.field("path", pa.string(), False), pa.field("size", pa.uint64(), False)]
    cols: list = [ids, paths, [os.path.getsize(p) for p in paths]]
    if load == "bytes":
        fields.append(pa.field("content", pa.binary(), False))
        cols.append([open(p, "rb").read() for p in paths])
    elif load == "text":
        fields.append(pa.field("text", pa.string(), False))
        cols.append([open(p, encoding="utf-8").read() for p in paths])
    schema = pa.schema(fields)
    return pa.Table.from_arrays([pa.array(c, f.type) for c, f in zip(cols, fields)], schema=schema)


def _read_table(path: str) -> pa.Table:
    low = path.lower()
    if low.endswith(".parquet"):
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    elif low.endswith(".csv"):
        import pyarrow.csv as pcsv

        table = pcsv.read_csv(path)
    elif low.endswith((".jsonl", ".ndjson")):
        import pyarrow.json as pjson

        table = pjson.read_json(path)
    elif low.endswith(".arrow"):
        with open(path, "rb") as f:
            data = f.read()
        try:
            table = pa.ipc.open_file(pa.py_buffer(data)).read_all()
        except pa.ArrowInvalid:
            table = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
    else:
        raise SystemExit(f"pipe_plugin: {path}: expected .parquet, .csv, .jsonl/.ndjson or .arrow")
    if "id" in table.column_names:
        table = table.set_column(table.schema.get_field_index("id"), "id", table["id"].cast(pa.string()))
    else:
        table = table.add_column(0, "id", pa.array([str(i) for i in range(table.num_rows)], pa.string()))
    return table


def _write_table(table: pa.Table, path: str) -> None:
    low = path.lower()
    if low.endswith(".parquet"):
        import pyarrow.parquet as pq

        pq.write_table(table, path)
    elif low.endswith(".csv"):
        import pyarrow.csv as pcsv

        pcsv.write_csv(table, path)
    elif low.endswith(".arrow"):
        with pa.OSFile(path, "wb") as f, pa.ipc.new_file(f, table.schema) as w:
            w.write_table(table)
    else:
        with open(path, "w", encoding="utf-8") as f:
            for row in table.to_pylist():
                f.write(json.dumps(row, default=lambda v: v.hex() if isinstance(v, bytes) else str(v)) + "\n")


def _cli(argv: list[str] | None = None) -> int:
    import argparse
    import subprocess

    parser = argparse.ArgumentParser(
        prog="python -m pipe_plugin",
        description="Run a process plugin over local data the way pipe does (describe, batches, end) "
        "and show what it answers. The plugin's stderr is shown as it comes.",
    )
    parser.add_argument("plugin", help="the plugin: a .py file (run with this Python) or an executable")
    parser.add_argument("args", nargs="*", help="more arguments for the plugin's command")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--files", metavar="DIR", help="rows like collect.files: id, path, size, content/text")
    src.add_argument("--table", metavar="FILE", help="rows from a .parquet, .csv, .jsonl or .arrow file")
    parser.add_argument("--include", action="append", default=[], metavar="GLOB", help="with --files (repeatable)")
    parser.add_argument("--load", choices=["bytes", "text", "none"], default="bytes", help="with --files (default bytes)")
    parser.add_argument("--params", default="{}", metavar="JSON", help="the stage's params, as JSON")
    parser.add_argument("--stage", default="local", help="the stage id to announce (default: local)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", metavar="FILE", help="write the output rows (.parquet, .csv, .jsonl, .arrow)")
    parser.add_argument("--show", type=int, default=10, metavar="N", help="print the first N output rows (default 10)")
    a = parser.parse_args(argv)

    try:
        params = json.loads(a.params)
    except json.JSONDecodeError as e:
        parser.error(f"--params is not JSON: {e}")
    table = _local_files(a.files, a.include, a.load) if a.files else _read_table(a.table)
    command = ([sys.executable, a.plugin] if a.plugin.endswith(".py") else [a.plugin]) + a.args
    env = dict(os.environ, PIPE_PROTOCOL=str(PROTOCOL), PIPE_STAGE=a.stage)
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    wire = _Wire(proc.stdout, proc.stdin.fileno())
    out = sys.stdout

    def send(header: dict, schema: pa.Schema | None = None, batches: list = ()) -> None:
        _write_all(proc.stdin.fileno(), _encode(header, schema, batches))

    def receive(what: str) -> tuple[dict, Any]:
        msg = wire.read()
        if msg is None:
            code = proc.wait()
            raise SystemExit(f"pipe_plugin: the plugin stopped before answering {what} (exit status {code})")
        return msg

    try:
        send({"type": "describe", "protocol": PROTOCOL, "stage": a.stage, "params": params}, table.schema)
        header, payload = receive("describe")
        if header.get("type") == "error":
            print(f"config error: {header.get('key') or '(no key)'}: {header.get('message')}", file=out)
            if header.get("hint"):
                print(f"  hint: {header['hint']}", file=out)
            send({"type": "end"})
            proc.stdin.close()
            proc.wait()
            return 2
        declared = _open(payload).schema
        print(f"output schema:\n{declared}\n", file=out)
        produced: list = []
        n_err = n_failed = 0
        batches = _as_batches(table, a.batch_size)
        for seq, b in enumerate(batches):
            send({"type": "batch", "seq": seq, "rows": b.num_rows}, b.schema, [b])
            header, payload = receive(f"batch {seq}")
            if header.get("type") == "failed":
                n_failed += 1
                print(f"batch {seq} failed: {header.get('message')}", file=out)
                continue
            if header.get("type") != "result" or header.get("seq") != seq:
                raise SystemExit(f"pipe_plugin: expected the result of batch {seq}, got {header}")
            for e in header.get("errors") or []:
                n_err += 1
                print(f"row error: {e.get('id')}: {e.get('reason')}", file=out)
            if payload is not None:
                reader = _open(payload)
                if not reader.schema.equals(declared):
                    print(f"batch {seq}: schema mismatch ({_schema_diff(declared, reader.schema)})", file=out)
                    return 1
                produced.extend(reader)
        send({"type": "end"})
        proc.stdin.close()
        header, payload = receive("end")
        if payload is not None:
            produced.extend(_open(payload))
        code = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result = pa.Table.from_batches(produced, schema=declared)
    print(f"{table.num_rows} rows in, {result.num_rows} out, {n_err} row errors, {n_failed} failed batches, exit status {code}", file=out)
    if a.show and result.num_rows:
        shown = result.slice(0, a.show)
        for row in shown.to_pylist():
            print({k: (f"<{len(v)} bytes>" if isinstance(v, bytes) else v) for k, v in row.items()}, file=out)
    if a.out:
        _write_table(result, a.out)
        print(f"wrote {a.out}", file=out)
    return 0 if code == 0 and not n_failed else 1


if __name__ == "__main__":
    sys.exit(_cli())
