"""The Arrow IPC codec: a payload is one IPC stream (schema message, batch messages, end
marker); encoding caches the serialized schema, decoding opens a stream or reads one batch."""

from __future__ import annotations

from typing import Any, Iterable

import pyarrow as pa


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
