"""The backbone registry (keras-free: a parent process lists backbones without keras).

One table, :data:`BACKBONES`, describes every supported ``keras.applications``
backbone: its constructor, the preprocessing it was trained with, its minimum and
default input size, the feature map it returns and the block that ``fine_tune``
unfreezes by default. The data pipeline and the recipes read from it (in the
spirit of timm's per-model ``pretrained_cfg``). Adding a backbone is one row here.

Preprocessing constants are those of ``keras.applications.imagenet_utils``
(``caffe``: BGR mean subtraction; ``tf``: scale to [-1, 1]; ``torch``: ImageNet
mean/std on [0, 1]); EfficientNet, MobileNetV3 and ConvNeXt carry their own
rescaling inside the model (mode ``none`` here).

The heads' table is :data:`kbench.models.heads.HEADS` (also importable from here;
keras-free too).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from kbench import KbenchError
from kbench.models.heads import HEADS  # noqa: F401  (re-exported: the config's head names)

# keras.applications.imagenet_utils constants (caffe mean is in BGR order).
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)
PREPROCESS_MODES = ("caffe", "tf", "torch", "scale01", "none")


def _floor32(size: int) -> int:
    return size // 32


def _xception_spatial(size: int) -> int:
    # conv 3x3/2 valid, conv 3x3 valid, then four stride-2 'same' poolings.
    n = (size - 3) // 2 + 1 - 2
    for _ in range(4):
        n = math.ceil(n / 2)
    return n


@dataclass(frozen=True)
class BackboneSpec:
    """One registry row.

    Attributes:
        name: registry key, e.g. ``"vgg16"``.
        constructor: name of the ``keras.applications`` function (called with
            ``include_top=False`` by :meth:`build`; looked up only then, so the
            registry imports no keras).
        preprocess: preprocessing mode, one of :data:`PREPROCESS_MODES`; input is
            RGB float pixels in [0, 255].
        min_size: smallest square input side in pixels that the backbone accepts.
        default_size: the ImageNet training resolution in pixels.
        channels: channels of the last feature map.
        spatial: maps input side (px) to the feature map side.
        unfreeze: layer-name prefix of the top block that ``fine_tune`` unfreezes.
    """

    name: str
    constructor: str
    preprocess: str
    min_size: int
    default_size: int
    channels: int
    unfreeze: str
    spatial: Callable[[int], int] = _floor32

    def input_size(self, image_size: int | None) -> int:
        """The square input side in pixels for a configured ``image_size`` (``None`` =
        :attr:`default_size`), checked against :attr:`min_size`: the one place where
        the image size is defaulted and checked.

        Raises:
            KbenchError: the side is below :attr:`min_size`.
        """
        size = image_size or self.default_size
        check_input_size(self, size)
        return size

    def build(self, **kwargs):
        """``keras.applications.<constructor>(**kwargs)``: the backbone as a ``keras.Model``."""
        import keras

        return getattr(keras.applications, self.constructor)(**kwargs)

    def feature_shape(self, size: int) -> tuple[int, int, int]:
        """Shape ``(h, w, channels)`` of the backbone output for a ``size`` x ``size`` input."""
        s = self.spatial(size)
        return (s, s, self.channels)


BACKBONES: dict[str, BackboneSpec] = {
    s.name: s
    for s in [
        BackboneSpec("vgg16", "VGG16", "caffe", 32, 224, 512, "block5"),
        BackboneSpec("vgg19", "VGG19", "caffe", 32, 224, 512, "block5"),
        BackboneSpec("resnet50", "ResNet50", "caffe", 32, 224, 2048, "conv5"),
        BackboneSpec("resnet50v2", "ResNet50V2", "tf", 32, 224, 2048, "conv5"),
        BackboneSpec("mobilenetv2", "MobileNetV2", "tf", 32, 224, 1280, "block_16"),
        BackboneSpec("mobilenetv3small", "MobileNetV3Small", "none", 32, 224, 576, "expanded_conv_10"),
        BackboneSpec("densenet121", "DenseNet121", "torch", 32, 224, 1024, "conv5"),
        BackboneSpec("xception", "Xception", "tf", 71, 299, 2048, "block14", _xception_spatial),
        BackboneSpec("efficientnetb0", "EfficientNetB0", "none", 32, 224, 1280, "block7"),
        BackboneSpec("convnexttiny", "ConvNeXtTiny", "none", 32, 224, 768, "convnext_tiny_stage_3"),
    ]
}


def get_spec(name: str) -> BackboneSpec:
    """Registry row for ``name``.

    Raises:
        KbenchError: unknown name (the message lists the valid ones).
    """
    try:
        return BACKBONES[name]
    except KeyError:
        raise KbenchError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}") from None


def check_input_size(spec: BackboneSpec, size: int) -> None:
    """Refuse an input side below the backbone's minimum, before anything is built.

    Raises:
        KbenchError: ``size`` < ``spec.min_size``.
    """
    if size < spec.min_size:
        raise KbenchError(
            f"input size {size} is below the minimum of {spec.min_size} px for backbone "
            f"{spec.name!r}; set --model.image_size {spec.min_size} or larger"
        )
