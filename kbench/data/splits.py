"""Splits of a data set: :class:`Split` (images + labels), :class:`SourceData` (what a
source loader returns) and the seeded, stratified index selections the DataModule
and the sources share (:func:`stratified_split`, :func:`subset_per_class`).

NumPy only (no keras, no OpenCV).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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

    def take(self, idx: np.ndarray) -> Split:
        """The samples at ``idx`` (integer indices, in that order) as a new :class:`Split`."""
        x = self.x[idx] if isinstance(self.x, np.ndarray) else [self.x[i] for i in idx]
        return Split(x, self.y[idx])


@dataclass
class SourceData:
    """What a data source's loader returns (see :mod:`kbench.data.sources`).

    Attributes:
        train: the training split (validation is split off it later).
        test: the test split.
        class_names: list of str, index = class id.
        skipped: ``(path, reason)`` of every entry of an image folder not used.
        notes: ``(path, note)`` of image files decoded by content despite their extension.
    """

    train: Split
    test: Split
    class_names: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def from_arrays(cls, arrays) -> SourceData:
        """From ``((x_train, y_train), (x_test, y_test), class_names)``, the return value of
        :func:`kbench.data.npz.load_npz` and the CIFAR readers of :mod:`kbench.data.cifar`."""
        (xtr, ytr), (xte, yte), names = arrays
        return cls(Split(xtr, ytr), Split(xte, yte), names)


def subset_per_class(y: np.ndarray, k: int | None, seed: int) -> np.ndarray:
    """Sorted indices of at most ``k`` random samples per class of labels ``y`` (all when
    ``k`` is None); seeded by ``seed``."""
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
