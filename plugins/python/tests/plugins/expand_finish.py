"""Batch mode, inferred schema, rows held back and sent with bye (used by test_sdk.py): keeps the
first row of each batch, and at the end one row per batch seen."""

import pyarrow as pa

from pipe_plugin import stage


@stage
def expand_finish(batch, ctx):
    ctx.state.setdefault("count", 0)
    if batch.num_rows:
        ctx.state["count"] += 1
    return batch.slice(0, 1)


@expand_finish.finish
def finish(ctx):
    n = ctx.state.get("count", 0)
    return pa.table(
        {"id": [f"held-{i}" for i in range(n)], "text": ["held"] * n, "n": list(range(n))},
        schema=ctx.output_schema,
    )


if __name__ == "__main__":
    expand_finish.run()
