"""How much time the process protocol and pipe_plugin add per batch.

Drives plugins as pipe does (describe, batches with at most two in flight, end) with 100,032
rows of (id Utf8, text Utf8, n Int64) in 1,563 batches of 64, and prints the time per batch of:

  echo         a plugin that copies each payload back without parsing it (the floor: process
               start-up aside, what the pipes and a Python loop cost)
  raw          the SDK-less plugin printed in plugins/PROTOCOL.md (parses and re-encodes Arrow)
  passthrough  tests/fixtures/plugins/passthrough.py, on pipe_plugin
  row mode     a row-mode pipe_plugin stage adding one Int64 column (per-row Python calls)

Run from the repository root:  python plugins/python/tests/bench.py [--batches N] [--repeat R]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from protocol_client import REPO, SDK_DIR, ipc  # noqa: E402

ECHO = r'''
import json, sys
inp, out = sys.stdin.buffer, sys.stdout.buffer
while True:
    line = inp.readline()
    if not line:
        sys.exit(1)
    h = json.loads(line)
    n = h.get("bytes", 0)
    data = inp.read(n) if n else b""
    t = h["type"]
    if t == "describe":
        out.write((json.dumps({"type": "schema", "protocol": 1, "bytes": n}) + "\n").encode() + data)
    elif t == "batch":
        out.write((json.dumps({"type": "result", "seq": h["seq"], "bytes": n}) + "\n").encode() + data)
    elif t == "end":
        out.write(b'{"type": "bye", "bytes": 0}\n'); out.flush(); break
    out.flush()
'''

# The "plugin in a few lines" of plugins/PROTOCOL.md, verbatim but for the last line's exit.
RAW = r'''
import io, json, sys
import pyarrow as pa

inp, out = sys.stdin.buffer, sys.stdout.buffer

def read():
    header = json.loads(inp.readline())
    n = header.get("bytes", 0)
    return header, (pa.ipc.open_stream(inp.read(n)) if n else None)

def send(header, schema=None, batches=()):
    data = b""
    if schema is not None:
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, schema) as w:
            for b in batches:
                w.write_batch(b)
        data = sink.getvalue()
    out.write((json.dumps({**header, "bytes": len(data)}) + "\n").encode() + data)
    out.flush()

while True:
    msg, reader = read()
    if msg["type"] == "describe":
        schema = reader.schema
        send({"type": "schema", "protocol": 1}, schema)
    elif msg["type"] == "batch":
        send({"type": "result", "seq": msg["seq"]}, schema, list(reader))
    elif msg["type"] == "end":
        send({"type": "bye"})
        break
'''

ROWS = r'''
import pyarrow as pa
from pipe_plugin import stage

@stage(rows=True, adds={"n2": pa.int64()})
def double(row, ctx):
    return {"n2": row["n"] * 2}

double.run()
'''

SCHEMA = pa.schema([pa.field("id", pa.string(), False), ("text", pa.string()), ("n", pa.int64())])


def make_messages(batches: int, rows: int) -> list[bytes]:
    msgs = []
    for seq in range(batches):
        start = seq * rows
        b = pa.RecordBatch.from_arrays(
            [
                pa.array([f"notes/{i:06d}.txt" for i in range(start, start + rows)]),
                pa.array([f"row {i}: the quick brown fox jumps over the lazy dog" for i in range(start, start + rows)]),
                pa.array(range(start, start + rows), pa.int64()),
            ],
            schema=SCHEMA,
        )
        payload = ipc(SCHEMA, [b])
        msgs.append((json.dumps({"type": "batch", "seq": seq, "rows": rows, "bytes": len(payload)}) + "\n").encode() + payload)
    return msgs


def drive(argv: list[str], messages: list[bytes]) -> tuple[float, float]:
    """Seconds from the first batch sent to the last result read (describe and exit excluded),
    and the CPU seconds the plugin's main thread used in that time."""
    env = dict(os.environ, PIPE_PROTOCOL="1", PIPE_STAGE="bench")
    env["PYTHONPATH"] = SDK_DIR + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    inp, out = proc.stdin, proc.stdout

    def read():
        header = json.loads(out.readline())
        n = header.get("bytes") or 0
        if n:
            out.read(n)
        return header

    payload = ipc(SCHEMA)
    inp.write((json.dumps({"type": "describe", "protocol": 1, "stage": "bench", "params": {}, "bytes": len(payload)}) + "\n").encode() + payload)
    inp.flush()
    assert read()["type"] == "schema"
    cpu0 = _cpu_ns(proc.pid)
    window = threading.Semaphore(2)  # pipe keeps at most two batches in flight

    def writer():
        for m in messages:
            window.acquire()
            inp.write(m)
            inp.flush()

    start = time.perf_counter()
    t = threading.Thread(target=writer)
    t.start()
    for seq in range(len(messages)):
        header = read()
        assert header["type"] == "result" and header["seq"] == seq, header
        window.release()
    elapsed = time.perf_counter() - start
    cpu = (_cpu_ns(proc.pid) - cpu0) / 1e9
    t.join()
    inp.write(b'{"type": "end"}\n')
    inp.close()
    assert read()["type"] == "bye"
    assert proc.wait(10) == 0
    return elapsed, cpu


def _cpu_ns(pid: int) -> int:
    """CPU time of the process's main thread so far, in ns (Linux: /proc/PID/schedstat)."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0])
    except OSError:
        return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=1563)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3, help="runs per plugin; the best is shown")
    a = ap.parse_args()
    messages = make_messages(a.batches, a.rows)
    with tempfile.TemporaryDirectory() as tmp:
        scripts = {}
        for name, code in (("echo", ECHO), ("raw", RAW), ("rows", ROWS)):
            scripts[name] = os.path.join(tmp, f"{name}.py")
            with open(scripts[name], "w") as f:
                f.write(code)
        plugins = [
            ("echo (no parsing)", [sys.executable, scripts["echo"]]),
            ("raw (PROTOCOL.md)", [sys.executable, scripts["raw"]]),
            ("passthrough (SDK)", [sys.executable, os.path.join(REPO, "tests", "fixtures", "plugins", "passthrough.py")]),
            ("row mode (SDK)", [sys.executable, scripts["rows"]]),
        ]
        print(f"{a.batches} batches x {a.rows} rows ({a.batches * a.rows} rows), best of {a.repeat}")
        print("wall: first batch sent to last result read; plugin CPU: CPU time of the plugin's main")
        print("thread over the same span (Linux), per batch\n")
        print("  plugin                 wall     per batch   over echo      rows/s   plugin CPU per batch")
        floor = None
        for label, argv in plugins:
            runs = [drive(argv, messages) for _ in range(a.repeat)]
            best = min(w for w, _ in runs)
            cpu = min(c for _, c in runs) / a.batches * 1e6
            per = best / a.batches * 1e6
            floor = per if floor is None else floor
            print(
                f"  {label:20s} {best:6.3f} s  {per:6.1f} us  {per - floor:+7.1f} us  {a.batches * a.rows / best:10,.0f}   {cpu:6.1f} us"
            )


if __name__ == "__main__":
    main()
