"""``python -m pipe_plugin``: run a plugin over local data (files like collect.files, or a table
file) as pipe would, and show what it answers."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import pyarrow as pa

from .constants import PROTOCOL
from .formats import expected_extensions, table_format
from .ipc import _open
from .local import _as_batches
from .session import _schema_diff
from .wire import _Wire, _encode, _write_all


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
    fmt = table_format(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    elif fmt == "csv":
        import pyarrow.csv as pcsv

        table = pcsv.read_csv(path)
    elif fmt == "jsonl":
        import pyarrow.json as pjson

        table = pjson.read_json(path)
    elif fmt == "arrow":
        with open(path, "rb") as f:
            data = f.read()
        try:
            table = pa.ipc.open_file(pa.py_buffer(data)).read_all()
        except pa.ArrowInvalid:
            table = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
    else:
        raise SystemExit(f"pipe_plugin: {path}: expected {expected_extensions()}")
    if "id" in table.column_names:
        table = table.set_column(table.schema.get_field_index("id"), "id", table["id"].cast(pa.string()))
    else:
        table = table.add_column(0, "id", pa.array([str(i) for i in range(table.num_rows)], pa.string()))
    return table


def _write_table(table: pa.Table, path: str) -> None:
    fmt = table_format(path)  # None (any other extension): JSON lines
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, path)
    elif fmt == "csv":
        import pyarrow.csv as pcsv

        pcsv.write_csv(table, path)
    elif fmt == "arrow":
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
    src.add_argument("--table", metavar="FILE", help="rows from a .parquet/.pq, .csv, .jsonl/.ndjson or .arrow/.ipc/.feather file")
    parser.add_argument("--include", action="append", default=[], metavar="GLOB", help="with --files (repeatable)")
    parser.add_argument("--load", choices=["bytes", "text", "none"], default="bytes", help="with --files (default bytes)")
    parser.add_argument("--params", default="{}", metavar="JSON", help="the stage's params, as JSON")
    parser.add_argument("--stage", default="local", help="the stage id to announce (default: local)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", metavar="FILE", help="write the output rows (.parquet/.pq, .csv, .jsonl/.ndjson, .arrow/.ipc/.feather; other names: JSON lines)")
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
