"""Batch mode without a declared schema, whose function cannot handle the empty batch used to
infer it (used by test_sdk.py)."""

from pipe_plugin import stage


@stage
def infer_fails(batch, ctx):
    first = batch.column("n")[0]  # IndexError on an empty batch
    return batch


if __name__ == "__main__":
    infer_fails.run()
