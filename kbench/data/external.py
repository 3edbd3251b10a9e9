"""Your own data: NumPy arrays and input pipelines as kbench data modules.

* :func:`from_arrays`: images and labels in memory -> a :class:`ArrayDataModule`, a
  :class:`~kbench.data.DataModule` in every respect (seeded validation/test hold-out,
  per-epoch shuffling from ``(seed, epoch)``, per-batch resize): the frozen-prefix
  cache and exact mid-epoch resume work as for the built-in sources.
* :func:`from_pipelines`: what ``keras.Model.fit`` accepts besides arrays -- a
  ``keras.utils.PyDataset``, a ``tf.data.Dataset`` (TensorFlow installed) or a torch
  ``DataLoader`` (torch installed), each yielding ``(images, labels)`` batches -- for
  train, validation and test -> a :class:`~kbench.data.pipelines.PipelineModule`
  (what a batch must be, and the limits of pipelines: :mod:`kbench.data.pipelines`).
* :func:`as_datamodule`: what ``Trainer.fit`` does with its data argument (a data
  module as it is; arrays ``(x, y)`` or a pipeline wrapped with the model's classes).
"""

from __future__ import annotations

import numpy as np

from kbench import KbenchError
from kbench.data.module import DataModule
from kbench.data.npz import check_images, check_labels
from kbench.data.pipelines import PipelineModule, pipeline_kind
from kbench.data.splits import Split, stratified_split
from kbench.data.weights import check_class_weight_spec

ACCEPTED = ("a kbench DataModule (kbench.data.DataModule, from_arrays, from_pipelines)",
            "a tuple (x, y) of NumPy arrays", "a keras.utils.PyDataset",
            "a tf.data.Dataset (TensorFlow installed)", "a torch.utils.data.DataLoader (torch installed)")


def _is_arrays(data) -> bool:
    return (isinstance(data, (tuple, list)) and len(data) == 2
            and all(isinstance(a, np.ndarray) for a in data))


def as_datamodule(data, class_names: list[str], seed: int = 0):
    """``Trainer.fit``'s data argument as a data module: a DataModule (or
    :class:`PipelineModule`) as it is, arrays ``(x, y)`` through :func:`from_arrays`
    and a pipeline through :func:`from_pipelines` (training only; see there for
    what is tested), with ``class_names`` (the model's).

    Raises:
        KbenchError: anything else (the message lists what is accepted).
    """
    if isinstance(data, (DataModule, PipelineModule)):
        return data
    if _is_arrays(data):
        return from_arrays(data[0], data[1], class_names=class_names, seed=seed)
    if pipeline_kind(data):
        return from_pipelines(data, class_names=class_names, seed=seed)
    raise KbenchError(f"Trainer.fit cannot train on a {type(data).__module__}.{type(data).__qualname__}; "
                      f"pass one of: {'; '.join(ACCEPTED)}")


def from_arrays(x_train, y_train, x_val=None, y_val=None, x_test=None, y_test=None,
                class_names: list[str] | None = None, batch_size: int = 64, seed: int = 0,
                val_split: float = 0.1, test_split: float = 0.2, augment: bool = False,
                interpolation: str = "linear", class_weight=None) -> ArrayDataModule:
    """A :class:`~kbench.data.DataModule` over NumPy arrays.

    Args:
        x_*: images ``(N, h, w, 3)`` RGB (also gray ``(N, h, w[, 1])``, RGBA), ``uint8``
            or any number type in [0, 255] (rounded to ``uint8``); any size (resized
            per batch to the model's input size).
        y_*: integer class indices ``(N,)`` (or ``(N, 1)``, or one-hot ``(N, C)``).
        x_val, y_val: validation arrays; None: ``val_split`` of each training class.
        x_test, y_test: test arrays; None: ``test_split`` of each training class
            (held out first, before validation).
        class_names: names by class index; None: ``"0", "1", ...`` up to the largest label.
        batch_size, seed, augment, interpolation, class_weight: as for :class:`~kbench.data.DataModule`.

    Raises:
        KbenchError: the checks of the ``npz`` source (:func:`kbench.data.npz.check_images`,
            :func:`~kbench.data.npz.check_labels`): shapes, lengths, dtypes, NaN or
            out-of-range pixels, labels out of range; a val/test array without its pair.
    """
    arrays = {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}
    for split, (x, y) in arrays.items():
        if (x is None) != (y is None):
            raise KbenchError(f"from_arrays: give both x_{split} and y_{split}, or neither")
    return ArrayDataModule(arrays, class_names, val_split=val_split, test_split=test_split, batch_size=batch_size,
                           seed=seed, augment=augment, interpolation=interpolation, class_weight=class_weight)


