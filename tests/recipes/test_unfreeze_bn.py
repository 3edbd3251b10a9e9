"""Progressive unfreezing (the ``gradual_unfreeze`` preset) and the BatchNorm policy, without
training: the phases the preset writes, its checks, a ``blocks:K`` deeper than the backbone,
which BatchNormalization layers a phase lets train, the audit's size and the layers that
keep the frozen-prefix cache off under ``bn: train``."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

from kbench import KbenchError
from kbench.config import RecipeConfig
from kbench.models import build_model
from kbench.recipes import (
    Phase,
    apply_phase,
    build_recipe,
    check_frozen_unchanged,
    check_train_layers,
    make_phases,
    numbered_blocks,
    phase_configs,
    resolve_phases,
    snapshot_frozen,
    training_bn_layers,
    training_mode_layers,
)

MNV2_TOP_BN = ["block_16_expand_BN", "block_16_depthwise_BN", "block_16_project_BN", "Conv_1_bn"]


@pytest.fixture(scope="module")
def vgg():
    return build_model("vgg16", "none", 32, "gap", 0.5, "auto", 10)


@pytest.fixture(scope="module")
def mnv2():
    return build_model("mobilenetv2", "none", 32, "gap", 0.5, "auto", 10)


def test_gradual_unfreeze_phases():
    cfg = RecipeConfig(name="gradual_unfreeze", epochs=2, learning_rate=1e-3, fine_tune_epochs=1, unfreeze_blocks=4)
    recipe = build_recipe(cfg, "block5")
    assert [(p.name, p.epochs, p.learning_rate, p.train_base, p.base_inference) for p in recipe.phases] == [
        ("feature_extraction", 2, 1e-3, "none", True), ("unfreeze_1", 1, 1e-4, "from:block5", True),
        ("unfreeze_2", 1, 1e-4, "from:block4", True), ("unfreeze_3", 1, 1e-4, "from:block3", True),
        ("unfreeze_4", 1, 1e-4, "from:block2", True)]
    # blocks are numbered down from the registry's top block, whatever its name
    assert [p.train_base for p in make_phases("gradual_unfreeze", 1, 1e-3, 1, 3e-5, "auto", "block_16", 2)] == [
        "none", "from:block_16", "from:block_15"]
    assert make_phases("gradual_unfreeze", 1, 1e-3, 1, 3e-5, unfreeze_blocks=1)[1].learning_rate == 3e-5
    # recipe-wide keys reach every stage: discriminative rates and the BN mode
    ld = build_recipe(dataclasses.replace(cfg, layer_decay=0.5, bn="train"), "block5")
    assert {(p.layer_decay, p.base_inference) for p in ld.phases} == {(0.5, False)}


@pytest.mark.parametrize("bn,fine_tune,full", [(None, True, False), ("train", False, False), ("frozen", True, True)])
def test_presets_follow_recipe_bn(bn, fine_tune, full):
    """recipe.bn sets the BN mode of the presets' training phases; null keeps each preset's own rule."""
    cfg = RecipeConfig(bn=bn)
    assert build_recipe(cfg, "block5").phases[1].base_inference is fine_tune
    assert build_recipe(dataclasses.replace(cfg, name="full"), "block5").phases[0].base_inference is full


@pytest.mark.parametrize("value", [0, -1, 2.0, True, "3"])
def test_unfreeze_blocks_must_be_a_positive_integer(value):
    with pytest.raises(KbenchError, match=rf"recipe.unfreeze_blocks must be an integer >= 1 .*got {value!r}$"):
        build_recipe(RecipeConfig(name="gradual_unfreeze", unfreeze_blocks=value), "block5")


def test_unfreeze_blocks_is_refused_next_to_phases():
    rows = [{"name": "head", "epochs": 1, "learning_rate": 1e-3, "train": "none"}]
    with pytest.raises(KbenchError, match=r"recipe.unfreeze_blocks=2 would have no effect"):
        build_recipe(RecipeConfig(phases=rows, unfreeze_blocks=2), "block5")


def test_blocks_deeper_than_the_backbone_fail_before_training(vgg):
    assert numbered_blocks(vgg.base, "block5") == 5
    layers = [layer.name for layer in vgg.base.layers]
    ok = make_phases("gradual_unfreeze", 1, 1e-3, 1, None, "auto", "block5", 5)
    assert check_train_layers(vgg.base, ok)[1:] == [layers.index(f"block{b}_conv1") for b in (5, 4, 3, 2, 1)]
    deep = make_phases("gradual_unfreeze", 1, 1e-3, 1, None, "auto", "block5", 6)
    with pytest.raises(KbenchError, match=r"^phase 'unfreeze_6': train 'from:block0' \(= blocks:6\) is deeper than "
                                          r"'vgg16' goes: it has only 5 numbered blocks, from its top block 'block5' "
                                          r"down to 'block1'; use blocks:1 to blocks:5, or train: all$"):
        check_train_layers(vgg.base, deep)
    # a user's phase list gets the same message; below block 0 the phase list itself is refused
    rows = [{"name": "deep", "epochs": 1, "learning_rate": 1e-4, "train": "blocks:6"}]
    with pytest.raises(KbenchError, match=r"^phase 'deep': train 'from:block0' \(= blocks:6\) is deeper"):
        check_train_layers(vgg.base, resolve_phases(phase_configs(rows), "block5"))
    with pytest.raises(KbenchError, match=r"phase 'deep': train blocks:7 does not exist \(blocks are numbered down from the top block 'block5' to 0"):
        resolve_phases(phase_configs([{**rows[0], "train": "blocks:7"}]), "block5")
    with pytest.raises(KbenchError, match="^phase 'x': layer-name prefix 'blok3' matches no layer"):
        check_train_layers(vgg.base, [Phase("x", 1, 1e-4, "from:blok3", top_block="block5")])


def _bn_stats(model) -> dict[str, np.ndarray]:
    return {f"{la.name}/{v.name}": np.array(keras.ops.convert_to_numpy(v.value)) for la in model.layers
            if isinstance(la, keras.layers.BatchNormalization) for v in la.non_trainable_variables}


@pytest.mark.parametrize("bn", ["train", "frozen"])
def test_bn_policy_sets_which_bn_layers_train(mnv2, bn):
    (phase,) = resolve_phases(phase_configs([{"name": "top", "epochs": 1, "learning_rate": 1e-3,
                                              "train": "blocks:1", "bn": bn}]), "block_16")
    assert (phase.train_base, phase.base_inference) == ("from:block_16", bn == "frozen")
    apply_phase(mnv2.base, phase)
    model = mnv2.compose(base_training=False if phase.base_inference else None)
    assert training_bn_layers(model) == (MNV2_TOP_BN if bn == "train" else [])
    before = snapshot_frozen(model)
    frozen_layers = [la for la in mnv2.base.layers if not la.trainable]
    assert check_frozen_unchanged(model, before, "top") == len(before) == sum(len(la.variables) for la in frozen_layers)
    # a training step in training mode moves exactly the statistics of the BN layers that train
    stats = _bn_stats(mnv2.base)
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    mnv2.base(mnv2.preprocess(x), training=True if bn == "train" else False)  # what fit does per phase
    changed = {k.split("/")[0] for k, v in _bn_stats(mnv2.base).items() if not np.array_equal(v, stats[k])}
    assert changed == (set(MNV2_TOP_BN) if bn == "train" else set())


def test_training_mode_layers_keep_the_cache_exact_only_without_dropout(vgg, mnv2):
    assert training_mode_layers(vgg.base, "block4_pool") == []
    assert training_mode_layers(mnv2.base, "block_15_add") == []  # frozen BN only: the bn: train cache is exact
    eff = build_model("efficientnetb0", "none", 32, "gap", 0.5, "auto", 10)
    drops = training_mode_layers(eff.base, "block6d_add")
    assert drops and all(name.endswith("_drop") for name in drops) and "block2b_drop" in drops
