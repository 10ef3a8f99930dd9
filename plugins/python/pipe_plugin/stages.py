"""The plugin itself: the :func:`stage` decorator and the :class:`Stage` it makes (hooks,
``run``, ``run_local``), and how ``adds=`` turns into an output schema."""

from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING, Any, Callable, Mapping

import pyarrow as pa

from .context import Context

if TYPE_CHECKING:
    from .local import LocalRun


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
        row_wise: bool = False,
        deterministic: bool = False,
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
        self.row_wise = bool(row_wise)
        self.deterministic = bool(deterministic)
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
        from .serve import _serve

        sys.exit(_serve(self))

    main = run

    def run_local(self, data: Any, params: Mapping[str, Any] | None = None, **kwargs: Any) -> "LocalRun":
        """Shorthand for :func:`run_batches` (``self, data, params, ...``)."""
        from .local import run_batches

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
    row_wise: bool = False,
    deterministic: bool = False,
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
    :param row_wise: a promise that every row comes back as exactly one row with the same id, in
        order, made from that row alone (a row that fails is reported with ``ctx.reject``, not
        dropped). pipe then resumes a killed run without starting over, and checks the promise:
        a dropped, added or reordered row stops the run naming the row.
    :param deterministic: a promise that the output depends on the row and the params only (no
        clock, no unseeded randomness). With ``row_wise``, pipe caches each row's result (keyed
        also on the pipeline seed), so a rerun of an unchanged pipeline sends the plugin no row;
        such a stage gets each pipeline batch at once instead of joined and pipelined ones.
    """

    def wrap(f: Callable) -> Stage:
        return Stage(
            f,
            rows=rows,
            adds=adds,
            schema=schema,
            params=params,
            name=name,
            row_wise=row_wise,
            deterministic=deterministic,
        )

    return wrap(fn) if fn is not None else wrap
