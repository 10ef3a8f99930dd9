"""A minimal pipe-side client of the process protocol (plugins/PROTOCOL.md, version 1), written
from the document alone and independent of pipe_plugin, so the tests check the SDK against the
contract rather than against itself."""

from __future__ import annotations

import io
import json
import os
import queue
import subprocess
import sys
import threading

import pyarrow as pa

HERE = os.path.dirname(os.path.abspath(__file__))
SDK_DIR = os.path.dirname(HERE)  # plugins/python
REPO = os.path.dirname(os.path.dirname(SDK_DIR))


class EOF(Exception):
    """stdout closed before an answer came."""


class Timeout(Exception):
    """No message within the time allowed."""


def ipc(schema: pa.Schema, batches=()) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, schema) as w:
        for b in batches:
            w.write_batch(b)
    return sink.getvalue()


class Message:
    def __init__(self, header: dict | None, payload: bytes | None, garbage: bytes | None = None):
        self.header = header or {}
        self.payload = payload
        self.garbage = garbage

    @property
    def type(self):
        return "garbage" if self.garbage is not None else self.header.get("type")

    def reader(self):
        return pa.ipc.open_stream(self.payload)

    @property
    def schema(self) -> pa.Schema | None:
        return self.reader().schema if self.payload else None

    def table(self) -> pa.Table | None:
        return self.reader().read_all() if self.payload else None

    def __repr__(self):
        return f"Message({self.garbage!r})" if self.garbage is not None else f"Message({self.header})"


class Plugin:
    """A plugin process, spoken to as pipe would."""

    def __init__(self, argv, stage="test", cwd=None, env=None):
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = SDK_DIR + os.pathsep + full_env.get("PYTHONPATH", "")
        full_env.update({"PIPE_PROTOCOL": "1", "PIPE_STAGE": stage})
        full_env.update(env or {})
        self.stage = stage
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=full_env
        )
        self._messages: queue.Queue = queue.Queue()
        self._stderr: list[bytes] = []
        threading.Thread(target=self._read_stdout, daemon=True).start()
        self._stderr_thread = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_thread.start()

    @classmethod
    def script(cls, path, **kw):
        return cls([sys.executable, path], **kw)

    # -- the plugin's side, collected by threads ----------------------------------------------

    def _read_stdout(self):
        out = self.proc.stdout
        while True:
            line = out.readline()
            if not line:
                self._messages.put(None)
                return
            try:
                header = json.loads(line)
                if not isinstance(header, dict) or "type" not in header:
                    raise ValueError
            except ValueError:
                self._messages.put(Message(None, None, garbage=line))
                continue
            n = header.get("bytes") or 0
            payload = out.read(n) if n > 0 else None
            if n > 0 and len(payload) != n:
                self._messages.put(None)
                return
            self._messages.put(Message(header, payload))

    def _read_stderr(self):
        for line in self.proc.stderr:
            self._stderr.append(line)

    @property
    def stderr(self) -> str:
        return b"".join(self._stderr).decode(errors="replace")

    # -- pipe's side -------------------------------------------------------------------------

    def send(self, header: dict, payload: bytes = b""):
        header = dict(header)
        if payload:
            header["bytes"] = len(payload)
        self.proc.stdin.write((json.dumps(header) + "\n").encode() + payload)
        self.proc.stdin.flush()

    def recv(self, timeout=20.0) -> Message:
        try:
            msg = self._messages.get(timeout=timeout)
        except queue.Empty:
            raise Timeout(f"no answer within {timeout} s") from None
        if msg is None:
            self._messages.put(None)  # stays closed
            raise EOF("stdout closed")
        return msg

    def describe(self, schema: pa.Schema, params=None, protocol=1) -> Message:
        self.send({"type": "describe", "protocol": protocol, "stage": self.stage, "params": params or {}}, ipc(schema))
        return self.recv()

    def send_batch(self, seq: int, batch: pa.RecordBatch):
        self.send({"type": "batch", "seq": seq, "rows": batch.num_rows}, ipc(batch.schema, [batch]))

    def batch(self, seq: int, batch: pa.RecordBatch, timeout=20.0) -> Message:
        self.send_batch(seq, batch)
        return self.recv(timeout)

    def end(self) -> Message:
        self.send({"type": "end"})
        self.proc.stdin.close()
        return self.recv()

    def close_stdin(self):
        self.proc.stdin.close()

    def wait(self, timeout=20.0) -> int:
        """The exit status; stderr is complete once this returns."""
        code = self.proc.wait(timeout)
        self._stderr_thread.join(timeout)
        return code

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except Exception:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()
