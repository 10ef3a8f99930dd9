"""The framing: a message is one JSON header line (its ``bytes`` the payload length) followed
by the payload; :class:`_Wire` reads messages from a stream and writes them to a file
descriptor."""

from __future__ import annotations

import json
import os
from typing import Any, Iterable

import pyarrow as pa

from .ipc import _ipc_parts


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
