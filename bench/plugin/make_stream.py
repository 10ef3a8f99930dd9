"""Writes what pipe sends the plugin of bench/plugin/plugin.toml, as files, to time the plugin alone:

    .pipe/venv/bin/python bench/plugin/make_stream.py /tmp/stream.bin /tmp/stream0.bin
    PIPE_PROTOCOL=1 PYTHONPATH=plugins/python hyperfine ".pipe/venv/bin/python tests/fixtures/plugins/passthrough.py < /tmp/stream0.bin > /dev/null" \
        ".pipe/venv/bin/python tests/fixtures/plugins/passthrough.py < /tmp/stream.bin > /dev/null"

The first file holds describe, every row of bench/data/rows.csv in messages of 1,024 rows (the
stage's batch_rows), and end; the second describe and end only. Run from the repository root."""

import json, sys
import pyarrow as pa, pyarrow.csv as pc
t = pc.read_csv("bench/data/rows.csv").rename_columns(["id","text","n"])
t = t.set_column(2, "n", t.column("n").cast(pa.int64()))
batches = t.combine_chunks().to_batches(max_chunksize=1024)
def msg(h, schema, bs):
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as w:
        for b in bs: w.write_batch(b)
    data = sink.getvalue().to_pybytes()
    h["bytes"] = len(data)
    return (json.dumps(h) + "\n").encode() + data
with open(sys.argv[1], "wb") as f:
    f.write(msg({"type":"describe","protocol":1,"stage":"p","params":{}}, t.schema, []))
    for i, b in enumerate(batches):
        f.write(msg({"type":"batch","seq":i,"rows":b.num_rows}, t.schema, [b]))
    f.write(b'{"type":"end","bytes":0}\n')
with open(sys.argv[2], "wb") as f:
    f.write(msg({"type":"describe","protocol":1,"stage":"p","params":{}}, t.schema, []))
    f.write(b'{"type":"end","bytes":0}\n')
