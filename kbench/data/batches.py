"""Batches for Keras: :func:`resize_batch` (OpenCV, per batch) and :class:`BatchSequence`
(a ``keras.utils.PyDataset`` over one split, reshuffled each epoch from ``(seed, epoch)``).

Images are held once as ``uint8`` RGB at their stored size; each batch is resized on
the fly to the model's input size, so no resized float copy of a whole data set ever
exists. The trainer also feeds cached frozen-prefix features through
:class:`BatchSequence` (``image_size=None``).

Prefetch: while keras runs a step on image batch ``i``, batches ``i+1 ..
i+PREFETCH_BATCHES`` are resized and augmented in background threads. Every batch is a
function of ``(seed, epoch, batch index)`` only, so the pixels, labels and order are
those of building each batch on demand (``PREFETCH_BATCHES = 0``).
"""

from __future__ import annotations

import copy
import math
import os
from concurrent.futures import ThreadPoolExecutor

import cv2
import keras
import numpy as np

from kbench.data.augment import Augmenter, flip_mask

#: Image batches built ahead, in background threads, while the model runs on the current
#: one (0: build each batch when keras asks for it). Cached features are never prefetched.
PREFETCH_BATCHES = 2
#: Threads that build prefetched batches (OpenCV and NumPy release the GIL).
PREFETCH_WORKERS = 2
_POOL: tuple[int, ThreadPoolExecutor] | None = None


def resize_batch(images, size: int, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Resize ``uint8`` RGB images to ``(b, size, size, 3)`` ``float32`` in [0, 255] with OpenCV.

    ``images``: a ``uint8 (b, h, w, 3)`` array or a list of ``(h_i, w_i, 3)`` arrays. Each
    image is resized into a ``uint8`` buffer, then the batch is converted once (the same
    pixels as converting image by image); images already ``size`` x ``size`` are copied.
    """
    if isinstance(images, np.ndarray) and images.shape[1:3] == (size, size):
        return images.astype(np.float32)
    out = np.empty((len(images), size, size, 3), np.uint8)
    for i, im in enumerate(images):
        if im.shape[:2] == (size, size):
            out[i] = im
        else:
            out[i] = cv2.resize(im, (size, size), interpolation=interpolation)
    return out.astype(np.float32)


def _prefetcher() -> ThreadPoolExecutor:
    """The threads that build image batches ahead (:data:`PREFETCH_WORKERS`, made once per
    process: a forked child, which has none of its parent's threads, makes its own)."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (os.getpid(), ThreadPoolExecutor(max_workers=PREFETCH_WORKERS, thread_name_prefix="kbench-prefetch"))
    return _POOL[1]


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

    ``limit_batches``: int = number of batches, float = fraction of them. Image batches
    are built ahead in threads (:data:`PREFETCH_BATCHES`, same results).
    :meth:`tail` serves only an epoch's last batches (resuming inside an epoch).
    ``shard = (rank, processes)``: serve this process's contiguous part of every batch
    (a batch whose size does not divide by ``processes`` whole; see
    :mod:`kbench.trainer.replicas`); :meth:`batch_sizes` stays the global batches'.
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
        self.shard: tuple[int, int] | None = None
        self._pending: dict = {}  # (epoch, served batch) -> Future of a batch built ahead

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
        out.offset, out._order, out._pending = self.offset + start, None, {}
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
        for ready in self._pending.values():
            ready.cancel()
        self._pending = {}

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

    def _build(self, i: int, idx: np.ndarray, epoch: int):
        """Image batch ``i`` of ``epoch`` (samples ``idx``), resized and augmented; reads no
        mutable state of the sequence, so prefetch threads may run it."""
        images = self.x[idx] if isinstance(self.x, np.ndarray) else [self.x[j] for j in idx]
        xb = resize_batch(images, self.image_size, self.interpolation)
        if self.augment:
            return self.augment(xb, self.y[idx], (self.seed, epoch, i))
        return xb, self.y[idx]

    def __getitem__(self, i: int):
        j, idx = self.indices(i)
        if self.image_size is None:
            return self.part((self.x[idx], self.y[idx]))
        if not PREFETCH_BATCHES:
            return self.part(self._build(j, idx, self.epoch))
        return self.part(self._prefetched(i, j, idx))

    def part(self, batch: tuple) -> tuple:
        """This process's part of a global ``batch`` under :attr:`shard` (the whole batch
        when its size does not divide by the process count), else ``batch``."""
        n = len(batch[-1])
        if self.shard is None or n % self.shard[1]:
            return batch
        rank, size = self.shard[0], n // self.shard[1]
        return tuple(b[rank * size:(rank + 1) * size] for b in batch)

    def _prefetched(self, i: int, j: int, idx: np.ndarray):
        """Served batch ``i`` (epoch batch ``j``, samples ``idx``) from the batches built
        ahead (built now if it is not there), after queueing the next :data:`PREFETCH_BATCHES`."""
        pending, epoch = self._pending, self.epoch
        for key in [k for k in pending if k[0] != epoch or k[1] < i]:  # another epoch, or skipped
            pending.pop(key).cancel()
        ready = pending.pop((epoch, i), None)
        for k in range(i + 1, min(i + 1 + PREFETCH_BATCHES, len(self))):
            if (epoch, k) not in pending:
                pending[(epoch, k)] = _prefetcher().submit(self._build, *self.indices(k), epoch)
        return ready.result() if ready is not None else self._build(j, idx, epoch)


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
        return self.part((xb, self.y[idx]))
