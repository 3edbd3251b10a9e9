"""Trainer: the phase loop on ``keras.Model.fit`` (:mod:`~kbench.trainer.trainer`), its
callbacks, checkpoints and exact resume, best-epoch tracking (keras-free
:mod:`~kbench.trainer.best`), the frozen-prefix feature cache, evaluation and the run
folder's results.

Public names resolve lazily, so importing a keras-free module here imports no keras.
"""

from kbench import lazy_exports

_EXPORTS = {"Trainer": "kbench.trainer.trainer", "MONITORS": "kbench.trainer.best",
            "Recipe": "kbench.recipes.phases", "make_optimizer": "kbench.recipes.phases"}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
