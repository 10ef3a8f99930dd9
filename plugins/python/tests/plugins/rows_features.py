"""Row mode, setup, state, finish, print, and the ways a row can fail (used by test_sdk.py)."""

import pyarrow as pa

from pipe_plugin import stage


@stage(rows=True, adds={"upper": pa.string(), "len": pa.int32()}, params={"drop_every": 10})
def rows_features(row, ctx):
    n = row["n"]
    print(f"row {row['id']}")  # must reach stderr, not the protocol
    ctx.state["rows"] += 1
    if n == 13:
        raise ValueError("unlucky")
    if n == 17:
        ctx.reject(row["id"], "rejected by hand")
        return {"len": 0}  # returned anyway: the SDK drops it
    if n == 19:
        return {"len": "nineteen"}  # cannot be Int32: a row error, not a failed batch
    if n == 23:
        return {"bogus": 1}  # not an output column
    if n % ctx.params["drop_every"] == 0:
        return None
    return {"upper": row["text"].upper(), "len": len(row["text"])}


@rows_features.setup
def setup(ctx):
    ctx.state["rows"] = 0
    ctx.log(f"setup for stage {ctx.stage}")


@rows_features.finish
def finish(ctx):
    return [{"id": "summary", "text": "rows seen", "n": ctx.state["rows"], "upper": None, "len": None}]


if __name__ == "__main__":
    rows_features.run()
