"""Write a split of the 16x16 digits as grayscale PNGs, with a labels.csv beside them.

Each image is ``{index:04d}.png``, ``index`` being its position in scikit-learn's
``load_digits``; ``labels.csv`` has the columns ``id,label`` where ``id`` is the file name (the
``id`` that pipe's ``collect.files`` gives the file). Images, split and pixel convention come
from ``examples/models/digits.py``.

The committed ``examples/digits/data/`` is the test split (360 images), made with:

    .venv/bin/python examples/digits/make_pngs.py
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "models"))
import digits  # noqa: E402  (examples/models/digits.py)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=HERE / "data", help="folder to write (default: %(default)s)"
    )
    parser.add_argument(
        "--split",
        choices=["train", "test", "all"],
        default="test",
        help="which images to write (default: %(default)s)",
    )
    args = parser.parse_args()

    images, labels = digits.load_digits16()
    train, test = digits.split(len(images))
    indices = {"train": train, "test": test, "all": range(len(images))}[args.split]

    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in indices:
        name = f"{index:04d}.png"
        Image.fromarray(images[index]).save(args.out / name)
        rows.append((name, int(labels[index])))

    with open(args.out / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["id", "label"])
        writer.writerows(rows)
    print(f"wrote {len(rows)} PNGs and labels.csv ({args.split} split) to {args.out}")


if __name__ == "__main__":
    main()
