"""Batch mode with schema=: the function returns the declared columns in another order and one of
them narrower (Int32 for Int64); the SDK reorders and widens (used by test_sdk.py)."""

import pyarrow as pa
import pyarrow.compute as pc

from pipe_plugin import stage


def out_schema(input_schema, params):
    return pa.schema([("id", pa.string()), ("n2", pa.int64()), ("text", pa.string())])


@stage(schema=out_schema)
def reorder(batch, ctx):
    n2 = pc.multiply(batch["n"], 2).cast(pa.int32())
    return pa.table({"text": batch["text"], "n2": n2, "id": batch["id"]})


if __name__ == "__main__":
    reorder.run()
