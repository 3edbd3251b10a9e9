"""The ``folder`` data source: an image folder, read by content with OpenCV.

Layouts of ``--data.root``: ``root/train/<class>/*`` beside ``root/test/<class>/*``,
or one ``root/<class>/*`` tree that is split into train and test (``data.test_split``
of every class, stratified and seeded). Class names are the sorted class folder
names. The per-class limits (``data.max_train_per_class`` / ``max_test_per_class``)
are applied *before* decoding, so a small subset of a large folder decodes fast.

Unusable files (see :mod:`kbench.data.images`: empty, truncated, not an image) and
hidden / system / stray entries are listed and skipped with a warning, or refused
with ``data.strict``. The ``cifar10`` / ``cifar100`` sources read an image-folder
copy of CIFAR through :func:`load_image_folder` too.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from kbench import KbenchError
from kbench.data.images import check_class_folders, decode_all, list_class_tree, report_skipped
from kbench.data.splits import SourceData, Split, stratified_split, subset_per_class

if TYPE_CHECKING:
    from kbench.data.module import DataModule


def _stack(images: list[np.ndarray]) -> np.ndarray | list:
    shapes = {im.shape for im in images}
    return np.stack(images) if len(shapes) == 1 and images else images


def decode_files(files: list[str], labels: list[int], where: str,
                 progress: bool) -> tuple[Split, list[tuple[str, str]], list[tuple[str, str]]]:
    """Decode ``files`` of folder ``where`` (:func:`kbench.data.images.decode_all`).

    Returns:
        ``(split, bad, notes)``: the usable images with their ``labels`` (one stacked
        ``uint8 (N, h, w, 3)`` array when all sizes agree, else a list), the
        ``(path, problem)`` of unusable files and the ``(path, note)`` of files worth
        mentioning (extension does not match the content).
    """
    decoded = decode_all(files, where, progress)
    bad = [(f, d.problem) for f, d in zip(files, decoded) if d.image is None]
    notes = [(f, d.note) for f, d in zip(files, decoded) if d.note]
    keep = [i for i, d in enumerate(decoded) if d.image is not None]
    split = Split(_stack([decoded[i].image for i in keep]), np.asarray([labels[i] for i in keep], np.int32))
    return split, bad, notes


def _split_dirs(root: str) -> dict[str, str]:
    """Split name -> folder: ``train`` and ``test`` when ``root/train`` exists, else ``all``."""
    if os.path.isdir(os.path.join(root, "train")):
        return {"train": os.path.join(root, "train"), "test": os.path.join(root, "test")}
    return {"all": root}


def _decode_split(dm: DataModule, split: str, tree: dict[str, list[str]], names: list[str], where: str):
    """Decode one split's class tree, after taking its per-class subset (see :func:`decode_files`)."""
    files = [f for c in names for f in tree.get(c, [])]
    labels = [i for i, c in enumerate(names) for _ in tree.get(c, [])]
    if split == "train":
        keep = subset_per_class(np.asarray(labels), dm.max_train_per_class, dm.seed)
    elif split == "test":
        keep = subset_per_class(np.asarray(labels), dm.max_test_per_class, dm.seed + 1)
    else:
        keep = np.arange(len(files))
    return decode_files([files[i] for i in keep], [labels[i] for i in keep], where, dm.progress)


def load_image_folder(dm: DataModule, root: str | None) -> SourceData:
    """Load the image folder ``root`` with ``dm``'s options (``seed``, per-class limits,
    ``test_split``, ``strict``, ``progress``); ``dm`` is not modified.

    Raises:
        KbenchError: ``root`` is not a folder; fewer than 2 class folders, empty class
            folders, a train folder without a test folder or with other classes
            (:func:`kbench.data.images.check_class_folders`); unusable files with
            ``strict``; a class left without usable images.
    """
    root = os.path.expanduser(root or "")
    if not root or not os.path.isdir(root):
        raise KbenchError(f"data root {root!r} is not a folder; pass --data.root PATH to an image folder")
    dirs = _split_dirs(root)
    trees, skipped = {}, []
    for split, d in dirs.items():
        if os.path.isdir(d):
            trees[split], bad = list_class_tree(d)
            skipped += bad
    names = sorted(next(iter(trees.values())))
    check_class_folders(root, dirs, trees, names)
    out, notes = {}, []
    for split, tree in trees.items():
        out[split], bad, note = _decode_split(dm, split, tree, names, dirs[split])
        skipped += bad
        notes += note
    report_skipped(root, skipped, notes, dm.strict)
    for split, s in out.items():
        unusable = [names[c] for c in range(len(names)) if not np.any(s.y == c)]
        if unusable:
            raise KbenchError(f"no usable images in class folder(s) {', '.join(os.path.join(dirs[split], c) for c in unusable)} "
                              "(all skipped, see the list above); add images or remove the folder(s)")
    if "all" in out:
        tr, te = stratified_split(out["all"].y, dm.test_split, dm.seed + 2)
        out["train"], out["test"] = out["all"].take(tr), out["all"].take(te)
    return SourceData(out["train"], out["test"], names, skipped, notes)


def load_folder_source(dm: DataModule) -> SourceData:
    """The ``folder`` source's loader (a :data:`kbench.data.sources.SOURCES` row): the image
    folder at ``dm.root`` (:func:`load_image_folder`)."""
    return load_image_folder(dm, dm.root)
