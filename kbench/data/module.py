"""The DataModule: load, split and batch images (decoded and resized with OpenCV).

Images are held once, as ``uint8`` RGB at their stored size (CIFAR: 32x32); each
batch is resized on the fly to the model's input size, so no resized float copy
of the whole data set ever exists. Preprocessing is *not* done here: it is the
first layer of the model (:class:`kbench.models.Preprocess`), so it can never be
applied twice or touch a cached array.

Sources (``source``):

* ``cifar10`` / ``cifar100`` (:mod:`kbench.data.cifar`): a local copy first (``root`` option or the
  ``KBENCH_DATA_DIR`` environment variable: the official ``cifar-10-python.tar.gz``
  / ``cifar-100-python.tar.gz``, their extracted folders, or an image-folder copy
  with ``train/`` and ``test/``), then ``keras.datasets`` (its cache in
  ``~/.keras/datasets``, else a download).
* ``folder``: ``root/train/<class>/*`` and ``root/test/<class>/*``, or a single
  ``root/<class>/*`` tree that is split into train and test.
* ``npz``: a file with ``x_train, y_train, x_test, y_test`` (RGB images ``(N, h, w, 3)``,
  uint8 or any integer / float dtype with values in [0, 255]; gray ``(N, h, w[, 1])``
  and RGBA (alpha dropped) are accepted; labels: class indices ``(N,)`` or ``(N, 1)``,
  or one-hot ``(N, C)``) and optional ``class_names``.

Bad input (image files: see :mod:`kbench.data.images`) gets a :class:`kbench.KbenchError`
naming the file, folder, array or index and what to do; unusable files in an image
folder are listed and skipped with a warning, or refused with ``strict``.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass

import cv2
import keras
import numpy as np

from kbench import KbenchError
from kbench.data.cifar import (  # noqa: F401  (CIFAR10_CLASSES: re-exported)
    CIFAR10_CLASSES,
    CIFAR_RELEASES,
    DATA_ENV,
    download_cifar,
    find_local_cifar,
    load_cifar_release,
    no_local_cifar,
)
from kbench.data.images import (  # noqa: F401  (IMAGE_EXTENSIONS, decode_image, read_image: re-exported)
    IMAGE_EXTENSIONS,
    check_class_folders,
    decode_all,
    decode_image,
    list_class_tree,
    read_image,
    report_skipped,
)
from kbench.data.npz import load_npz

from kbench.data.sources import INTERPOLATIONS, SOURCES  # noqa: E402,F401  (re-exported)


@dataclass
class Split:
    """Images and labels of one split.

    ``x``: ``uint8`` array ``(N, h, w, 3)`` RGB, or a list of such ``(h, w, 3)``
    arrays when sizes differ; ``y``: ``int32`` array ``(N,)`` in ``[0, num_classes)``.
    """

    x: np.ndarray | list
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


def _stack(images: list[np.ndarray]) -> np.ndarray | list:
    shapes = {im.shape for im in images}
    return np.stack(images) if len(shapes) == 1 and images else images


def _decode_files(files: list[str], labels: list[int], where: str,
                  progress: bool) -> tuple[Split, list[tuple[str, str]], list[tuple[str, str]]]:
    """Decode ``files`` of folder ``where`` (:func:`kbench.data.images.decode_all`); returns the usable
    images, the ``(path, problem)`` of unusable ones and the ``(path, note)`` of ones worth mentioning."""
    decoded = decode_all(files, where, progress)
    bad = [(f, d.problem) for f, d in zip(files, decoded) if d.image is None]
    notes = [(f, d.note) for f, d in zip(files, decoded) if d.note]
    keep = [i for i, d in enumerate(decoded) if d.image is not None]
    split = Split(_stack([decoded[i].image for i in keep]), np.asarray([labels[i] for i in keep], np.int32))
    return split, bad, notes


def _subset_per_class(y: np.ndarray, k: int | None, seed: int) -> np.ndarray:
    """Sorted indices of at most ``k`` random samples per class (all when ``k`` is None)."""
    if k is None:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    idx = [rng.permutation(np.flatnonzero(y == c))[:k] for c in np.unique(y)]
    return np.sort(np.concatenate(idx))


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, shuffled, per-class split of indices ``0..len(y)-1``.

    Each class contributes ``round(fraction * n_class)`` samples to the second
    part (at least one when ``fraction > 0`` and the class has two or more).

    Returns:
        ``(keep, held_out)``: disjoint sorted ``int64`` index arrays covering all samples.
    """
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n = int(round(fraction * len(idx)))
        if fraction > 0 and n == 0 and len(idx) > 1:
            n = 1
        held.append(idx[:n])
        keep.append(idx[n:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


class DataModule:
    """Loads a data set, splits it and serves batches (Lightning's DataModule role).

    Args:
        source: one of :data:`SOURCES`.
        root: local data path (see module docstring); for ``cifar*`` optional.
        val_split: fraction of each training class held out for validation.
        test_split: for a single-tree ``folder``, fraction held out for testing.
        batch_size: images per batch.
        seed: seeds the split, the subsets and the per-epoch shuffling.
        max_train_per_class / max_test_per_class: stratified subsets (None = all).
        interpolation: OpenCV resize interpolation name.
        augment: random horizontal flips on training batches (disables the
            frozen-prefix cache, whose features must be deterministic).
        strict: ``folder`` sources: unusable files (empty, truncated, not an image)
            and hidden/system/stray entries are an error listing them, instead of
            being skipped with a warning that lists them (see :func:`kbench.data.images.report_skipped`).
        progress: report the decoding of an image folder on stderr (a bar on a terminal,
            else a start and an end line: :func:`kbench.data.images.decode_all`); False: silent.

    After :meth:`setup`: ``train``, ``val``, ``test`` (:class:`Split`),
    ``class_names`` (list of str), ``num_classes``; for ``folder`` sources also
    ``skipped`` (``(path, reason)`` of every entry not used) and ``notes``
    (``(path, note)`` of files decoded by content despite their extension).

    Raises:
        KbenchError: an option out of range (named, with its allowed range).
    """

    def __init__(self, source: str = "cifar10", root: str | None = None, val_split: float = 0.1,
                 test_split: float = 0.2, batch_size: int = 64, seed: int = 0,
                 max_train_per_class: int | None = None, max_test_per_class: int | None = None,
                 interpolation: str = "linear", augment: bool = False, strict: bool = False,
                 progress: bool = True):
        if source not in SOURCES:
            raise KbenchError(f"unknown data source {source!r}; choose one of: {', '.join(SOURCES)}")
        if not 0 <= val_split < 1:
            raise KbenchError(f"data.val_split must be in [0, 1), got {val_split}")
        if not 0 < test_split < 1:
            raise KbenchError(f"data.test_split must be in (0, 1), got {test_split}")
        for key, k in (("max_train_per_class", max_train_per_class), ("max_test_per_class", max_test_per_class)):
            if k is not None and k < 1:
                raise KbenchError(f"data.{key} must be >= 1 or null (= all images), got {k}")
        if batch_size < 1:
            raise KbenchError(f"data.batch_size must be >= 1, got {batch_size}")
        if interpolation not in INTERPOLATIONS:
            raise KbenchError(f"unknown interpolation {interpolation!r}; choose one of: {', '.join(INTERPOLATIONS)}")
        self.source, self.root, self.val_split, self.test_split = source, root, val_split, test_split
        self.batch_size, self.seed, self.augment, self.strict = batch_size, seed, augment, strict
        self.progress = progress
        self.max_train_per_class, self.max_test_per_class = max_train_per_class, max_test_per_class
        self.interpolation = interpolation
        self.train = self.val = self.test = None
        self.class_names: list[str] = []
        self.skipped: list[tuple[str, str]] = []
        self.notes: list[tuple[str, str]] = []

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # ---------------------------------------------------------------- loading
    def setup(self) -> "DataModule":
        """Load the source, take subsets, split off validation. Idempotent.

        Raises:
            KbenchError: missing/unreadable data (with the accepted local sources);
                folder: fewer than 2 class folders, empty class folders, different
                class folders in train and test, a class left without usable images,
                unusable files with ``strict``; npz: missing arrays, wrong shapes or
                lengths, labels out of range, NaN/inf or out-of-range pixel values.
        """
        if self.train is not None:
            return self
        if self.source in CIFAR_RELEASES:
            full, test, names = self._load_cifar()
        elif self.source == "folder":
            full, test, names = self._load_folder()
        else:
            full, test, names = self._load_npz()
        self._check_labels(full, names, "train")
        self._check_labels(test, names, "test")
        full = self._take(full, _subset_per_class(full.y, self.max_train_per_class, self.seed))
        test = self._take(test, _subset_per_class(test.y, self.max_test_per_class, self.seed + 1))
        tr, va = stratified_split(full.y, self.val_split, self.seed)
        self.train, self.val, self.test, self.class_names = self._take(full, tr), self._take(full, va), test, names
        return self

    @staticmethod
    def _take(s: Split, idx: np.ndarray) -> Split:
        x = s.x[idx] if isinstance(s.x, np.ndarray) else [s.x[i] for i in idx]
        return Split(x, s.y[idx])

    @staticmethod
    def _check_labels(s: Split, names: list[str], split: str) -> None:
        if len(s) and (s.y.min() < 0 or s.y.max() >= len(names)):
            raise KbenchError(f"{split} labels must be in [0, {len(names)}), found {s.y.min()}..{s.y.max()}")

    def _load_cifar(self):
        roots = [r for r in (self.root, os.environ.get(DATA_ENV)) if r]
        local = find_local_cifar(self.source, [os.path.expanduser(r) for r in roots])
        if local and os.path.isdir(os.path.join(local, "train")):
            return self._load_folder(local)
        if local:
            (xtr, ytr), (xte, yte), names = load_cifar_release(self.source, local)
        elif roots:
            raise no_local_cifar(self.source, roots)
        else:
            (xtr, ytr), (xte, yte), names = download_cifar(self.source)
        return Split(xtr, ytr), Split(xte, yte), names

    def _load_folder(self, root: str | None = None):
        root = os.path.expanduser(root or self.root or "")
        if not root or not os.path.isdir(root):
            raise KbenchError(f"data root {root!r} is not a folder; pass --data.root PATH to an image folder")
        if os.path.isdir(os.path.join(root, "train")):
            dirs = {"train": os.path.join(root, "train"), "test": os.path.join(root, "test")}
        else:
            dirs = {"all": root}
        trees, skipped = {}, []
        for split, d in dirs.items():
            if os.path.isdir(d):
                trees[split], bad = list_class_tree(d)
                skipped += bad
        names = sorted(next(iter(trees.values())))
        check_class_folders(root, dirs, trees, names)
        out, notes = {}, []
        for split, tree in trees.items():
            files = [f for c in names for f in tree.get(c, [])]
            labels = [i for i, c in enumerate(names) for _ in tree.get(c, [])]
            if split == "train":
                keep = _subset_per_class(np.asarray(labels), self.max_train_per_class, self.seed)
            elif split == "test":
                keep = _subset_per_class(np.asarray(labels), self.max_test_per_class, self.seed + 1)
            else:
                keep = np.arange(len(files))
            out[split], bad, note = _decode_files([files[i] for i in keep], [labels[i] for i in keep],
                                                  dirs[split], self.progress)
            skipped += bad
            notes += note
        self.skipped, self.notes = skipped, notes
        report_skipped(root, skipped, notes, self.strict)
        for split, s in out.items():
            unusable = [names[c] for c in range(len(names)) if not np.any(s.y == c)]
            if unusable:
                raise KbenchError(f"no usable images in class folder(s) {', '.join(os.path.join(dirs[split], c) for c in unusable)} "
                                  "(all skipped, see the list above); add images or remove the folder(s)")
        if "all" in out:
            tr, te = stratified_split(out["all"].y, self.test_split, self.seed + 2)
            out["train"], out["test"] = self._take(out["all"], tr), self._take(out["all"], te)
        return out["train"], out["test"], names

    def _load_npz(self):
        (xtr, ytr), (xte, yte), names = load_npz(os.path.expanduser(self.root or ""))
        return Split(xtr, ytr), Split(xte, yte), names

    # ---------------------------------------------------------------- batches
    def loader(self, split: str, image_size: int | None, shuffle: bool = False,
               limit_batches: int | float | None = None, batch_size: int | None = None) -> "BatchSequence":
        """A :class:`BatchSequence` over ``split`` (``"train"``, ``"val"``, ``"test"``)."""
        s = {"train": self.train, "val": self.val, "test": self.test}[split]
        return BatchSequence(s.x, s.y, batch_size or self.batch_size, image_size, shuffle=shuffle,
                             seed=self.seed, limit_batches=limit_batches,
                             augment=self.augment and split == "train",
                             interpolation=INTERPOLATIONS[self.interpolation])


def resize_batch(images, size: int, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Resize ``uint8`` RGB images to ``(b, size, size, 3)`` ``float32`` in [0, 255] with OpenCV."""
    out = np.empty((len(images), size, size, 3), np.float32)
    for i, im in enumerate(images):
        out[i] = im if im.shape[:2] == (size, size) else cv2.resize(im, (size, size), interpolation=interpolation)
    return out


class BatchSequence(keras.utils.PyDataset):
    """Batches ``(x, y)`` of one split, reshuffled each epoch from ``(seed, epoch)``.

    ``x`` is either images (``uint8``, resized per batch to ``image_size``; the
    output is ``float32 (b, image_size, image_size, 3)`` in [0, 255]) or cached
    features (any float array, served as they are when ``image_size`` is None).
    ``y`` batches are ``int32 (b,)``. ``epoch`` can be set to resume an order.

    ``limit_batches``: int = number of batches, float = fraction of them.
    :meth:`tail` serves only an epoch's last batches (resuming inside an epoch).
    """

    def __init__(self, x, y, batch_size: int, image_size: int | None, shuffle: bool = False, seed: int = 0,
                 limit_batches: int | float | None = None, augment: bool = False,
                 interpolation: int = cv2.INTER_LINEAR):
        super().__init__(workers=1, use_multiprocessing=False)
        self.x, self.y, self.batch_size, self.image_size = x, y, batch_size, image_size
        self.shuffle, self.seed, self.augment, self.interpolation = shuffle, seed, augment, interpolation
        n = math.ceil(len(y) / batch_size)
        if isinstance(limit_batches, float):
            n = max(1, int(n * limit_batches)) if limit_batches > 0 else 0
        elif isinstance(limit_batches, int):
            n = min(n, limit_batches)
        self.n_batches = n
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

    def __getitem__(self, i: int):
        if i >= len(self):
            raise IndexError(i)
        i += self.offset
        order = getattr(self, "_order", None)
        if order is None:
            order = self._order = self.order()
        idx = order[i * self.batch_size:(i + 1) * self.batch_size]
        if self.image_size is None:
            return self.x[idx], self.y[idx]
        xb = resize_batch([self.x[j] for j in idx], self.image_size, self.interpolation)
        if self.augment:
            flip = np.random.default_rng([self.seed, self.epoch, i]).random(len(idx)) < 0.5
            xb[flip] = xb[flip, :, ::-1]
        return xb, self.y[idx]
