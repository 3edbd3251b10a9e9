"""Recipes: what trains when. A recipe is a list of phases (data a user can write in
YAML as ``recipe.phases``); the named recipes are presets.

* :mod:`~kbench.recipes.phases`: Phase, PhaseConfig, Recipe, their checks, build_recipe (keras-free).
* :mod:`~kbench.recipes.presets`: the named recipes as a table (keras-free).
* :mod:`~kbench.recipes.freezing`: trainable sets per phase, the frozen-variable audit, cache cuts.
* :mod:`~kbench.recipes.optimizers`: the optimizers as a table (keras-free at import).

Public names resolve lazily, so importing a keras-free module here imports no keras.
"""

from kbench import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["CACHE_MODES", "CUSTOM_LABEL", "PHASE_KEYS", "Phase", "PhaseConfig", "Recipe", "build_recipe",
                     "make_phases", "phase_configs", "recipe_label", "resolve_phases", "train_base"],
                    "kbench.recipes.phases"),
    **dict.fromkeys(["PRESETS", "PRESET_KEYS", "Preset"], "kbench.recipes.presets"),
    **dict.fromkeys(["apply_phase", "cache_cut", "check_frozen_unchanged", "check_train_layers", "count_params",
                     "first_trainable_index", "frozen_variables", "numbered_blocks", "snapshot_frozen",
                     "training_bn_layers", "training_mode_layers"], "kbench.recipes.freezing"),
    **dict.fromkeys(["OPTIMIZERS", "OptimizerSpec", "make_optimizer"], "kbench.recipes.optimizers"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
