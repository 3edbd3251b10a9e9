"""Backbone registry, preprocessing constants, heads, size and weights errors."""

from __future__ import annotations

import time

import keras
import numpy as np
import pytest

from kbench import KbenchError
from kbench.models import BACKBONES, Preprocess, build_backbone, build_model, get_spec

# Expected feature map (h, w, c) at each backbone's minimum input size, from building it.
FEATURES_AT_MIN = {
    "vgg16": (1, 1, 512), "vgg19": (1, 1, 512), "resnet50": (1, 1, 2048), "resnet50v2": (1, 1, 2048),
    "mobilenetv2": (1, 1, 1280), "mobilenetv3small": (1, 1, 576), "densenet121": (1, 1, 1024),
    "xception": (3, 3, 2048), "efficientnetb0": (1, 1, 1280), "convnexttiny": (1, 1, 768),
}


def test_registry_covers_required_backbones():
    assert set(FEATURES_AT_MIN) <= set(BACKBONES)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbone_builds_at_min_size_with_documented_shape(name):
    spec = BACKBONES[name]
    base = build_backbone(spec, spec.min_size, "none")
    assert tuple(base.output.shape[1:]) == FEATURES_AT_MIN[name] == spec.feature_shape(spec.min_size)


def test_feature_shape_rule_at_64_and_default():
    assert BACKBONES["vgg16"].feature_shape(64) == (2, 2, 512)
    assert BACKBONES["xception"].feature_shape(299) == (10, 10, 2048)


def test_size_below_minimum_refused_before_building():
    t0 = time.perf_counter()
    with pytest.raises(KbenchError, match=r"minimum of 71 px.*xception"):
        build_model("xception", "imagenet", 64, "gap", 0.5, "auto", 10)
    assert time.perf_counter() - t0 < 1.0  # nothing was downloaded or built


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(KbenchError, match="vgg16.*convnexttiny"):
        get_spec("vgg17")


def _pixel(mode, rgb):
    x = np.array(rgb, np.float32).reshape(1, 1, 1, 3)
    return keras.ops.convert_to_numpy(Preprocess(mode)(x)).reshape(3)


def test_preprocess_known_constants():
    # caffe: RGB -> BGR minus the BGR ImageNet mean (keras.applications.imagenet_utils)
    np.testing.assert_allclose(_pixel("caffe", [255, 0, 0]), [-103.939, -116.779, 255 - 123.68], rtol=1e-6)
    np.testing.assert_allclose(_pixel("tf", [0, 127.5, 255]), [-1.0, 0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(_pixel("torch", [255, 255, 255]),
                               [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225], rtol=1e-5)
    np.testing.assert_allclose(_pixel("scale01", [255, 51, 0]), [1.0, 0.2, 0.0], atol=1e-6)
    np.testing.assert_allclose(_pixel("none", [1, 2, 3]), [1, 2, 3])


@pytest.mark.parametrize("mode", ["caffe", "tf", "torch"])
def test_preprocess_matches_keras_and_leaves_input_alone(mode):
    x = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype(np.float32)
    keep = x.copy()
    ours = keras.ops.convert_to_numpy(Preprocess(mode)(x))
    ref = keras.applications.imagenet_utils.preprocess_input(x.copy(), mode=mode)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(x, keep)


def test_registry_preprocess_modes():
    assert {n: s.preprocess for n, s in BACKBONES.items()} == {
        "vgg16": "caffe", "vgg19": "caffe", "resnet50": "caffe", "resnet50v2": "tf", "mobilenetv2": "tf",
        "mobilenetv3small": "none", "densenet121": "torch", "xception": "tf", "efficientnetb0": "none",
        "convnexttiny": "none"}


def test_missing_and_mismatched_weights_files(tmp_path):
    with pytest.raises(KbenchError, match="does not exist"):
        build_model("vgg16", str(tmp_path / "nope.weights.h5"), 32, "gap", 0.5, "auto", 10)
    w = tmp_path / "vgg16.weights.h5"
    keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(w)
    with pytest.raises(KbenchError, match="does not fit backbone 'vgg19'"):
        build_model("vgg19", str(w), 32, "gap", 0.5, "auto", 10)


def test_heads_and_output_kind():
    tm = build_model("vgg16", "none", 32, "article", 0.5, "scale01", 10)
    names = [layer.name for layer in tm.head]
    assert names == ["head_flatten", "head_dense_1000", "head_dense_800", "head_dense_400", "head_dense_200",
                     "head_dense_100", "predictions"]
    assert tm.from_logits is False and tm.preprocess.mode == "scale01"
    out = tm.keras_model(np.zeros((2, 32, 32, 3), np.float32))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(keras.ops.sum(out, axis=-1)), [1, 1], rtol=1e-5)
    tm = build_model("vgg16", "none", 32, "gap", 0.5, "auto", 7)
    assert tm.from_logits is True and tm.keras_model.output.shape[-1] == 7


def test_loads_real_shared_weights(vgg16_weights):
    base = build_backbone(get_spec("vgg16"), 32, str(vgg16_weights))
    k = keras.ops.convert_to_numpy(base.get_layer("block1_conv1").kernel)
    assert k.shape == (3, 3, 3, 64) and float(np.abs(k).sum()) > 1.0