class ArrayDataModule(DataModule):
    """The :class:`~kbench.data.DataModule` of :func:`from_arrays` (``source`` is
    ``"arrays"``); :meth:`setup` validates and splits the arrays."""

    def __init__(self, arrays: dict, class_names: list[str] | None, **options):
        super().__init__("npz", progress=False, **options)  # the option checks of every source
        self.source, self.arrays, self.given_names = "arrays", arrays, class_names

    def setup(self) -> ArrayDataModule:
        """Validate the arrays, hold out test (when not given) and validation
        (when not given) per class, seeded. Idempotent.

        Raises:
            KbenchError: see :func:`from_arrays`.
        """
        if self.train is not None:
            return self
        splits = {}
        for split, (x, y) in self.arrays.items():
            if x is not None:
                x = check_images("arrays", f"x_{split}", np.asarray(x))
                splits[split] = Split(x, check_labels("arrays", f"y_{split}", np.asarray(y), len(x), f"x_{split}")[0])
        names = self.given_names or [str(i) for i in range(max(int(s.y.max()) + 1 for s in splits.values()))]
        self.class_names = [str(n) for n in names]
        for split, s in splits.items():
            self._check_labels(s, self.class_names, split)
        full = splits["train"]
        if "test" not in splits:
            keep, held = stratified_split(full.y, self.test_split, self.seed + 2)
            full, splits["test"] = full.take(keep), full.take(held)
        if "val" not in splits:
            keep, held = stratified_split(full.y, self.val_split, self.seed)
            full, splits["val"] = full.take(keep), full.take(held)
        self.train, self.val, self.test = full, splits["val"], splits["test"]
        return self


def from_pipelines(train, val=None, test=None, class_names: list[str] | int | None = None, seed: int = 0,
                   class_weight=None) -> PipelineModule:
    """A :class:`PipelineModule` over your own input pipelines (see the module docstring
    for what a batch must be).

    Args:
        train, val, test: each a ``keras.utils.PyDataset``, a ``tf.data.Dataset`` or a
            torch ``DataLoader`` of ``(images, labels)`` batches; ``val`` None: no
            validation (monitor a training metric); ``test`` None: the final test runs
            on ``val`` (or on ``train`` without ``val``), and the log says so.
        class_names: names by class index, or the number of classes (names ``"0", ...``).
        seed: recorded (your pipeline does its own shuffling).
        class_weight: as for :class:`~kbench.data.DataModule` (``balanced`` counts the
            training labels in one pass over ``train``).

    Raises:
        KbenchError: a pipeline of another type (what is accepted is listed), missing
            or too few class names, a bad ``class_weight``.
    """
    if isinstance(class_names, int) and not isinstance(class_names, bool):
        class_names = [str(i) for i in range(class_names)]
    if not isinstance(class_names, (list, tuple)) or len(class_names) < 2:
        raise KbenchError(f"from_pipelines: class_names must list the class names by index (or give their number, "
                          f">= 2), got {class_names!r}")
    for split, p in (("train", train), ("val", val), ("test", test)):
        if (p is not None or split == "train") and pipeline_kind(p) is None:
            raise KbenchError(f"from_pipelines: {split} is a {type(p).__module__}.{type(p).__qualname__}; pass "
                              f"{'; '.join(ACCEPTED[2:])} (arrays: use kbench.data.from_arrays)")
    check_class_weight_spec(class_weight)
    return PipelineModule(train, val, test, [str(n) for n in class_names], seed, class_weight)


def data_notes(datamodule) -> list[str]:
    """Log lines about ``datamodule``'s input (empty for kbench's own DataModule)."""
    return datamodule.notes() if isinstance(datamodule, PipelineModule) else []


def prepare_data(datamodule, image_size: int, num_classes: int | None = None,
                 mixes: bool = False) -> dict[int, float] | None:
    """Checks that need the model and the classes, before anything is written: the
    model's number of classes, the first batch of every pipeline
    (:meth:`~kbench.data.pipelines.PipelineModule.check`), and the class weights,
    which it returns resolved (None without).

    Raises:
        KbenchError: a model with another number of classes than the data, a bad
            batch, a bad ``class_weight`` key or value, MixUp / CutMix (``mixes``) on
            your own pipelines (kbench mixes its own batches only).
    """
    if num_classes is not None and num_classes != datamodule.num_classes:
        raise KbenchError(f"the model has {num_classes} classes but the data has {datamodule.num_classes} "
                          f"({datamodule.class_names[:10]}); build the model with num_classes=dm.num_classes, "
                          "class_names=dm.class_names")
    if isinstance(datamodule, PipelineModule):
        if mixes:
            raise KbenchError("recipe.mixup / recipe.cutmix mix kbench's own batches, not your own pipelines: "
                              "mix in the pipeline, or pass NumPy arrays (kbench.data.from_arrays)")
        datamodule.check(image_size)
    return datamodule.class_weights()


__all__ = ["ACCEPTED", "ArrayDataModule", "as_datamodule", "data_notes", "from_arrays", "from_pipelines",
           "prepare_data"]
