"""The data sources as one table, and the resize interpolations by name.

keras-free: the loaders are named as ``"module:function"`` and imported only when a
source is loaded (:func:`get_loader`), so the config and the tools can list the
sources without importing a backend.

Sources (``--data.source``), each a module of its own:

* ``cifar10`` / ``cifar100`` (:mod:`kbench.data.cifar`): a local copy first (``root``
  option or the ``KBENCH_DATA_DIR`` environment variable: the official
  ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``, their extracted folders,
  or an image-folder copy with ``train/`` and ``test/``), then ``keras.datasets``
  (its cache in ``~/.keras/datasets``, else a download).
* ``folder`` (:mod:`kbench.data.folder`): ``root/train/<class>/*`` and
  ``root/test/<class>/*``, or a single ``root/<class>/*`` tree that is split into
  train and test.
* ``npz`` (:mod:`kbench.data.npz`): a file with ``x_train, y_train, x_test, y_test``
  (RGB images ``(N, h, w, 3)``, uint8 or any integer / float dtype with values in
  [0, 255]; gray ``(N, h, w[, 1])`` and RGBA (alpha dropped) are accepted; labels:
  class indices ``(N,)`` or ``(N, 1)``, or one-hot ``(N, C)``) and optional
  ``class_names``.

A loader is a function ``loader(dm: DataModule) -> SourceData``
(:class:`kbench.data.splits.SourceData`: the train and test splits, the class names,
and for image folders the skipped entries and notes). It reads the
DataModule's options (``source``, ``root``, ``seed``, ``max_train_per_class`` /
``max_test_per_class`` (it may apply them early; the DataModule applies them again,
which leaves an applied subset unchanged), ``test_split``, ``strict``, ``progress``),
does not modify it, and raises :class:`kbench.KbenchError` for bad data, naming the
file, folder or array and what to do. The DataModule then checks the labels, takes
the per-class subsets and splits off validation.

Adding a source = one new module ``kbench/data/<name>.py`` with its loader, plus one
row in :data:`SOURCES` (the config's ``data.source`` choices are its names).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import cv2

from kbench import KbenchError

if TYPE_CHECKING:
    from kbench.data.module import DataModule
    from kbench.data.splits import SourceData

#: source name -> ``"module:function"`` of its loader, in the config's order.
SOURCES: dict[str, str] = {
    "cifar10": "kbench.data.cifar:load_cifar_source",
    "cifar100": "kbench.data.cifar:load_cifar_source",
    "folder": "kbench.data.folder:load_folder_source",
    "npz": "kbench.data.npz:load_npz_source",
}
#: ``--data.interpolation`` name -> OpenCV flag used to resize images.
INTERPOLATIONS = {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR,
                  "cubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA}


def check_source(name: str) -> None:
    """Refuse a source name that is not in :data:`SOURCES`.

    Raises:
        KbenchError: unknown ``name`` (the message lists the valid ones).
    """
    if name not in SOURCES:
        raise KbenchError(f"unknown data source {name!r}; choose one of: {', '.join(SOURCES)}")


def get_loader(name: str) -> Callable[[DataModule], SourceData]:
    """The loader function of source ``name`` (imports its module, which may import keras).

    Raises:
        KbenchError: unknown ``name`` (:func:`check_source`).
    """
    check_source(name)
    module, _, function = SOURCES[name].partition(":")
    return getattr(importlib.import_module(module), function)
