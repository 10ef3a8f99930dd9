"""A trainer on pipe_plugin.trainer, for test_sdk.py: "fits" the mean of the tensor column
`image` (scaled by params.scale) in params.steps steps and writes model.json with what it saw.
params.fail raises after the second step; params.skip_output returns without writing."""

import json
import os

import numpy as np

from pipe_plugin import Param, trainer


@trainer(params={"steps": 3, "scale": 1.0, "fail": False, "skip_output": False, "note": Param(None, type=(str, type(None)))},
         outputs=["model.json"])
def train(ctx):
    print("hello from print")  # goes to stderr: stdout is for progress lines
    os.write(1, b"raw write to fd 1\n")  # so does this
    image = ctx.column("image")
    x = ctx.arrays["x"]
    rng = np.random.default_rng(ctx.seed)
    target = float(image.mean()) * ctx.params["scale"]
    w = 0.0
    steps = ctx.params["steps"]
    for step in range(1, steps + 1):
        w += (target - w) * 0.5
        ctx.log(step=step, total=steps, loss=(target - w) ** 2, noise=np.float32(rng.random()))
        if ctx.params["fail"] and step == 2:
            raise RuntimeError("the loss went sideways")
    if ctx.params["skip_output"]:
        return
    with open(ctx.output("model.json"), "w") as f:
        json.dump({
            "w": w,
            "rows": ctx.table.num_rows,
            "ids": ctx.table.column("id").to_pylist(),
            "image_shape": list(image.shape),
            "image_dtype": str(image.dtype),
            "x_sum": float(x.sum()),
            "seed": ctx.seed,
            "params": ctx.params,
            "stage": ctx.stage,
        }, f)


if __name__ == "__main__":
    train.run()
