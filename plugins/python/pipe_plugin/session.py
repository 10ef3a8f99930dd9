"""The protocol, without the transport: :class:`_Session` answers describe, batch and end with
headers and Arrow data (so :func:`~pipe_plugin.run_batches` can drive it in-process as well as
:func:`~pipe_plugin.serve._serve` over stdin/stdout), and shapes results to the declared schema."""

from __future__ import annotations

import os
import traceback
from typing import Any, Mapping

import pyarrow as pa

from .constants import PROTOCOL, __version__
from .context import Context, _to_arrow
from .errors import ConfigError, _exc_line, _log
from .params import _show, check_params
from .stages import Stage, _merge


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
        answer: dict = {"type": "schema", "protocol": PROTOCOL}
        if self.st.row_wise:
            answer["row_wise"] = True
        if self.st.deterministic:
            answer["deterministic"] = True
        return answer, out

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
