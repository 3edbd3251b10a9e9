"""Trainer: process set-up (:mod:`~kbench.trainer.setup`), the phase loop on
``keras.Model.fit`` (:mod:`~kbench.trainer.trainer`, one phase in
:mod:`~kbench.trainer.phase`), the phase plan (:mod:`~kbench.trainer.plan`) and run
state (:mod:`~kbench.trainer.state`) as data,
its callbacks, checkpoints and exact resume, the LR finder (:mod:`~kbench.trainer.lr_finder`), best-epoch tracking (keras-free
:mod:`~kbench.trainer.best`), the frozen-prefix feature cache, evaluation and the run
folder's results, and weight averaging (EMA, SWA: :mod:`~kbench.trainer.averaging`).

Public names resolve lazily, so importing a keras-free module here imports no keras.
"""

from kbench import lazy_exports

_EXPORTS = {
    "Trainer": "kbench.trainer.trainer",
    **dict.fromkeys(["check_precision", "setup_process"], "kbench.trainer.setup"),
    **dict.fromkeys(["FitRun", "ResumePoint", "TrainerState"], "kbench.trainer.state"),
    **dict.fromkeys(["PhasePlan", "phase_epochs", "plan_phases"], "kbench.trainer.plan"),
    **dict.fromkeys(["MONITORS", "BestTracker"], "kbench.trainer.best"),
    "PhaseRun": "kbench.trainer.phase",
    "LoopTools": "kbench.trainer.loop",
    **dict.fromkeys(["Averaging", "recalibrate_bn"], "kbench.trainer.averaging"),
    "Evaluator": "kbench.trainer.evaluate",
    "FeatureCache": "kbench.trainer.cache",
    **dict.fromkeys(["LRFindResult", "lr_find"], "kbench.trainer.lr_finder"),
    **dict.fromkeys(["Recipe", "make_optimizer"], "kbench.recipes"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
