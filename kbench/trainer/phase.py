"""One phase of a fit, for any phase of any recipe.

:meth:`PhaseRun.execute` sets what trains (:func:`kbench.recipes.apply_phase`),
picks the data (the frozen-prefix cache at the phase's cut, which moves with the
phase's lowest trainable layer, or images end to end), compiles a fresh
optimizer (or restores a checkpoint's), runs ``Model.fit`` over the phase's
epochs (numbered on from the run's epoch count; a resumed position checkpoint's
epoch is finished first with its remaining batches), audits that every frozen
variable is bit-identical afterwards, drops the cached features the phase made
stale, and returns the phase's ``results.json`` row (with the audit: how many
variables it compared, and which BatchNormalization layers could update their
moving statistics).

A class rather than one function because the phase's checkpoint callbacks call
back into it for the trainer state they save (:meth:`PhaseRun.epoch_state`,
:meth:`PhaseRun.position_state`), and that state needs the phase's plan, model
and logger; each step is a short method.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import keras
import numpy as np

from kbench import backend
from kbench.data import BatchSequence, TwoViewSequence
from kbench.recipes import apply_phase, check_frozen_unchanged, count_params, first_trainable_index, snapshot_frozen
from kbench.recipes.freezing import training_bn_layers
from kbench.recipes.layerwise import describe, layer_multipliers, variable_multiplier
from kbench.recipes.schedules import phase_learning_rate
from kbench.trainer import checkpoint, lr_finder, replicas
from kbench.trainer.averaging import Averaging
from kbench.trainer.callbacks import LearningRateTrace, MaxStepsStopper, MetricsLogger, ThroughputMeter, current_lr
from kbench.trainer.plan import PhasePlan
from kbench.trainer.state import FitRun

if TYPE_CHECKING:
    from kbench.trainer.trainer import Trainer


class PhaseRun:
    """Runs phase ``plan`` of ``run`` under ``trainer``'s settings, advancing
    ``trainer.state`` (epoch, step, history; the caller appends the returned row
    to ``state.phases``).

    Raises (from :meth:`execute`): what ``Model.fit`` and its callbacks raise
    (:class:`~kbench.trainer.callbacks.TrainingInterrupted`,
    :class:`~kbench.trainer.callbacks.NonFiniteLoss`), ``KbenchError`` for a
    checkpoint that does not fit, ``RuntimeError`` when a frozen variable changed.
    """

    def __init__(self, trainer: Trainer, run: FitRun, plan: PhasePlan):
        self.trainer, self.run, self.plan = trainer, run, plan
        self.state, self.tools = trainer.state, trainer.tools
        self.entry_epoch = self.state.epoch  # global epochs finished when this process starts the phase
        self.start_epoch = self.entry_epoch - plan.done_before  # ... when the phase first started
        self.net: keras.Model | None = None
        self.meter: ThroughputMeter | None = None
        self.logger: MetricsLogger | None = None
        self.saver: checkpoint.EpochCheckpoint | None = None
        self.stepper: checkpoint.StepCheckpoint | None = None
        self.first_trainable = 0  # index of the lowest backbone layer the phase trains
        self.learning_rate: float | None = None  # the phase's peak learning rate, once compiled
        self.multipliers: dict[str, float] = {}  # layer-wise multipliers of trainable layers
        if run.averaging is None:  # a phase run outside Trainer.fit: EMA as the recipe says, no SWA
            run.averaging = Averaging(run.recipe, [])
        self.train_seq = None  # the phase's training batches, once :meth:`data` made them
        self.found_lr: float | None = plan.found_lr  # learning_rate: auto: the LR finder's suggestion

    def execute(self) -> dict:
        """Run the phase; returns its row for ``results.json`` ``phases``."""
        e2e, counts = self.apply()
        before = snapshot_frozen(e2e)
        t0, cache_s = time.perf_counter(), self.run.cache.seconds
        train_seq, val_seq = self.data(e2e)
        self._compile()
        callbacks = self._callbacks(train_seq)
        prof = self.trainer.profiler.phase(self)  # None unless trainer.profile is on
        t_fit = time.perf_counter()
        self._fit(train_seq, val_seq, prof.wrap(callbacks) if prof else callbacks)
        fit_s = time.perf_counter() - t_fit
        audit = {"bn_layers_training": training_bn_layers(e2e),
                 "frozen_variables_checked": check_frozen_unchanged(e2e, before, self.plan.phase.name)}
        self.run.cache.invalidate_from(self.first_trainable)
        self.state.epoch = self.entry_epoch + len(self.logger.rows)
        row = {**self._row(counts, time.perf_counter() - t0, fit_s, self.run.cache.seconds - cache_s), **audit}
        return prof.row(row) if prof else row

    def _configure(self) -> keras.Model:
        """Set what trains; returns the end-to-end model composed for the phase."""
        phase = self.plan.phase
        apply_phase(self.run.model.base, phase)
        self.first_trainable = first_trainable_index(self.run.model.base, phase.train_base)
        return self.run.model.compose(base_training=False if phase.base_inference else None)

    def sequences(self) -> tuple:
        """``(net, train, val)`` as the phase trains them, without training: what it sets
        trainable, the model ``fit`` trains (on the cache cut or end to end) and its data
        (used after the fit, e.g. for SWA's BatchNormalization pass)."""
        train, val = self.data(self._configure())
        return self.net, train, val

    def apply(self) -> tuple[keras.Model, tuple[int, int]]:
        """Set what trains; returns the end-to-end model and (trainable, frozen) counts."""
        phase, plan = self.plan.phase, self.plan
        lr = phase.learning_rate
        lr_text = (f"{lr * replicas.lr_factor(self.trainer.lr_scaling):g}" if not isinstance(lr, str) else "auto (LR finder)" if self.found_lr is None
                   else f"{self.found_lr:g} (auto, found before the interruption)")
        e2e = self._configure()
        trainable, frozen = count_params(e2e)
        self.tools.log(f"[bold cyan]phase {phase.name}[/]: {plan.epochs} epoch(s) at learning rate "
                       f"{lr_text}, schedule {phase.schedule}"
                       + (f" (warm-up {plan.warmup} of {plan.updates} updates)" if plan.warmup else "")
                       + f"; trainable params {trainable:,}, non-trainable {frozen:,}"
                       + (f"; frozen-prefix cache at {plan.cut!r}" if plan.cut else "")
                       + (f"; resuming after {plan.done_before} epoch(s)" if plan.done_before else ""))
        self.state.phase_index, self.state.net = plan.index, None
        return e2e, (trainable, frozen)

    def data(self, e2e: keras.Model) -> tuple:
        """Training and validation sequences (validation None without a val split);
        sets :attr:`net`, the model ``fit`` trains (the suffix above the cut, or ``e2e``),
        and :attr:`train_seq`."""
        run, cut, limit = self.run, self.plan.cut, self.tools.limit
        dm = run.datamodule
        if cut:
            cache = run.cache
            train_x, val_x = cache.get("train", cut), cache.get("val", cut) if len(dm.val) else None
            self.net = run.model.split(cut)[1]
            train = BatchSequence(train_x, cache.labels("train"), dm.batch_size, None, shuffle=True, seed=dm.seed,
                                  limit_batches=limit("train"))
            if dm.augment:  # a flip alone (other augmentation rules the cache out): two views
                train = self._two_views(train_x, train)
            val = (BatchSequence(val_x, cache.labels("val"), dm.batch_size, None, limit_batches=limit("val"))
                   if val_x is not None else None)
        else:
            self.net = e2e
            train = dm.loader("train", run.model.image_size, shuffle=True, limit_batches=limit("train"),
                              targets=run.recipe.targets)
            val = dm.loader("val", run.model.image_size, limit_batches=limit("val")) if len(dm.val) else None
        train.epoch = self.entry_epoch
        self.train_seq = replicas.shard_training(train)
        return train, val

    def _two_views(self, plain, seq: BatchSequence) -> TwoViewSequence:
        """The two-view flip cache's training sequence over ``plain`` and its mirrored
        features (computed now if needed; logs their size)."""
        cache, cut = self.run.cache, self.plan.cut
        mirrored = cache.get("train", cut, mirror=True)
        self.tools.log(f"  two-view flip cache at {cut!r}: {len(plain)} training images x 2 views, "
                       f"{(plain.nbytes + mirrored.nbytes) / 2**20:.1f} MiB (one view {plain.nbytes / 2**20:.1f} MiB)")
        return TwoViewSequence((plain, mirrored), seq.y, seq.batch_size, shuffle=True, seed=seq.seed,
                               limit_batches=self.tools.limit("train"))

    def _compile(self) -> None:
        """A fresh optimizer (the phase's learning-rate schedule, layer-wise multipliers,
        clipping, accumulation, EMA), or the checkpoint's slots."""
        recipe, plan = self.run.recipe, self.plan
        self.learning_rate = self.phase_learning_rate()
        lr = phase_learning_rate(plan.phase, self.learning_rate, plan.updates, plan.warmup, recipe.accumulate_steps)
        self.tools.compile(self.net, self.run.model.from_logits, lr, recipe.optimizer, recipe.weight_decay,
                           recipe.momentum, clip_norm=recipe.clip_norm, accumulate_steps=recipe.accumulate_steps,
                           ema=recipe.ema, multiplier=self._multiplier(), label_smoothing=recipe.label_smoothing,
                           soft_targets=recipe.mixes, steps_per_execution=self.steps_per_execution())
        extras = [f"gradient accumulation {recipe.accumulate_steps} (effective batch size "
                  f"{self.run.datamodule.batch_size * recipe.accumulate_steps})" if recipe.accumulate_steps > 1 else "",
                  f"global-norm clipping at {recipe.clip_norm:g}" if recipe.clip_norm else "",
                  f"EMA momentum {recipe.ema:g}" if recipe.ema else ""]
        if any(extras):
            self.tools.log("  optimizer: " + ", ".join(e for e in extras if e))
        if plan.resume_ckpt:
            saved = checkpoint.load_state(plan.resume_ckpt)
            checkpoint.restore_optimizer(plan.resume_ckpt, self.net, saved)
            self.run.averaging.optimizer_restored(self.net, saved)
        backend.distributed.prepare_model(self.net)  # PyTorch under torchrun: DDP
        self.state.net = self.net

    def steps_per_execution(self) -> int:
        """``tools.steps_per_execution`` for a phase on cached features on JAX or TensorFlow
        without ``max_steps`` or ``checkpoint_every_n_steps`` (both act at one exact batch);
        else 1."""
        t = self.trainer
        ok = self.plan.cut and backend.name() != "torch" and t.max_steps <= 0 and not t.checkpoint_every_n_steps
        return self.tools.steps_per_execution if ok else 1

    def phase_learning_rate(self) -> float:
        """The phase's learning rate: ``phase.learning_rate`` when it is a number; for
        ``learning_rate: auto`` the LR finder's suggestion, found once per phase
        (:func:`kbench.trainer.lr_finder.auto_learning_rate` on :attr:`net` and
        :attr:`train_seq`, so after :meth:`data` and before the optimizer is compiled;
        every model variable is as before afterwards) or, on resume, the value the
        checkpoint recorded (``learning_rate_found`` in its state)."""
        lr = self.plan.phase.learning_rate
        if not isinstance(lr, str):
            return lr * replicas.lr_factor(self.trainer.lr_scaling)
        if self.found_lr is None:
            self.found_lr = lr_finder.auto_learning_rate(self)
        return self.found_lr

    def _multiplier(self):
        """``variable -> learning-rate multiplier`` of the phase's ``layer_decay`` / ``lr_mult``
        (None when it sets neither); logs the multipliers of the trainable layers."""
        phase, m = self.plan.phase, self.run.model
        if not phase.layer_decay and not phase.lr_mult:
            return None
        layers = [*m.base.layers, *m.head]
        mults = layer_multipliers([la.name for la in m.base.layers], [la.name for la in m.head], phase)
        self.multipliers = {la.name: mults[la.name] for la in layers if la.trainable and la.weights}
        self.tools.log(f"  layer-wise learning rates: {describe(self.multipliers)}")
        return variable_multiplier(layers, mults)

    def _callbacks(self, train_seq) -> list:
        """Throughput meter, metrics logger, weight averaging's callbacks around the epoch
        checkpoint (:meth:`~kbench.trainer.averaging.Averaging.callbacks`), step checkpoint,
        step limit, experiment trackers, progress bar and guard, then the trainer's extra callbacks (in that order)."""
        trainer, model, avg = self.trainer, self.run.model, self.run.averaging
        self.meter = ThroughputMeter(train_seq.batch_sizes(), global_step=self.state.step)
        self.logger = MetricsLogger(self.run.csv_path, self.plan.phase.name, self.meter)
        ckpt_dir = self.run.run_dir if trainer.enable_checkpointing else None
        self.saver = checkpoint.EpochCheckpoint(ckpt_dir, model.keras_model, self.epoch_state, self.state.tracker,
                                                arrays=avg.arrays)
        self.stepper = checkpoint.StepCheckpoint(ckpt_dir, model.keras_model, self.position_state,
                                                 trainer.checkpoint_every_n_steps, self.tools.guard, self.meter,
                                                 arrays=avg.arrays)
        trace = LearningRateTrace(self.run.lr_trace_path, self.plan.phase.name, self.meter)
        before, after = avg.callbacks(self.plan, self.start_epoch, model.keras_model)
        tracking = self.run.tracking.callbacks(self.meter, self.logger, trace) if self.run.tracking else []
        return [*replicas.signal_callbacks(self.tools.guard), self.meter, self.logger, trace, *before, self.saver, *after, self.stepper,
                MaxStepsStopper(self.meter, trainer.max_steps), *tracking, *self.tools.callbacks(self.plan.phase.name),
                *trainer.callbacks]

    def _fit(self, train_seq, val_seq, callbacks: list) -> None:
        """``Model.fit`` over the phase's remaining epochs (after the rest of an
        interrupted epoch); the history and step count are kept even on a raise."""
        first, end = self.entry_epoch, self.start_epoch + self.plan.epochs
        try:
            if self.plan.skip:
                self._finish_interrupted_epoch(train_seq, val_seq, callbacks)
                first = self.entry_epoch + 1
            if first < end and not (self.plan.skip and self.net.stop_training):
                self.run.averaging.continue_phase(self.net)
                self.net.fit(train_seq, validation_data=val_seq, epochs=end, initial_epoch=first, shuffle=False,
                             verbose=0, callbacks=callbacks, class_weight=self.run.datamodule.class_weights())
        finally:
            self.state.history.extend(self.logger.rows)
            self.state.step = self.meter.global_step

    def _finish_interrupted_epoch(self, train_seq, val_seq, callbacks: list) -> None:
        """The resumed epoch's remaining batches, in the same order, with the saved
        metric accumulators restored first."""
        epoch, skip = self.entry_epoch, self.plan.skip
        tail = train_seq.tail(skip)
        self.meter.batch_sizes, self.stepper.offset = tail.batch_sizes(), skip
        with self.run.averaging.tail_fit():
            self.net.fit(tail, validation_data=val_seq, epochs=epoch + 1, initial_epoch=epoch, shuffle=False,
                         verbose=0, callbacks=[checkpoint.RestoreMetrics(self.plan.resume_ckpt, tail[0]), *callbacks],
                         class_weight=self.run.datamodule.class_weights())
        self.meter.batch_sizes, self.stepper.offset = train_seq.batch_sizes(), 0
        train_seq.epoch = epoch + 1

    def epoch_state(self, epoch1: int, logs: dict, stopped: bool) -> dict:
        """Trainer state for the checkpoint after global epoch ``epoch1`` (1-based)."""
        done = self._advance(epoch1, 0)
        return self._checkpoint_state(done, stopped or done >= self.plan.epochs)

    def position_state(self, epoch0: int, batches_done: int, kind: str) -> dict:
        """Trainer state for a position checkpoint (``kind`` ``step`` or ``interrupted``)
        after ``batches_done`` batches of global epoch ``epoch0 + 1``."""
        done = self._advance(epoch0, batches_done)
        return {**self._checkpoint_state(done, False), "kind": kind, "batches_done": batches_done}

    def _advance(self, epoch: int, batches_done: int) -> int:
        """Move the run position to ``epoch`` finished epochs plus ``batches_done``
        batches; returns the epochs of this phase finished."""
        s, done = self.state, epoch - self.start_epoch
        s.epoch, s.step, s.batches_done = epoch, self.meter.global_step, batches_done
        s.epochs_done[self.plan.index] = done
        return done

    def _checkpoint_state(self, done: int, phase_done: bool) -> dict:
        """The ``state.json`` trainer state (keys and order: see :mod:`kbench.trainer.checkpoint`)."""
        s, m, plan, trainer = self.state, self.run.model, self.plan, self.trainer
        return {"phase_index": plan.index, "phase": plan.phase.name, "phase_epochs_done": done,
                "phase_epochs": plan.epochs, "phase_done": phase_done, "epoch": s.epoch, "step": s.step,
                "learning_rate": current_lr(self.net), "learning_rate_found": self.found_lr,
                "trainable_layers": [la.name for la in m.base.layers if la.trainable],
                "history": s.history + self.logger.rows, "phases": s.phases, "tracker": s.tracker.to_dict(),
                "class_names": m.class_names, "preprocess": m.preprocess.mode, "backbone": m.spec.name,
                "image_size": m.image_size, "seed": trainer.seed, "backend": backend.name(),
                "precision": trainer.precision, **self.run.averaging.state()}

    def _row(self, counts: tuple[int, int], wall_s: float, fit_s: float, cache_s: float) -> dict:
        """The phase's ``results.json`` row (times in s, throughput in images/s)."""
        plan, meter, steps = self.plan, self.meter, self.meter.step_times
        return {
            "phase": plan.phase.name, "epochs": plan.done_before + len(self.logger.rows),
            "learning_rate": self.learning_rate, "schedule": plan.phase.schedule, "optimizer_updates_planned":
            plan.updates, "warmup_updates": plan.warmup, "layer_multipliers": self.multipliers or None,
            "effective_batch_size": self.run.datamodule.batch_size * self.run.recipe.accumulate_steps,
            "trainable_params": counts[0],
            "non_trainable_params": counts[1], "cache_cut": plan.cut,
            "cache_views": (2 if self.run.datamodule.augment else 1) if plan.cut else None,
            "wall_time_s": wall_s, "fit_time_s": fit_s,
            "cache_time_s": cache_s if plan.cut else 0.0,
            "train_images_per_s": meter.images_per_s, "first_steps_s": meter.first_steps_s,
            "step_time_ms_p50": float(np.percentile(steps, 50) * 1e3) if steps else None,
            "step_time_ms_p95": float(np.percentile(steps, 95) * 1e3) if steps else None,
            "optimizer_iterations": int(keras.ops.convert_to_numpy(self.net.optimizer.iterations)),
            "early_stopped": self.saver.stopped_epoch is not None, "resumed_after_epochs": plan.done_before or None,
            **({"learning_rate_found_by": lr_finder.FOUND_BY} if self.found_lr is not None else {}),
        }


__all__ = ["PhaseRun"]
