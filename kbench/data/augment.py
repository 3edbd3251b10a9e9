"""Seeded, per-batch training augmentation (settings, sources and cache rules:
:mod:`kbench.data.augment_policy`).

:class:`Augmenter` transforms one whole training batch per call, never one image at a
time: flips and crops are vectorised NumPy; translation, RandAugment, MixUp and CutMix are
keras 3 layers run with keras ops on the backend's default device (the accelerator when
there is one, else the CPU), then brought back as NumPy for the data pipeline.

Determinism: every draw of batch ``i`` of epoch ``e`` comes from ``(seed, e, i)``: the flip
decisions are ``np.random.default_rng([seed, e, i]).random(b) < 0.5`` (:func:`flip_mask`,
shared with the two-view flip cache), the other ops' seeds from
``np.random.default_rng([seed, e, i, 1])``. The keras layers are made stateless by setting
their seed generator's state to the batch's seed before each call (``RandAugment`` ignores
a ``seed`` argument and always draws from its own generator, so resetting that generator is
the one way that covers every layer). The same ``(seed, epoch, batch)`` therefore gives the
same augmented batch on the same backend, also after a resume (the backends' random
generators differ from each other).
"""

from __future__ import annotations

import threading

import keras
import numpy as np

from kbench import KbenchError
from kbench.data.augment_policy import IMAGE_OPS, SWITCH_PROB, TARGET_OPS, check_image_ops, check_target_ops

#: Serialises the keras-layer ops of every :class:`Augmenter` (batches may be built in
#: prefetch threads, :data:`kbench.data.batches.PREFETCH_WORKERS`).
_LAYER_LOCK = threading.RLock()


def flip_mask(seed: int, epoch: int, batch: int, n: int) -> np.ndarray:
    """Which of the ``n`` images of batch ``batch`` of ``epoch`` are mirrored: ``bool (n,)``,
    ``np.random.default_rng([seed, epoch, batch]).random(n) < 0.5``."""
    return np.random.default_rng([seed, epoch, batch]).random(n) < 0.5


def pad_crop(x: np.ndarray, padding: int, rng: np.random.Generator) -> np.ndarray:
    """Random crop with zero padding, vectorised over the batch: ``x`` ``(b, h, w, c)`` is
    padded by ``padding`` pixels on each side and every image is cropped back to ``(h, w)``
    at its own offset in ``[0, 2 * padding]`` (from ``rng``). Same shape and dtype."""
    b, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    oy, ox = rng.integers(0, 2 * padding + 1, b), rng.integers(0, 2 * padding + 1, b)
    rows, cols = oy[:, None] + np.arange(h), ox[:, None] + np.arange(w)
    return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def _seeded(layer, seed: int) -> None:
    """Set ``layer``'s seed generator to ``[seed, 0]``: its next call draws as if new."""
    state = layer.generator.state
    state.assign(keras.ops.convert_to_tensor(np.array([seed, 0]), dtype=state.dtype))


