"""The plan of a fit: for each phase of the recipe (any number, any order of train
scopes) how many epochs it runs after the trainer's caps, on which frozen-prefix
cache cut, and where a resumed run picks it up.

A :class:`PhasePlan` is fixed before training starts; the phase runner
(:class:`~kbench.trainer.phase.PhaseRun`) executes one, the feature cache is told
every cut up front (the shallowest one is computed from images, deeper ones from it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kbench.data.augment_policy import cache_off_reason
from kbench.recipes import Phase, cache_cut, first_trainable_index, training_mode_layers
from kbench.recipes.policy import schedule_updates
from kbench.trainer.state import FitRun, ResumePoint


@dataclass(frozen=True)
class PhasePlan:
    """One recipe phase as this process runs it.

    Attributes:
        index: position in the recipe's phase list (0-based).
        phase: the :class:`~kbench.recipes.Phase`.
        epochs: epochs the phase runs in all (its own, capped by ``max_epochs``
            and ``fast_dev_run``).
        cut: base layer whose output is the frozen-prefix cache (None: train end
            to end on images).
        done_before: epochs of the phase finished before this process (resume).
        resume_ckpt: checkpoint whose optimizer state (and, with ``skip``, metric
            accumulators) the phase continues from.
        skip: batches of the phase's next epoch finished before (a position
            checkpoint): that epoch is finished first, with its remaining batches.
        updates, warmup: optimizer updates of the whole phase and of its warm-up
            (:func:`~kbench.recipes.policy.schedule_updates`); the schedule spans them.
        found_lr: the learning rate the LR finder found for a ``learning_rate: auto``
            phase before the checkpoint (reused, not swept again).
    """

    index: int
    phase: Phase
    epochs: int
    cut: str | None = None
    done_before: int = 0
    resume_ckpt: str | None = None
    skip: int = 0
    updates: int = 0
    warmup: int = 0
    found_lr: float | None = None


def phase_epochs(phases: list[Phase], max_epochs: int | None, fast_dev_run: bool) -> list[int]:
    """Epochs each phase runs: its own (1 with ``fast_dev_run``), while the total
    stays within ``max_epochs`` (None = no cap); later phases get what is left."""
    out, left = [], max_epochs if max_epochs is not None else math.inf
    for p in phases:
        n = 1 if fast_dev_run and p.epochs > 0 else p.epochs
        n = int(min(n, left))
        left -= n
        out.append(n)
    return out


def augmentation_blocks_cache(run: FitRun) -> str | None:
    """Why the run's augmentation rules the frozen-prefix cache out (None: it does not;
    a flip alone is cached as two views): see :func:`kbench.data.augment_policy.cache_off_reason`."""
    return cache_off_reason(getattr(run.datamodule, "image_ops", {"augment": run.datamodule.augment}),
                            run.recipe.targets)


def cut_for(run: FitRun, phase: Phase) -> str | None:
    """The frozen-prefix cache cut of ``phase``: the deepest bottleneck below its
    lowest trainable layer (None: recipe cache ``off``, an augmentation other than a
    flip alone (:func:`augmentation_blocks_cache`), your own pipelines, or a backbone
    not in inference mode (``bn: train``) with a layer below the cut that behaves
    differently in training mode, such as Dropout: see
    :func:`~kbench.recipes.training_mode_layers`)."""
    if run.recipe.cache == "off" or not run.datamodule.deterministic or augmentation_blocks_cache(run):
        return None
    base = run.model.base
    cut = cache_cut(base, first_trainable_index(base, phase.train_base))
    if cut and not phase.base_inference and training_mode_layers(base, cut):
        return None
    return cut


def check_schedules(recipe, train_batches: int, max_epochs: int | None, fast_dev_run: bool) -> None:
    """Refuse, before anything is written, a warm-up that is not shorter than its phase
    (the phase's updates need the training batches per epoch, known once the data are set up).

    Raises:
        KbenchError: names the phase and both counts.
    """
    for phase, n in zip(recipe.phases, phase_epochs(recipe.phases, max_epochs, fast_dev_run)):
        if n:
            schedule_updates(phase, train_batches, n, recipe.accumulate_steps)


def plan_phases(run: FitRun, resume: ResumePoint | None, max_epochs: int | None,
                fast_dev_run: bool, train_batches: int = 1, log=None) -> list[PhasePlan]:
    """One :class:`PhasePlan` per phase of ``run.recipe`` (a phase with 0 epochs gets
    no cut); declares the cuts to ``run.cache``.

    Args:
        train_batches: training batches per epoch (after ``limit_train_batches``).
        log: where to say why augmentation switched the cache off (``recipe.cache: auto``).

    Raises:
        KbenchError: a phase's warm-up is not shorter than the phase (before any training).
    """
    epochs = phase_epochs(run.recipe.phases, max_epochs, fast_dev_run)
    accumulate = run.recipe.accumulate_steps
    plans = [PhasePlan(i, phase, n, cut_for(run, phase) if n else None, **(resume.plan_fields(i) if resume else {}),
                       **dict(zip(("updates", "warmup"), schedule_updates(phase, train_batches, n, accumulate)
                                  if n else (0, 0))))
             for i, (phase, n) in enumerate(zip(run.recipe.phases, epochs))]
    run.cache.plan([p.cut for p in plans if p.cut])
    reason = augmentation_blocks_cache(run) if run.recipe.cache == "auto" else None
    if reason and log:
        log(f"[yellow]{reason}")
    return plans


def should_run(plan: PhasePlan, max_epochs: int | None, max_steps: int, step: int, log) -> bool:
    """False (saying why with ``log`` where the recipe wanted epochs) when ``max_epochs`` or
    ``max_steps`` leaves phase ``plan`` nothing to do, ``step`` optimizer steps into the run."""
    if plan.epochs - plan.done_before <= 0:
        if plan.phase.epochs and not plan.done_before:
            log(f"[yellow]skipping phase {plan.phase.name!r}: trainer.max_epochs={max_epochs} reached")
        return False
    if 0 < max_steps <= step:
        log(f"[yellow]skipping phase {plan.phase.name!r}: trainer.max_steps={max_steps} reached")
        return False
    return True


__all__ = ["PhasePlan", "augmentation_blocks_cache", "check_schedules", "cut_for", "phase_epochs", "plan_phases",
           "should_run"]
