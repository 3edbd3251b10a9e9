"""kbench's own Keras layers: :class:`Preprocess` (the backbone's preprocessing inside
the model) and :class:`ClassNames` (the class names carried by a saved model).

Both are registered with Keras as ``kbench>Preprocess`` / ``kbench>ClassNames``.
Every ``model.keras`` kbench has written names them so (with the module it was
saved from: ``kbench.models`` before the package layout, then
``kbench.models.transfer``; Keras looks custom layers up by their registered name
only), so the names and the constructor arguments never change. Importing this
module registers them: :func:`kbench.models.saved.load_saved_model` does.
"""

from __future__ import annotations

import keras
from keras import layers, ops, tree

from kbench import KbenchError
from kbench.models.registry import CAFFE_MEAN_BGR, PREPROCESS_MODES, TORCH_MEAN, TORCH_STD


@keras.saving.register_keras_serializable(package="kbench")
class Preprocess(layers.Layer):
    """Backbone preprocessing inside the model, so it can never run twice.

    Input: ``(batch, h, w, 3)`` RGB pixels in [0, 255], any float dtype.
    Output: same shape, in the backbone's expected range/order:

    * ``caffe``: RGB -> BGR, minus ``CAFFE_MEAN_BGR`` (VGG, ResNet50);
    * ``tf``: ``x / 127.5 - 1`` (MobileNetV2, ResNet50V2, Xception);
    * ``torch``: ``(x / 255 - TORCH_MEAN) / TORCH_STD`` (DenseNet);
    * ``scale01``: ``x / 255`` (the seed tutorial);
    * ``none``: unchanged (models with built-in rescaling).

    Source: ``keras.applications.imagenet_utils.preprocess_input``.
    """

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESS_MODES:
            raise KbenchError(f"unknown preprocess mode {mode!r}; choose one of: {', '.join(PREPROCESS_MODES)}")
        self.mode = mode

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        if self.mode == "caffe":
            return ops.flip(x, axis=-1) - ops.convert_to_tensor(CAFFE_MEAN_BGR, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor(TORCH_MEAN, self.compute_dtype)
            std = ops.convert_to_tensor(TORCH_STD, self.compute_dtype)
            return (x / 255.0 - mean) / std
        if self.mode == "scale01":
            return x / 255.0
        return x

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="kbench")
class ClassNames(layers.Layer):
    """Pass-through last layer that stores the class names in the saved model.

    ``call`` returns its input unchanged (any shape and dtype; no casting, no
    variables), so the model computes exactly what it did without it. Its config
    (``class_names``: list of str, index = class id; ``from_logits``: whether the
    values passing through are logits or probabilities) travels in the ``.keras``
    file, so :func:`kbench.models.saved.load_saved_model` can recover them on any backend.
    """

    def __init__(self, class_names: list[str], from_logits: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.class_names = [str(c) for c in class_names]
        self.from_logits = bool(from_logits)
        self._convert_input_args = False  # pure identity: never cast float32 logits to a mixed policy
        self.supports_masking = True
        self.built = True

    def call(self, x):
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_output_spec(self, x):
        # A new symbolic tensor, so the functional graph gets a node of its own.
        return tree.map_structure(lambda t: keras.KerasTensor(t.shape, dtype=t.dtype, sparse=t.sparse), x)

    def get_config(self):
        return {**super().get_config(), "class_names": list(self.class_names), "from_logits": self.from_logits}