class Augmenter:
    """The training-batch transform: flip, crop with padding, translation, RandAugment,
    then MixUp or CutMix (in that order; each off at its default).

    Args:
        flip, crop_padding, translate, randaugment, randaugment_magnitude: the ``data``
            image ops (:data:`~kbench.data.augment_policy.IMAGE_OPS`; ``flip`` is ``data.augment``).
        mixup, cutmix: the ``recipe`` mixing settings (:data:`~kbench.data.augment_policy.TARGET_OPS`).
        num_classes: classes of the one-hot targets (needed when mixing).

    After a mixing call, :attr:`last_mix` holds ``{"op", "permutation", "weights"}`` (NumPy):
    image ``i`` is mixed with image ``permutation[i]`` and keeps weight ``weights[i]`` of its
    own target.

    Raises:
        KbenchError: a bad value (see :func:`~kbench.data.augment_policy.check_image_ops`),
            or mixing without ``num_classes``.
    """

    def __init__(self, flip: bool = False, crop_padding: int = 0, translate: float = 0.0, randaugment: int = 0,
                 randaugment_magnitude: float = IMAGE_OPS["randaugment_magnitude"], mixup: float = 0.0,
                 cutmix: float = 0.0, num_classes: int | None = None):
        check_image_ops({"augment": flip, "crop_padding": crop_padding, "translate": translate,
                         "randaugment": randaugment, "randaugment_magnitude": randaugment_magnitude})
        check_target_ops({"mixup": mixup, "cutmix": cutmix})
        if (mixup or cutmix) and not num_classes:
            raise KbenchError("MixUp / CutMix need the number of classes (one-hot targets); set up the data first")
        self.flip, self.crop_padding, self.num_classes = flip, crop_padding, num_classes
        self.translate, self.randaugment, self.magnitude = translate, randaugment, randaugment_magnitude
        self.mixup, self.cutmix = mixup, cutmix
        self._layers: dict = {}
        self.last_mix: dict | None = None

    @property
    def mixes(self) -> bool:
        """True when the targets are mixed (``float32 (b, num_classes)``) rather than ``int32 (b,)``."""
        return bool(self.mixup or self.cutmix)

    def _layer(self, name: str):
        """The keras layer ``name`` (built once, float32 whatever the dtype policy)."""
        if name not in self._layers:
            make = {"translate": lambda: keras.layers.RandomTranslation(self.translate, self.translate,
                                                                        dtype="float32"),
                    "randaugment": lambda: keras.layers.RandAugment(value_range=(0, 255), num_ops=self.randaugment,
                                                                    factor=self.magnitude, dtype="float32"),
                    "mixup": lambda: keras.layers.MixUp(alpha=self.mixup, dtype="float32"),
                    "cutmix": lambda: keras.layers.CutMix(factor=self.cutmix, dtype="float32")}[name]
            self._layers[name] = make()
        return self._layers[name]

    def __call__(self, x: np.ndarray, y: np.ndarray, key: tuple[int, int, int]):
        """Augment one batch.

        Args:
            x: ``float32 (b, h, w, 3)`` pixels in [0, 255] (modified in place by the flip).
            y: ``int32 (b,)`` labels.
            key: ``(seed, epoch, batch index)``: every random draw comes from it.

        Returns:
            ``(x, y)``: ``x`` ``float32 (b, h, w, 3)`` in [0, 255]; ``y`` as given, or
            ``float32 (b, num_classes)`` soft targets (rows sum to 1) when mixing.
        """
        if self.flip:
            m = flip_mask(*key, len(x))
            x[m] = x[m, :, ::-1]
        rng = np.random.default_rng([*key, 1])
        if self.crop_padding:
            x = pad_crop(x, self.crop_padding, rng)
        if not (self.translate or self.randaugment or self.mixes):  # NumPy moves only
            x = np.asarray(x, np.float32)
            return np.clip(x, 0, 255, out=x), y
        with _LAYER_LOCK:  # keras layers keep their seed in a variable: one batch at a time
            for name in ("translate", "randaugment"):
                if getattr(self, name):
                    layer = self._layer(name)
                    _seeded(layer, int(rng.integers(1, 2**31 - 1)))
                    x = layer(x, training=True)
            if self.mixes:
                x, y = self._mix(x, y, rng)
        x = np.asarray(keras.ops.convert_to_numpy(x), np.float32)
        return np.clip(x, 0, 255, out=x), y  # interpolation / blending round-off

    def _mix(self, x, y: np.ndarray, rng: np.random.Generator):
        """MixUp or CutMix (both on: CutMix with probability :data:`SWITCH_PROB`, from ``rng``).

        CutMix's label weight is the fraction of pixels the image keeps (keras computes it
        from the continuous box, off by up to a pixel row and column; timm ``correct_lam``)."""
        cut = bool(self.cutmix) and (not self.mixup or rng.random() < SWITCH_PROB)
        name = "cutmix" if cut else "mixup"
        layer = self._layer(name)
        _seeded(layer, int(rng.integers(1, 2**31 - 1)))
        onehot = np.eye(self.num_classes, dtype=np.float32)[y]
        t = layer.get_random_transformation(x, training=True)
        if cut:  # the label weight of the pixels actually pasted (timm's correct_lam), not the continuous box
            t["mix_weight"] = 1.0 - keras.ops.mean(keras.ops.cast(t["batch_masks"], "float32"), axis=(1, 2, 3))
        x = layer.transform_images(keras.ops.convert_to_tensor(x, "float32"), t, training=True)
        out = layer.transform_labels(keras.ops.convert_to_tensor(onehot), t, training=True)
        self.last_mix = {"op": name, "permutation": np.asarray(keras.ops.convert_to_numpy(t["permutation_order"])),
                         "weights": np.asarray(keras.ops.convert_to_numpy(t["mix_weight"]), np.float32).reshape(-1)}
        return x, np.asarray(keras.ops.convert_to_numpy(out), np.float32)


def make_augmenter(image_ops: dict, target_ops: dict | None = None, num_classes: int | None = None) -> Augmenter | None:
    """An :class:`Augmenter` for the ``data`` image ops and ``recipe`` target ops given
    (missing keys: defaults; label smoothing is the loss's, ignored here), or None when
    every op is off."""
    ops = {**IMAGE_OPS, **image_ops, **TARGET_OPS, **(target_ops or {})}
    aug = Augmenter(ops["augment"], ops["crop_padding"], ops["translate"], ops["randaugment"],
                    ops["randaugment_magnitude"], ops["mixup"], ops["cutmix"], num_classes)
    on = aug.flip or aug.crop_padding or aug.translate or aug.randaugment or aug.mixes
    return aug if on else None


__all__ = ["Augmenter", "flip_mask", "make_augmenter", "pad_crop"]
