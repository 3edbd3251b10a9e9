"""Recipes: phases, trainable sets and parameter counts, BatchNorm kept frozen, frozen-variable check."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from kbench import KbenchError
from kbench.models import build_model
from kbench.recipes import apply_phase, cache_cut, check_frozen_unchanged, count_params, make_phases, snapshot_frozen

VGG16_CONV = 14_714_688             # all 13 conv layers of VGG16 (weights + biases)
BLOCK5 = 3 * (3 * 3 * 512 * 512 + 512)  # 7,079,424
GAP_HEAD = 512 * 10 + 10


@pytest.fixture(scope="module")
def vgg():
    return build_model("vgg16", "none", 32, "gap", 0.5, "auto", 10)


def _counts(tm, phase):
    apply_phase(tm.base, phase)
    return count_params(tm.compose(base_training=False if phase.base_inference else None))


def test_phase_lists():
    ft = make_phases("fine_tune", 3, 1e-3, 2, None, "auto", "block5")
    assert [(p.name, p.epochs, p.train_base) for p in ft] == [("feature_extraction", 3, "none"),
                                                             ("fine_tune", 2, "from:block5")]
    assert ft[1].learning_rate == pytest.approx(1e-4)  # 10x lower by default
    assert make_phases("fine_tune", 1, 1e-3, 1, 5e-6, "last:4")[1].learning_rate == 5e-6
    assert make_phases("full", 2, 1e-4)[0].train_base == "all" and not make_phases("scratch", 1, 1e-3)[0].base_inference
    with pytest.raises(KbenchError, match="feature_extraction, fine_tune"):
        make_phases("finetune", 1, 1e-3)


def test_trainable_counts_per_phase(vgg):
    fe, ft = make_phases("fine_tune", 1, 1e-3, 1, None, "block5")
    assert _counts(vgg, fe) == (GAP_HEAD, VGG16_CONV)
    assert _counts(vgg, ft) == (BLOCK5 + GAP_HEAD, VGG16_CONV - BLOCK5)
    assert _counts(vgg, make_phases("full", 1, 1e-3)[0]) == (VGG16_CONV + GAP_HEAD, 0)
    last2 = make_phases("fine_tune", 1, 1e-3, 1, None, "last:2")[1]  # block5_conv3 + block5_pool
    assert _counts(vgg, last2)[0] == BLOCK5 // 3 + GAP_HEAD


def test_unknown_unfreeze_prefix(vgg):
    with pytest.raises(KbenchError, match="'block9' matches no layer"):
        apply_phase(vgg.base, make_phases("fine_tune", 1, 1e-3, 1, None, "block9")[1])


def test_every_phase_is_checked_against_the_layers_before_training(vgg):
    from kbench.recipes import check_train_layers, phase_configs, resolve_phases

    rows = [{"name": "head", "epochs": 1, "learning_rate": 1e-3, "train": "none"},
            {"name": "top", "epochs": 1, "learning_rate": 1e-4, "train": "block5"},
            {"name": "deep", "epochs": 1, "learning_rate": 1e-5, "train": "from:blok3"}]
    phases = resolve_phases(phase_configs(rows), "block5")
    layers = [layer.name for layer in vgg.base.layers]
    assert check_train_layers(vgg.base, phases[:2]) == [len(layers), layers.index("block5_conv1")]
    with pytest.raises(KbenchError, match="phase 'deep': layer-name prefix 'blok3' matches no layer of 'vgg16'"):
        check_train_layers(vgg.base, phases)


def test_cache_cut_points(vgg):
    layers = [layer.name for layer in vgg.base.layers]
    assert cache_cut(vgg.base, len(layers)) == "block5_pool"
    assert cache_cut(vgg.base, layers.index("block5_conv1")) == "block4_pool"
    assert cache_cut(vgg.base, 1) is None


def test_resnet_cut_skips_to_a_bottleneck():
    tm = build_model("resnet50", "none", 32, "gap", 0.5, "auto", 10)
    layers = [layer.name for layer in tm.base.layers]
    # inside conv5_block1 the residual branch bypasses its layers: the cut falls back to conv4_block6_out
    assert cache_cut(tm.base, layers.index("conv5_block1_2_conv")) == "conv4_block6_out"
    ft = make_phases("fine_tune", 1, 1e-3, 1, None, "auto", "conv5")[1]
    apply_phase(tm.base, ft)
    bns = [layer for layer in tm.base.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and not any(layer.trainable for layer in bns)   # BN stays in inference mode
    assert tm.base.get_layer("conv5_block1_1_conv").trainable and not tm.base.get_layer("conv4_block6_1_conv").trainable
    apply_phase(tm.base, make_phases("full", 1, 1e-3)[0])
    assert all(layer.trainable for layer in bns)              # full: BN trains


def test_frozen_check_detects_a_change(vgg):
    apply_phase(vgg.base, make_phases("feature_extraction", 1, 1e-3)[0])
    model = vgg.compose(base_training=False)
    before = snapshot_frozen(model)
    check_frozen_unchanged(model, before, "x")  # unchanged: no error
    k = vgg.base.get_layer("block3_conv1").kernel
    k.assign(k.value + 1e-7)
    with pytest.raises(RuntimeError, match="block3_conv1"):
        check_frozen_unchanged(model, before, "feature_extraction")
    k.assign(keras.ops.convert_to_tensor(before[k.path]))
    assert np.array_equal(keras.ops.convert_to_numpy(k.value), before[k.path])
