"""Augmentation settings as data, their checks and the frozen-prefix cache rules (keras-free:
the config and :class:`~kbench.data.DataModule` check them before any data is read). The
transforms themselves are :mod:`kbench.data.augment`.

Image ops (``data`` section, training batches only, in this order):

* ``augment``: random horizontal flip, each image with probability 0.5.
* ``crop_padding``: random crop with padding (He et al. 2016 on CIFAR; torchvision
  ``RandomCrop(size, padding=p)``): the batch is zero-padded by ``p`` pixels of the model's
  input (after the resize) on every side and each image is cropped back to its size at a
  random offset. Zero ("constant") padding as torchvision's default, so a shifted image
  shows a black border rather than mirrored content.
* ``translate``: keras ``RandomTranslation(translate, translate)``: shifts by up to this
  fraction of the height and of the width, reflect fill, bilinear.
* ``randaugment``: keras ``RandAugment(value_range=(0, 255), num_ops=randaugment,
  factor=randaugment_magnitude)`` (Cubuk et al. 2020). Keras picks the ``num_ops`` ops per
  batch (each image gets its own random strength); ``factor`` is keras' magnitude in
  (0, 1]: rotations up to ``factor * 360`` degrees, translations up to that fraction of
  the side, so the default is 0.1 rather than keras' 0.5.

Target mixing (``recipe`` section): ``mixup`` (alpha of MixUp's Beta(alpha, alpha), Zhang
et al. 2018; keras ``MixUp``), ``cutmix`` (keras ``CutMix(factor=cutmix)``, Yun et al. 2019:
each batch draws its Beta alpha from U(0, factor), so at most 1); both on: each batch uses one of the two, chosen by the batch seed with
probability 0.5 (timm ``Mixup(switch_prob=0.5)``). Samples are paired within the batch by a
random permutation, so any batch size works (a batch of 1 is mixed with itself). Mixing
turns the training targets into ``float32 (b, num_classes)`` rows that sum to 1;
``label_smoothing`` (Szegedy et al. 2016) is applied by the loss, to int or mixed targets.

Every random draw of a batch comes from ``(seed, epoch, batch index)``, so an exact resume
(mid-epoch too) replays the same augmentations.

Cache rules (:func:`cache_off_reason`): label smoothing leaves inputs alone and keeps the
frozen-prefix cache; flip alone keeps it with two views per training image (the image and
its mirror, one drawn per image per epoch by the same rule as the uncached flip); any other
image op or MixUp/CutMix switches it off, with the reason logged.
"""

from __future__ import annotations

import math

from kbench import KbenchError

# data-section image ops: {key: default}; "augment" is the flip (its historical name)
IMAGE_OPS = {"augment": False, "crop_padding": 0, "translate": 0.0, "randaugment": 0,
             "randaugment_magnitude": 0.1}
# recipe-section target settings: {key: default}
TARGET_OPS = {"mixup": 0.0, "cutmix": 0.0, "label_smoothing": 0.0}
# the probability that a batch with both MixUp and CutMix on uses CutMix (timm's switch_prob)
SWITCH_PROB = 0.5


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_image_ops(ops: dict) -> None:
    """Check the :data:`IMAGE_OPS` values of ``ops`` (missing keys: defaults).

    Raises:
        KbenchError: one message naming the first bad ``data.<key>``, its value and the range.
    """
    ops = {**IMAGE_OPS, **ops}
    if not isinstance(ops["augment"], bool):
        raise KbenchError(f"data.augment must be true or false (random horizontal flips), got {ops['augment']!r}")
    p = ops["crop_padding"]
    if not _is_int(p) or p < 0:
        raise KbenchError(f"data.crop_padding must be an integer >= 0 (pixels of zero padding before a random "
                          f"crop; 0 = off), got {p!r}")
    t = ops["translate"]
    if not _is_number(t) or not 0 <= t < 1:
        raise KbenchError(f"data.translate must be a number in [0, 1) (largest shift as a fraction of the side; "
                          f"0 = off), got {t!r}")
    n = ops["randaugment"]
    if not _is_int(n) or n < 0:
        raise KbenchError(f"data.randaugment must be an integer >= 0 (RandAugment ops per image, e.g. 2; 0 = off), "
                          f"got {n!r}")
    m = ops["randaugment_magnitude"]
    if not _is_number(m) or not 0 < m <= 1:
        raise KbenchError(f"data.randaugment_magnitude must be a number in (0, 1] (keras RandAugment factor, "
                          f"e.g. 0.1), got {m!r}")


def check_target_ops(ops: dict) -> None:
    """Check the :data:`TARGET_OPS` values of ``ops`` (missing keys: defaults).

    Raises:
        KbenchError: one message naming the first bad ``recipe.<key>``, its value and the range.
    """
    ops = {**TARGET_OPS, **ops}
    a = ops["mixup"]
    if not _is_number(a) or a < 0:
        raise KbenchError(f"recipe.mixup must be a number >= 0 (alpha of MixUp's Beta(alpha, alpha), e.g. 0.2; "
                          f"0 = off), got {a!r}")
    c = ops["cutmix"]
    if not _is_number(c) or not 0 <= c <= 1:
        raise KbenchError(f"recipe.cutmix must be a number in [0, 1] (keras CutMix factor, e.g. 1.0; 0 = off), "
                          f"got {c!r}")
    s = ops["label_smoothing"]
    if not _is_number(s) or not 0 <= s < 1:
        raise KbenchError(f"recipe.label_smoothing must be a number in [0, 1) (e.g. 0.1; 0 = off), got {s!r}")


def active_image_ops(ops: dict) -> list[str]:
    """The names of the :data:`IMAGE_OPS` that are on in ``ops`` (``randaugment_magnitude``
    is a setting of ``randaugment``, never listed)."""
    ops = {**IMAGE_OPS, **ops}
    return [k for k in IMAGE_OPS if k != "randaugment_magnitude" and ops[k]]


def cache_off_reason(image_ops: dict, target_ops: dict) -> str | None:
    """Why the frozen-prefix cache cannot be used with these settings (None: it can; with
    ``augment`` alone as the two-view flip cache).

    Args:
        image_ops: :data:`IMAGE_OPS` values (the data module's).
        target_ops: :data:`TARGET_OPS` values (the recipe's).
    """
    others = [k for k in active_image_ops(image_ops) if k != "augment"]
    mixing = [k for k in ("mixup", "cutmix") if target_ops.get(k)]
    if not others and not mixing:
        return None
    return ("frozen-prefix cache off: " + ", ".join(f"{'data' if k in IMAGE_OPS else 'recipe'}.{k}"
                                                    for k in others + mixing)
            + ": they change the input images every epoch (only a flip has a cached two-view form)")


__all__ = ["IMAGE_OPS", "SWITCH_PROB", "TARGET_OPS", "active_image_ops", "cache_off_reason", "check_image_ops",
           "check_target_ops"]
