"""Recipes: what trains when. A recipe is a list of phases (data a user can write in
YAML); the named recipes are presets; freezing, the frozen-variable audit and the
optimizers live here.

Public names resolve lazily, so importing a keras-free module here imports no keras.
"""

from kbench import lazy_exports

_EXPORTS = dict.fromkeys(
    ["OPTIMIZERS", "RECIPES", "Phase", "Recipe", "apply_phase", "build_recipe", "cache_cut", "check_frozen_unchanged",
     "count_params", "first_trainable_index", "frozen_variables", "make_optimizer", "make_phases", "snapshot_frozen"],
    "kbench.recipes.phases")
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
