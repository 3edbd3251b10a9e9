"""Batches for Keras: :func:`resize_batch` (OpenCV, per batch) and :class:`BatchSequence`
(a ``keras.utils.PyDataset`` over one split, reshuffled each epoch from ``(seed, epoch)``).

Images are held once as ``uint8`` RGB at their stored size; each batch is resized on
the fly to the model's input size, so no resized float copy of a whole data set ever
exists. The trainer also feeds cached frozen-prefix features through
:class:`BatchSequence` (``image_size=None``).
"""

from __future__ import annotations

import copy
import math

import cv2
import keras
import numpy as np

from kbench.data.augment import Augmenter, flip_mask


def resize_batch(images, size: int, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Resize ``uint8`` RGB images to ``(b, size, size, 3)`` ``float32`` in [0, 255] with OpenCV."""
    out = np.empty((len(images), size, size, 3), np.float32)
    for i, im in enumerate(images):
        out[i] = im if im.shape[:2] == (size, size) else cv2.resize(im, (size, size), interpolation=interpolation)
    return out


def count_batches(n: int, batch_size: int, limit_batches: int | float | None = None) -> int:
    """Batches per epoch of ``n`` samples: ``ceil(n / batch_size)``, capped by
    ``limit_batches`` (int = that many batches, float = that fraction, at least 1 when > 0)."""
    batches = math.ceil(n / batch_size)
    if isinstance(limit_batches, float):
        return max(1, int(batches * limit_batches)) if limit_batches > 0 else 0
    if isinstance(limit_batches, int):
        return min(batches, limit_batches)
    return batches


class BatchSequence(keras.utils.PyDataset):
    """Batches ``(x, y)`` of one split, reshuffled each epoch from ``(seed, epoch)``.

    ``x`` is either images (``uint8``, resized per batch to ``image_size``; the
    output is ``float32 (b, image_size, image_size, 3)`` in [0, 255]) or cached
    features (any float array, served as they are when ``image_size`` is None).
    ``y`` batches are ``int32 (b,)`` (``float32 (b, num_classes)`` soft targets when
    ``augment`` mixes). ``epoch`` can be set to resume an order.

    ``augment``: False, True (random horizontal flips) or an
    :class:`~kbench.data.augment.Augmenter`, applied once per image batch with the key
    ``(seed, epoch, batch index)``.

    ``limit_batches``: int = number of batches, float = fraction of them.
    :meth:`tail` serves only an epoch's last batches (resuming inside an epoch).
    """

    def __init__(self, x, y, batch_size: int, image_size: int | None, shuffle: bool = False, seed: int = 0,
                 limit_batches: int | float | None = None, augment: bool | Augmenter = False,
                 interpolation: int = cv2.INTER_LINEAR):
        super().__init__(workers=1, use_multiprocessing=False)
        self.x, self.y, self.batch_size, self.image_size = x, y, batch_size, image_size
        self.shuffle, self.seed, self.interpolation = shuffle, seed, interpolation
        self.augment = Augmenter(flip=True) if augment is True else augment or None
        self.n_batches = count_batches(len(y), batch_size, limit_batches)
        self.epoch = 0
        self.offset = 0

    def tail(self, start: int) -> "BatchSequence":
        """A copy that serves batches ``start..`` of this epoch's order (same
        samples, same augmentation) as its batches ``0..``; ``epoch`` is shared
        at the time of the call.

        Raises:
            ValueError: ``start`` is not in ``[0, len(self))``.
        """
        if not 0 <= start < self.n_batches - self.offset:
            raise ValueError(f"tail start {start} outside [0, {self.n_batches - self.offset})")
        out = copy.copy(self)
        out.offset, out._order = self.offset + start, None
        return out

    def batch_sizes(self) -> list[int]:
        """Number of samples in each served batch (the last one may be smaller)."""
        n = len(self.y)
        return [min(self.batch_size, n - i * self.batch_size) for i in range(self.offset, self.n_batches)]

    def order(self) -> np.ndarray:
        """Sample order of the current epoch."""
        if not self.shuffle:
            return np.arange(len(self.y))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.y))

    def on_epoch_begin(self):
        self._order = self.order()

    def on_epoch_end(self):
        self.epoch += 1
        self._order = None

    def __len__(self) -> int:
        return self.n_batches - self.offset

    def indices(self, i: int) -> tuple[int, np.ndarray]:
        """``(batch index in the epoch, sample indices)`` of served batch ``i``."""
        if i >= len(self):
            raise IndexError(i)
        i += self.offset
        order = getattr(self, "_order", None)
        if order is None:
            order = self._order = self.order()
        return i, order[i * self.batch_size:(i + 1) * self.batch_size]

    def __getitem__(self, i: int):
        i, idx = self.indices(i)
        if self.image_size is None:
            return self.x[idx], self.y[idx]
        xb = resize_batch([self.x[j] for j in idx], self.image_size, self.interpolation)
        if self.augment:
            return self.augment(xb, self.y[idx], (self.seed, self.epoch, i))
        return xb, self.y[idx]


class TwoViewSequence(BatchSequence):
    """Cached features of two views of every image, ``x`` = ``(plain, mirrored)`` (each
    ``float32 (N, ...)``, sample order of the split), serving one view per image: the mirror
    where :func:`~kbench.data.augment.flip_mask` says so, the rule of the uncached flip,
    so both paths flip the same images in the same batches. Arguments otherwise as
    :class:`BatchSequence` (``image_size`` None)."""

    def __init__(self, x: tuple, y, batch_size: int, shuffle: bool = False, seed: int = 0,
                 limit_batches: int | float | None = None):
        super().__init__(x, y, batch_size, None, shuffle=shuffle, seed=seed, limit_batches=limit_batches)

    def __getitem__(self, i: int):
        i, idx = self.indices(i)
        plain, mirrored = self.x
        m = flip_mask(self.seed, self.epoch, i, len(idx))
        xb = plain[idx]
        xb[m] = mirrored[idx[m]]
        return xb, self.y[idx]
