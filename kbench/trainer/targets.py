"""Loss and accuracy for int labels *and* soft targets (MixUp, CutMix, label smoothing).

Training batches carry ``float32 (b, num_classes)`` soft targets when the recipe mixes
(:mod:`kbench.data.augment`), while validation and test batches keep ``int32 (b,)``
labels; one compiled loss and one metric serve both:

* :class:`SoftTargetCrossentropy`: rank-1 int labels are one-hot encoded, then keras
  ``categorical_crossentropy`` with ``label_smoothing`` (``y * (1 - s) + s / K``, as keras
  ``CategoricalCrossentropy`` and timm's ``LabelSmoothingCrossEntropy``). With ``s = 0`` on
  int labels it equals ``SparseCategoricalCrossentropy``.
* :class:`SoftAccuracy`: top-1 accuracy against the int label or the argmax of the soft
  target (for a mixed target: its larger part), logged as ``accuracy``.

:func:`loss_and_metrics` picks them only when label smoothing or mixing is on; otherwise
the trainer compiles ``SparseCategoricalCrossentropy`` and ``"accuracy"`` as before. Both
classes are registered Keras serializables, so a compiled model saves and loads.
"""

from __future__ import annotations

import keras
from keras import ops


def _hard(y_true, num_classes: int):
    """``y_true`` as class indices ``int32 (b,)``: int labels as they are (``(b,)`` or
    ``(b, 1)``), soft targets ``(b, num_classes)`` by argmax."""
    if len(y_true.shape) >= 2 and y_true.shape[-1] == num_classes and num_classes > 1:
        return ops.cast(ops.argmax(y_true, axis=-1), "int32")
    return ops.cast(ops.reshape(y_true, (-1,)), "int32")


@keras.saving.register_keras_serializable(package="kbench")
class SoftTargetCrossentropy(keras.losses.Loss):
    """Categorical cross-entropy on int labels ``(b,)`` or soft targets ``(b, K)``.

    Args:
        from_logits: ``y_pred`` are logits (else probabilities).
        label_smoothing: in [0, 1); applied to one-hot labels and soft targets alike.

    ``y_pred``: ``(b, K)``; returns the mean loss over the batch (keras reduction).
    """

    def __init__(self, from_logits: bool = False, label_smoothing: float = 0.0, name: str = "soft_target_ce",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.from_logits, self.label_smoothing = from_logits, label_smoothing

    def call(self, y_true, y_pred):
        k = y_pred.shape[-1]
        if not (len(y_true.shape) >= 2 and y_true.shape[-1] == k and k > 1):
            y_true = ops.one_hot(_hard(y_true, k), k, dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(ops.cast(y_true, y_pred.dtype), y_pred,
                                                     from_logits=self.from_logits,
                                                     label_smoothing=self.label_smoothing)

    def get_config(self) -> dict:
        return {**super().get_config(), "from_logits": self.from_logits, "label_smoothing": self.label_smoothing}


def _soft_accuracy(y_true, y_pred):
    k = y_pred.shape[-1]
    return ops.cast(ops.equal(_hard(y_true, k), ops.cast(ops.argmax(y_pred, axis=-1), "int32")), "float32")


@keras.saving.register_keras_serializable(package="kbench")
class SoftAccuracy(keras.metrics.MeanMetricWrapper):
    """Top-1 accuracy (fraction in [0, 1]) against int labels or soft targets' argmax."""

    def __init__(self, name: str = "accuracy", dtype=None):
        super().__init__(_soft_accuracy, name=name, dtype=dtype)

    def get_config(self) -> dict:
        return {"name": self.name, "dtype": self.dtype}


def loss_and_metrics(from_logits: bool, label_smoothing: float = 0.0, soft_targets: bool = False) -> tuple:
    """``(loss, metrics)`` for ``Model.compile``: ``SparseCategoricalCrossentropy`` and
    ``["accuracy"]`` when ``label_smoothing`` is 0 and ``soft_targets`` False (the default
    path, unchanged), else :class:`SoftTargetCrossentropy` and :class:`SoftAccuracy`."""
    if not label_smoothing and not soft_targets:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits), ["accuracy"]
    return SoftTargetCrossentropy(from_logits, label_smoothing), [SoftAccuracy()]


__all__ = ["SoftAccuracy", "SoftTargetCrossentropy", "loss_and_metrics"]
