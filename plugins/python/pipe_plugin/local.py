"""Testing without pipe: :func:`run_batches` (and ``Stage.run_local``) run a stage in-process,
through Arrow IPC as with pipe, and return a :class:`LocalRun`."""

from __future__ import annotations

from typing import Any, Mapping

import pyarrow as pa

from .constants import PROTOCOL
from .errors import ConfigError, PluginError
from .ipc import _open
from .session import _Session
from .stages import Stage
from .wire import _encode


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
