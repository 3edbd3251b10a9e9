"""Seeded per-batch augmentation (kbench.data.augment), its checks, and the soft-target loss/metric."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from kbench import KbenchError
from kbench.data import BatchSequence
from kbench.data.augment import Augmenter, flip_mask
from kbench.trainer.targets import SoftAccuracy, SoftTargetCrossentropy, loss_and_metrics

K = 5
OPS = {"flip": dict(flip=True), "crop": dict(crop_padding=3), "translate": dict(translate=0.2),
       "randaugment": dict(randaugment=2, randaugment_magnitude=0.3), "mixup": dict(mixup=0.4, num_classes=K),
       "cutmix": dict(cutmix=1.0, num_classes=K), "all": dict(flip=True, crop_padding=2, translate=0.1,
                                                               randaugment=1, mixup=0.2, cutmix=1.0, num_classes=K)}


def _images(n=7, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, size, size, 3)).astype(np.uint8), rng.integers(0, K, n).astype(np.int32))


@pytest.mark.parametrize("op", list(OPS))
def test_same_key_same_batch_also_after_a_resume_tail(op):
    x, y = _images(7)
    seq = BatchSequence(x, y, 4, 16, shuffle=True, seed=11, augment=Augmenter(**OPS[op]))  # batches 4, 3
    seq.epoch = 2
    first = [seq[i] for i in range(len(seq))]
    again = seq[0]
    tail = seq.tail(1)  # a resume inside the epoch: batches 1.. served as 0..
    np.testing.assert_array_equal(again[0], first[0][0])
    np.testing.assert_array_equal(again[1], first[0][1])
    for k in range(len(tail)):
        np.testing.assert_array_equal(tail[k][0], first[k + 1][0])
        np.testing.assert_array_equal(tail[k][1], first[k + 1][1])
    plain = BatchSequence(x, y, 4, 16, shuffle=True, seed=11)
    plain.epoch = 2
    mixes = "num_classes" in OPS[op]
    for (xa, ya), (xp, yp) in zip(first, (plain[i] for i in range(len(plain)))):
        assert xa.shape == xp.shape and xa.dtype == np.float32 and 0 <= xa.min() and xa.max() <= 255
        if mixes:
            assert ya.dtype == np.float32 and ya.shape == (len(yp), K)
            np.testing.assert_allclose(ya.sum(axis=1), 1.0, atol=1e-5)
        else:
            np.testing.assert_array_equal(ya, yp)
    epoch = np.concatenate([b[0] for b in first])
    assert not np.array_equal(epoch, np.concatenate([plain[i][0] for i in range(len(plain))]))  # changed
    seq.epoch = 3
    assert not np.array_equal(np.concatenate([seq[i][0] for i in range(len(seq))]), epoch)  # other draws


def test_flip_is_the_historic_rule_and_bool_augment_still_means_flip():
    x, y = _images()
    a = BatchSequence(x, y, 4, 16, shuffle=True, seed=5, augment=True)
    a.epoch = 1
    xb, _ = a[1]
    plain = BatchSequence(x, y, 4, 16, shuffle=True, seed=5)
    plain.epoch = 1
    want, _ = plain[1]
    m = np.random.default_rng([5, 1, 1]).random(len(want)) < 0.5
    np.testing.assert_array_equal(m, flip_mask(5, 1, 1, len(want)))
    want[m] = want[m, :, ::-1]
    np.testing.assert_array_equal(xb, want)


def test_pad_crop_shifts_whole_images_within_the_zero_border():
    x = np.arange(2 * 6 * 6 * 3, dtype=np.float32).reshape(2, 6, 6, 3) + 1
    out, _ = Augmenter(crop_padding=2)(x.copy(), np.zeros(2, np.int32), (0, 0, 0))
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    for i in range(2):  # each output is some 6x6 window of its own padded image
        assert any(np.array_equal(out[i], padded[i, r:r + 6, c:c + 6]) for r in range(5) for c in range(5))


@pytest.mark.parametrize("op", ["mixup", "cutmix"])
@pytest.mark.parametrize("n", [1, 5])
def test_mixed_targets_match_the_mixing_weights(op, n):
    x, y = _images(n, 8, seed=3)
    x = x.astype(np.float32)
    aug = Augmenter(**OPS[op])
    xm, ym = aug(x.copy(), y, (1, 0, 4))
    mix = aug.last_mix
    assert mix["op"] == op and sorted(mix["permutation"]) == list(range(n))
    w, p = mix["weights"], mix["permutation"]
    onehot = np.eye(K, dtype=np.float32)[y]
    np.testing.assert_allclose(ym, w[:, None] * onehot + (1 - w[:, None]) * onehot[p], atol=1e-5)
    np.testing.assert_allclose(ym.sum(axis=1), 1.0, atol=1e-5)
    if op == "mixup":
        np.testing.assert_allclose(xm, w[:, None, None, None] * x + (1 - w[:, None, None, None]) * x[p], atol=1e-3)
    else:  # every pixel comes from the image or its partner; the partner's share is the box
        own = np.all(xm == x, axis=-1)
        assert np.all(own | np.all(xm == x[p], axis=-1))
        moved = p != np.arange(n)
        np.testing.assert_allclose(own.mean(axis=(1, 2))[moved], w[moved], atol=1e-6)


def test_both_mixers_switch_per_batch():
    x, y = _images(4, 8)
    aug = Augmenter(mixup=0.2, cutmix=1.0, num_classes=K)
    ops = set()
    for i in range(6):  # the choice comes from NumPy: the same on every backend
        aug(x.astype(np.float32), y, (0, 0, i))
        ops.add(aug.last_mix["op"])
    assert ops == {"mixup", "cutmix"}


@pytest.mark.parametrize("kwargs,key", [
    (dict(crop_padding=-1), "data.crop_padding"), (dict(crop_padding=1.5), "data.crop_padding"),
    (dict(translate=1.0), "data.translate"), (dict(translate=-0.1), "data.translate"),
    (dict(randaugment=-2), "data.randaugment"), (dict(randaugment=2.0), "data.randaugment"),
    (dict(randaugment_magnitude=0.0), "data.randaugment_magnitude"), (dict(augment="yes"), "data.augment")])
def test_bad_image_ops_are_one_error_naming_the_key(kwargs, key):
    from kbench.data import DataModule

    with pytest.raises(KbenchError, match=key):
        DataModule(source="cifar10", root="/nonexistent", **kwargs)  # before any data is read


@pytest.mark.parametrize("key,value", [("mixup", "-0.1"), ("cutmix", "1.5"), ("label_smoothing", "1.0"),
                                       ("label_smoothing", "-0.2")])
def test_bad_target_ops_fail_at_parse(key, value, capsys):
    from kbench.config import parse

    with pytest.raises(SystemExit):
        parse([f"--recipe.{key}", value])
    assert f"recipe.{key}" in capsys.readouterr().err


def test_soft_loss_equals_keras_losses():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, K)).astype(np.float32)
    y = rng.integers(0, K, 6).astype(np.int32)
    onehot = np.eye(K, dtype=np.float32)[y]
    sparse = float(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits))
    assert float(SoftTargetCrossentropy(from_logits=True)(y, logits)) == pytest.approx(sparse, rel=1e-6)
    smooth = float(keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)(onehot, logits))
    assert smooth != pytest.approx(sparse)
    assert float(SoftTargetCrossentropy(True, 0.1)(onehot, logits)) == pytest.approx(smooth, rel=1e-6)
    assert float(SoftTargetCrossentropy(True, 0.1)(y, logits)) == pytest.approx(smooth, rel=1e-6)
    probs = np.asarray(keras.ops.softmax(logits))
    assert float(SoftTargetCrossentropy(False, 0.0)(y, probs)) == pytest.approx(sparse, rel=1e-5)


def test_soft_accuracy_takes_int_labels_and_soft_targets():
    logits = np.array([[2.0, 0, 0, 0, 0], [0, 3.0, 0, 0, 0], [0, 0, 0, 0, 1.0]], np.float32)
    m = SoftAccuracy()
    m.update_state(np.array([0, 2, 4], np.int32), logits)
    assert float(m.result()) == pytest.approx(2 / 3)
    m.reset_state()
    soft = np.array([[0.7, 0.3, 0, 0, 0], [0, 0.4, 0.6, 0, 0], [0, 0, 0, 0.1, 0.9]], np.float32)
    m.update_state(soft, logits)
    assert float(m.result()) == pytest.approx(2 / 3) and m.name == "accuracy"


def test_default_compile_path_is_unchanged():
    loss, metrics = loss_and_metrics(True)
    assert isinstance(loss, keras.losses.SparseCategoricalCrossentropy) and metrics == ["accuracy"]
    loss, metrics = loss_and_metrics(True, 0.1)
    assert isinstance(loss, SoftTargetCrossentropy) and loss.label_smoothing == 0.1
    assert isinstance(metrics[0], SoftAccuracy)
