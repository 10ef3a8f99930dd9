"""Write the train split of the 16x16 digits as grayscale PNGs named with their label.

``train/{index:04d}_{label}.png``: ``index`` is the image's position in scikit-learn's
``load_digits`` and ``label`` its digit, so the id that pipe's ``collect.files`` gives a file
(``0005_5.png``) carries its label, which examples/train-diffusion reads with ``preprocess.sql``,
and the files' sorted order (the order of the rows a train stage gets) is ``digits.py``'s train
split. The committed ``examples/digits/train/`` is the dataset of both examples/train-vae and
examples/train-diffusion.
The images (byte for byte those of ``examples/digits/make_pngs.py --split train``), the split
and the pixel convention come from ``examples/models/digits.py``.

    .venv/bin/python examples/digits/make_train_pngs.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "models"))
import digits  # noqa: E402  (examples/models/digits.py)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "train",
                        help="folder to write (default: %(default)s)")
    args = parser.parse_args()

    images, labels = digits.load_digits16()
    train, _ = digits.split(len(images))
    args.out.mkdir(parents=True, exist_ok=True)
    for index in train:
        Image.fromarray(images[index]).save(args.out / f"{index:04d}_{int(labels[index])}.png")
    print(f"wrote {len(train)} PNGs (train split) to {args.out}")


if __name__ == "__main__":
    main()
