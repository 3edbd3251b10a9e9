"""Recipes: what trains when. A recipe is a list of phases (data); the named recipes
are presets; freezing, the frozen-variable audit and the optimizers live here."""

from kbench.recipes.phases import (
    OPTIMIZERS,
    RECIPES,
    Phase,
    Recipe,
    apply_phase,
    cache_cut,
    check_frozen_unchanged,
    count_params,
    first_trainable_index,
    frozen_variables,
    make_optimizer,
    make_phases,
    snapshot_frozen,
)

__all__ = ["OPTIMIZERS", "RECIPES", "Phase", "Recipe", "apply_phase", "cache_cut", "check_frozen_unchanged",
           "count_params", "first_trainable_index", "frozen_variables", "make_optimizer", "make_phases",
           "snapshot_frozen"]
