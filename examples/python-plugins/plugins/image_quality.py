"""image_quality: measures encoded images and flags the ones worth keeping.

For each row's encoded image (PNG, JPEG, ... anything Pillow reads) in the Binary column
`column`, adds:

  width, height  Int32    pixels
  brightness     Float64  mean gray level, 0 (black) .. 1 (white)
  contrast       Float64  standard deviation of the gray levels (0 .. 0.5)
  sharpness      Float64  variance of the 3x3 Laplacian of the gray image (gray in 0..1);
                          low means blurry or flat. 0 for images under 3x3 pixels.
  ok             Boolean  min(width, height) >= min_size, brightness within
                          [min_brightness, max_brightness], and sharpness >= min_sharpness

An image that cannot be decoded is a per-row error (the stage's `on_error` decides).

params (all optional):
  column          "content"  the Binary column with the encoded image
  min_size        1          smallest accepted width and height, in pixels
  min_brightness  0.0
  max_brightness  1.0
  min_sharpness   0.0
"""

import io

import numpy as np
import pyarrow as pa
from PIL import Image, UnidentifiedImageError

from pipe_plugin import BINARY_TYPES, ConfigError, Param, require_column, stage

PARAMS = {
    "column": Param("content", doc="the Binary column holding the encoded image"),
    "min_size": Param(1, doc="smallest accepted width and height, in pixels"),
    "min_brightness": Param(0.0, doc="lowest accepted mean gray level (0..1)"),
    "max_brightness": Param(1.0, doc="highest accepted mean gray level (0..1)"),
    "min_sharpness": Param(0.0, doc="lowest accepted Laplacian variance"),
}

ADDS = {
    "width": pa.int32(),
    "height": pa.int32(),
    "brightness": pa.float64(),
    "contrast": pa.float64(),
    "sharpness": pa.float64(),
    "ok": pa.bool_(),
}


def measure(data: bytes):
    """(width, height, brightness, contrast, sharpness) of an encoded image."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        width, height = img.size
        gray = np.asarray(img.convert("L"), dtype=np.float64) / 255.0
    brightness = float(gray.mean()) if gray.size else 0.0
    contrast = float(gray.std()) if gray.size else 0.0
    if width >= 3 and height >= 3:
        lap = (
            gray[:-2, 1:-1] + gray[2:, 1:-1] + gray[1:-1, :-2] + gray[1:-1, 2:] - 4.0 * gray[1:-1, 1:-1]
        )
        sharpness = float(lap.var())
    else:
        sharpness = 0.0
    return width, height, brightness, contrast, sharpness


@stage(adds=ADDS, params=PARAMS)
def image_quality(batch, ctx):
    p = ctx.params
    ids = batch.column("id").to_pylist()
    images = batch.column(p["column"]).to_pylist()
    cols = {name: [] for name in ADDS}
    for row_id, data in zip(ids, images):
        try:
            if data is None:
                raise ValueError("no image (null)")
            w, h, b, c, s = measure(data)
        except UnidentifiedImageError:
            ctx.reject(row_id, "cannot decode the image: not a format Pillow reads")
            w = h = b = c = s = None  # the SDK drops rejected rows from the output
        except Exception as e:  # truncated or corrupt data, a decompression bomb, ...
            ctx.reject(row_id, f"cannot decode the image: {type(e).__name__}: {e}")
            w = h = b = c = s = None
        ok = (
            None
            if w is None
            else bool(
                min(w, h) >= p["min_size"]
                and p["min_brightness"] <= b <= p["max_brightness"]
                and s >= p["min_sharpness"]
            )
        )
        for name, value in zip(ADDS, (w, h, b, c, s, ok)):
            cols[name].append(value)
    return ctx.with_columns(batch, cols)


@image_quality.check
def check(params, input_schema):
    require_column(input_schema, params["column"], BINARY_TYPES, key="column")
    if params["min_size"] < 1:
        raise ConfigError("min_size", f"must be at least 1, got {params['min_size']}", "min_size = 8")
    for key in ("min_brightness", "max_brightness"):
        if not 0.0 <= params[key] <= 1.0:
            raise ConfigError(key, f"must be between 0 and 1, got {params[key]}")
    if params["min_brightness"] > params["max_brightness"]:
        raise ConfigError(
            "max_brightness",
            f"is below min_brightness ({params['max_brightness']} < {params['min_brightness']})",
            f"max_brightness = {max(params['min_brightness'], 1.0)}",
        )
    if params["min_sharpness"] < 0:
        raise ConfigError("min_sharpness", f"must be 0 or more, got {params['min_sharpness']}", "min_sharpness = 0.0")


if __name__ == "__main__":
    image_quality.run()
