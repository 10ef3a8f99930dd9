"""The digit data every image model in pipe's examples is trained and judged on.

Conventions (other scripts rely on them exactly):

* Images are scikit-learn's ``load_digits`` (1,797 digits, 8x8, values 0..16, ink high),
  scaled to 0..255 and upsampled to 16x16 grayscale with PIL's bilinear filter: ink bright on
  a black background, stored as uint8.
* The split is fixed: a permutation of the 1,797 indices from ``numpy.random.default_rng(0)``;
  its last ``TEST_SIZE`` (360, 20%) entries are the held-out test split, the rest the train
  split. Both are returned in ascending dataset-index order, which is also the order of the
  ``{index:04d}.png`` files that ``examples/digits/make_pngs.py`` writes.
* The tensor fed to models is float32 ``[N, 1, 16, 16]`` in [-1, 1]:
  ``value = pixel * (2 / 255) - 1``. This is what pipe's ``preprocess.image`` computes from
  the PNGs with ``mode = "gray"``, ``layout = "chw"``, ``size = [16, 16]``,
  ``scale = 0.00784313725490196``, ``mean = 1``, ``std = 1``.

Import it from a script in a sibling folder with::

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/models
    import digits
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

SIZE = 16
"""Side of the square images, in pixels."""

TEST_SIZE = 360
"""Images in the held-out test split: the last 20% of the fixed permutation."""

SPLIT_SEED = 0
"""Seed of the ``numpy.random.default_rng`` permutation that defines the split."""

SCALE = 2.0 / 255.0
"""Multiplier of a 0..255 pixel in the tensor form (``preprocess.image`` ``scale``)."""


def load_digits16() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as 16x16 images.

    Returns ``(images, labels)``: uint8 ``[1797, 16, 16]`` (0..255, ink bright) and int64
    ``[1797]`` (0..9), in scikit-learn's order, so ``images[i]`` is dataset index ``i``.
    """
    data = load_digits()
    small = np.rint(data.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    images = np.stack(
        [
            np.asarray(Image.fromarray(img).resize((SIZE, SIZE), Image.BILINEAR))
            for img in small
        ]
    )
    return images, data.target.astype(np.int64)


def split(n: int = 1797) -> tuple[np.ndarray, np.ndarray]:
    """The fixed train/test split of ``n`` dataset indices.

    Returns ``(train_indices, test_indices)``, each sorted ascending; the test split is the
    last ``TEST_SIZE`` entries of ``default_rng(SPLIT_SEED).permutation(n)``.
    """
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    return np.sort(perm[:-TEST_SIZE]), np.sort(perm[-TEST_SIZE:])


def to_tensor(images: np.ndarray) -> np.ndarray:
    """uint8 images ``[N, 16, 16]`` (0..255) to the model tensor float32 ``[N, 1, 16, 16]``.

    ``value = pixel * (2 / 255) - 1``: background -1, full ink +1.
    """
    pixels = np.asarray(images, dtype=np.float32)
    return (pixels * np.float32(SCALE) - np.float32(1.0))[:, None, :, :]


def from_tensor(tensors: np.ndarray) -> np.ndarray:
    """The inverse of ``to_tensor``: float ``[N, 1, 16, 16]`` in [-1, 1] to uint8 ``[N, 16, 16]``.

    Values are clipped to [-1, 1] and rounded, so generated samples can be saved as PNGs.
    """
    tensors = np.clip(np.asarray(tensors, dtype=np.float32), -1.0, 1.0)
    return np.rint((tensors[:, 0] + 1.0) * (255.0 / 2.0)).astype(np.uint8)
