#!/usr/bin/env python3
"""Writes N photo-like 256x256 RGB JPEGs (quality 90) for the image benchmark.

Each image is a smooth colour field (a random low-resolution grid upsampled, like sky, walls and
out-of-focus backgrounds), a few soft-edged shapes with their own gradients and a fine texture
(objects), a light blur, and sensor-like noise. That gives JPEG files of the size and entropy of
real photos (about 19 KB on average at this size), so decoding costs what it costs on real data. The
result depends only on --seed and the image's index: image i is the same whatever --count is.

    .venv/bin/python bench/make_images.py [--count 5000] [--out bench/data/images] [--seed 0] [--jobs N]

Files are named img_00000.jpg, img_00001.jpg, ...; an existing file of the same name is overwritten.
"""
import argparse
import multiprocessing
import os
import sys
import time

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

SIZE = 256


def smooth_field(rng, cells, size=SIZE):
    """A smooth RGB field: a cells x cells random grid upsampled with bicubic interpolation."""
    grid = rng.integers(0, 256, size=(cells, cells, 3), dtype=np.uint8)
    return Image.fromarray(grid).resize((size, size), Image.BICUBIC)


def texture_bank(seed, count=32):
    """Oriented sinusoidal textures (fabric, foliage, brickwork...) centred on 128, as RGB images."""
    rng = np.random.default_rng([seed, 1 << 30])
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    bank = []
    for _ in range(count):
        angle = rng.uniform(0, np.pi)
        freq = rng.uniform(0.15, 0.9)
        amp = rng.uniform(4, 28)
        wave = np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * freq + rng.uniform(0, 6.3))
        wave += 0.5 * np.sin((np.sin(angle) * xx - np.cos(angle) * yy) * freq * 2.3)
        bank.append(Image.fromarray(np.clip(128 + amp * wave, 0, 255).astype(np.uint8)).convert("RGB"))
    return bank


def noise_bank(seed, count=8):
    """Gaussian sensor noise centred on 128, per channel, 2x the image size (cropped at random)."""
    rng = np.random.default_rng([seed, 1 << 31])
    return [
        Image.fromarray(np.clip(128 + rng.normal(0, rng.uniform(4, 10), size=(2 * SIZE, 2 * SIZE, 3)), 0, 255)
                        .astype(np.uint8))
        for _ in range(count)
    ]


def make_image(index, seed, textures, noises):
    """Image `index`: mostly PIL operations (C code), so a few milliseconds each."""
    rng = np.random.default_rng([seed, index])
    img = smooth_field(rng, int(rng.integers(2, 6)))

    # Objects: soft-edged ellipses, rectangles and polygons, each filled with its own gradient and a
    # fine texture, blended in through a blurred mask.
    for _ in range(int(rng.integers(3, 8))):
        mask = Image.new("L", (SIZE, SIZE), 0)
        draw = ImageDraw.Draw(mask)
        x0, y0 = (int(v) for v in rng.integers(-40, SIZE, size=2))
        w, h = (int(v) for v in rng.integers(30, 160, size=2))
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=255)
        elif kind == 1:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=255)
        else:
            pts = rng.integers(-20, SIZE + 20, size=(int(rng.integers(3, 7)), 2))
            draw.polygon([(int(p[0]), int(p[1])) for p in pts], fill=255)
        mask = mask.filter(ImageFilter.BoxBlur(float(rng.uniform(0.5, 3.0))))
        fill = smooth_field(rng, int(rng.integers(2, 4)))
        fill = ImageChops.add(fill, textures[int(rng.integers(len(textures)))], 1.0, -128)
        img = Image.composite(fill, img, mask)

    img = img.filter(ImageFilter.BoxBlur(float(rng.uniform(0.3, 0.8))))  # lens softness
    x, y = (int(v) for v in rng.integers(0, SIZE, size=2))
    noise = noises[int(rng.integers(len(noises)))].crop((x, y, x + SIZE, y + SIZE))  # sensor noise
    return ImageChops.add(img, noise, 1.0, -128)


_state = {}


def _init(seed, out):
    _state.update(seed=seed, out=out, textures=texture_bank(seed), noises=noise_bank(seed))


def _write(indices):
    total = 0
    for i in indices:
        path = os.path.join(_state["out"], f"img_{i:05d}.jpg")
        make_image(i, _state["seed"], _state["textures"], _state["noises"]).save(path, "JPEG", quality=90)
        total += os.path.getsize(path)
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "images"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes (default: all cores)")
    args = ap.parse_args()

    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    chunks = [range(i, min(i + 100, args.count)) for i in range(0, args.count, 100)]
    if args.jobs > 1 and len(chunks) > 1:
        with multiprocessing.Pool(args.jobs, initializer=_init, initargs=(args.seed, args.out)) as pool:
            total = sum(pool.imap_unordered(_write, chunks))
    else:
        _init(args.seed, args.out)
        total = sum(map(_write, chunks))
    took = time.perf_counter() - start
    print(f"make_images: {args.count} JPEGs in {args.out} ({total / max(args.count, 1) / 1024:.1f} KB each, "
          f"{took:.1f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
