"""The run loop: :func:`_serve` speaks the protocol on stdin/stdout for :meth:`Stage.run`, and
stdout is kept for the protocol (``print`` goes to stderr; at import already when pipe started
the process, i.e. ``PIPE_PROTOCOL`` is set)."""

from __future__ import annotations

import gc
import os
import sys
import traceback
from typing import TYPE_CHECKING

import pyarrow as pa

from .errors import _log
from .ipc import _one_batch, _open
from .session import _Session
from .wire import _Wire

if TYPE_CHECKING:
    from .stages import Stage


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
                # What importing pyarrow (and the plugin's own imports) made lives as long as the
                # process: out of the collector's sight, its full collections stay cheap.
                gc.freeze()
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
