"""Recipes as data (keras-free): presets and user phase lists resolve through the same
checks; train values, the BatchNorm default, labels, optimizers and the package's names."""

from __future__ import annotations

import dataclasses

import pytest

from kbench import KbenchError
from kbench.config import RecipeConfig, parse
from kbench.recipes import (
    PRESETS,
    Phase,
    PhaseConfig,
    Preset,
    build_recipe,
    make_phases,
    phase_configs,
    resolve_phases,
    train_base,
)
from kbench.recipes.presets import phase


@pytest.mark.parametrize("train,want", [
    ("none", "none"), ("all", "all"), ("auto", "from:block5"), ("from:block4", "from:block4"),
    ("block4", "from:block4"), ("last:3", "last:3"), ("last:007", "last:7"),
])
def test_train_values(train, want):
    assert train_base(train, "block5") == want


def test_auto_follows_the_registry_and_never_loops():
    assert train_base("auto", "last:2") == "last:2"
    with pytest.raises(ValueError, match="'auto' needs the backbone's top block"):
        train_base("auto", "auto")


@pytest.mark.parametrize("train,match", [
    ("", "'' is not valid; use none, all, auto"), ("from:", "'from:' is not valid"), ("a:b", "'a:b' is not valid"),
    ("last:-1", "N must be a positive integer"), ("last:²", "N must be a positive integer"), (3, "not a string"),
])
def test_bad_train_values(train, match):
    with pytest.raises(ValueError, match=match):
        train_base(train, "block5")


def test_batchnorm_mode_defaults_to_inference_unless_everything_trains():
    rows = [{"name": "a", "epochs": 1, "learning_rate": 1e-3, "train": "none"},
            {"name": "b", "epochs": 1, "learning_rate": 1e-3, "train": "auto"},
            {"name": "c", "epochs": 1, "learning_rate": 1e-3, "train": "all"},
            {"name": "d", "epochs": 1, "learning_rate": 1e-3, "train": "all", "base_inference": True},
            {"name": "e", "epochs": 0, "learning_rate": 1, "train": "last:2", "base_inference": False}]
    assert resolve_phases(phase_configs(rows), "conv5") == [
        Phase("a", 1, 1e-3, "none", True), Phase("b", 1, 1e-3, "from:conv5", True), Phase("c", 1, 1e-3, "all", False),
        Phase("d", 1, 1e-3, "all", True), Phase("e", 0, 1.0, "last:2", False)]
    # PhaseConfig objects are accepted as they are
    assert phase_configs([PhaseConfig("a", 1, 0.1, "none")]) == [PhaseConfig("a", 1, 0.1, "none", None)]


def test_presets_keep_their_phases():
    cfg = RecipeConfig()
    want = {
        "feature_extraction": ([Phase("feature_extraction", 6, 1e-3, "none", True)], True),
        "fine_tune": ([Phase("feature_extraction", 6, 1e-3, "none", True),
                       Phase("fine_tune", 3, 1e-4, "from:block5", True)], True),
        "full": ([Phase("full", 6, 1e-3, "all", False)], True),
        "scratch": ([Phase("scratch", 6, 1e-3, "all", False)], False),
        "seed_tutorial": ([Phase("seed_tutorial", 6, 1e-3, "none", True)], True),
        "gradual_unfreeze": ([Phase("feature_extraction", 6, 1e-3, "none", True),
                              *(Phase(f"unfreeze_{k}", 3, 1e-4, f"from:block{6 - k}", True) for k in (1, 2, 3))], True),
    }
    assert set(PRESETS) == set(want)
    for name, (phases, pretrained) in want.items():
        recipe = build_recipe(dataclasses.replace(cfg, name=name), "block5")
        assert (recipe.name, recipe.phases, recipe.pretrained) == (name, phases, pretrained)
    # fine_tune unfreezing everything keeps BatchNorm in inference mode (unlike `full`)
    assert make_phases("fine_tune", 1, 1e-3, 1, None, "all")[1] == Phase("fine_tune", 1, 1e-4, "all", True)


def test_a_phase_list_replaces_the_preset():
    rows = [{"name": "head", "epochs": 2, "learning_rate": 1e-3, "train": "none"},
            {"name": "rest", "epochs": 1, "learning_rate": 1e-5, "train": "all"}]
    recipe = build_recipe(RecipeConfig(phases=rows, optimizer="sgd", cache="off"), "block5")
    assert recipe.name == "custom" and recipe.pretrained and (recipe.optimizer, recipe.cache) == ("sgd", "off")
    assert [(p.name, p.epochs, p.train_base, p.base_inference) for p in recipe.phases] == [
        ("head", 2, "none", True), ("rest", 1, "all", False)]
    assert build_recipe(RecipeConfig(name="gradual.v2", phases=rows), "block5").name == "gradual.v2"
    with pytest.raises(KbenchError, match="recipe.name 'scratch' is a preset, but recipe.phases replaces"):
        build_recipe(RecipeConfig(name="scratch", phases=rows), "block5")
    with pytest.raises(KbenchError, match=r"recipe.fine_tune_epochs=5 would have no effect"):
        build_recipe(RecipeConfig(phases=rows, fine_tune_epochs=5), "block5")


def test_unknown_preset_lists_the_presets():
    with pytest.raises(KbenchError, match="recipe.name 'finetune' is not a recipe preset; choose one of: "
                                          "feature_extraction, fine_tune, full, scratch, seed_tutorial"):
        build_recipe(RecipeConfig(name="finetune"), "block5")


def test_a_new_preset_is_one_table_row(monkeypatch):
    """What adding a named recipe to kbench/recipes/presets.py gives: the config accepts it
    and the recipe runs its phases."""
    monkeypatch.setitem(PRESETS, "head_then_all", Preset(lambda c: [
        phase("head", c.epochs, c.learning_rate, "none"), phase("all", c.fine_tune_epochs, c.learning_rate / 100, "all")]))
    cfg = parse(["--recipe.name", "head_then_all", "--recipe.epochs", "2"])
    recipe = build_recipe(cfg.recipe, "block5")
    assert recipe.name == "head_then_all"
    assert recipe.phases == [Phase("head", 2, 1e-3, "none", True), Phase("all", 3, 1e-5, "all", False)]


def test_optimizers_table():
    import keras

    from kbench.recipes import OPTIMIZERS, make_optimizer

    made = {name: make_optimizer(name, 0.5, 0.01, 0.7) for name in OPTIMIZERS}
    assert {n: type(o).__name__ for n, o in made.items()} == {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD",
                                                             "rmsprop": "RMSprop"}
    assert all(float(keras.ops.convert_to_numpy(o.learning_rate)) == 0.5 for o in made.values())
    assert made["sgd"].momentum == 0.7 and made["adam"].weight_decay == 0.01
    assert make_optimizer("adam", 0.1).weight_decay is None and make_optimizer("adamw", 0.1).weight_decay == 0.004
    with pytest.raises(KbenchError, match="unknown optimizer 'lamb'; choose one of: adam, adamw, sgd, rmsprop"):
        make_optimizer("lamb", 0.1)


def test_every_exported_name_resolves_from_the_package():
    import kbench.recipes
    from kbench.recipes import apply_phase, cache_cut, make_optimizer

    assert all(getattr(kbench.recipes, name) is not None for name in dir(kbench.recipes))
    assert (apply_phase.__module__, cache_cut.__module__, make_optimizer.__module__) == (
        "kbench.recipes.freezing", "kbench.recipes.freezing", "kbench.recipes.optimizers")
    with pytest.raises(AttributeError, match="no_such_name"):
        kbench.recipes.no_such_name  # noqa: B018

