"""The :class:`Context` a stage function gets with its data (params, schemas, state, per-row
errors, ``with_columns``)."""

from __future__ import annotations

import sys
from typing import Any, Mapping

import pyarrow as pa

from .errors import _clip


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
