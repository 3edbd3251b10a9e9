"""The Lightning-style :class:`Trainer`, built on ``keras.Model.compile/fit/evaluate``.

``fit`` runs a recipe's phases in order. For each phase it sets what is
trainable, prints parameter counts, recompiles, trains with ``Model.fit`` (epochs
numbered continuously across phases), then checks that every frozen variable is
bit-identical to its value before the phase.

Frozen-prefix cache (:mod:`kbench.trainer.cache`): a phase whose frozen bottom is in
inference mode, without augmentation, trains ``suffix = base[cut:] + head`` on
precomputed features; the suffix shares the end-to-end model's variables.

Keras cannot do the per-phase bookkeeping itself (freezing, recompiling,
feature caching), so that loop lives here; each phase's epochs are plain
``Model.fit``.
"""

from __future__ import annotations

import math
import os
import time

import keras
import numpy as np
from rich.console import Console

from kbench import PRECISIONS, KbenchError, backend
from kbench.data.module import BatchSequence, DataModule
from kbench.models.transfer import TransferModel
from kbench.recipes.phases import (
    Phase,
    Recipe,
    apply_phase,
    cache_cut,
    check_frozen_unchanged,
    count_params,
    first_trainable_index,
    make_optimizer,
    snapshot_frozen,
)
from kbench.trainer import checkpoint
from kbench.trainer.cache import FeatureCache
from kbench.trainer.callbacks import (
    GuardCallback,
    MaxStepsStopper,
    MetricsLogger,
    NonFiniteLoss,
    RichProgressBar,
    SignalGuard,
    ThroughputMeter,
    TrainingInterrupted,
)
from kbench.trainer.evaluate import EvaluateMixin
from kbench.trainer.results import make_run_dir, summary_table, write_results
from kbench.trainer.resume import RunStateMixin


class Trainer(RunStateMixin, EvaluateMixin):
    """Runs recipes on a :class:`~kbench.models.TransferModel` and a :class:`~kbench.data.DataModule`.

    Args:
        max_epochs: cap on the total epochs over all phases (None = the recipe's sum).
        max_steps: cap on total optimizer steps (-1 = none).
        limit_train_batches, limit_val_batches, limit_test_batches: int = batches
            per epoch, float = fraction (1.0 = all).
        fast_dev_run: one batch of train/val/test per phase, one epoch per phase.
        precision: ``auto`` (``mixed_bfloat16`` where the device has native bfloat16,
            else ``float32``: :func:`kbench.backend.resolve_precision`), ``float32``,
            ``mixed_bfloat16`` or ``mixed_float16`` (Keras dtype
            policy; set here, before the model is built).
        jit_compile: passed to ``Model.compile`` (``"auto"``, True, False).
        seed: seeds Python, NumPy, the backend and the data order.
        deterministic: ask the backend for deterministic kernels.
        callbacks: extra ``keras.callbacks.Callback`` objects for every phase.
        default_root_dir: parent folder of the run folders.
        name: run name; the run folder is ``<default_root_dir>/<name>-<timestamp>``.
        enable_progress_bar: rich progress bars and per-epoch lines.
        inference_batches: batches timed end to end (after 2 warm-up) for
            inference images/s in ``results.json`` (0 = skip).
        enable_checkpointing: write ``checkpoints/epoch-NNNN`` after every epoch
            (see :mod:`kbench.trainer.checkpoint`); off keeps the best weights in memory only.
        monitor: metric that picks the best epoch (``val_accuracy``, ``val_loss``,
            ``accuracy``, ``loss``); the best epoch's weights are tested and saved.
        save_top_k: best epoch checkpoints kept besides the last one.
        early_stopping_patience: end a phase after this many epochs without a
            better ``monitor`` (None = never).
        checkpoint_every_n_steps: also write a position checkpoint every N
            optimizer steps inside an epoch (None = only after each epoch and at
            a signal); resuming from one is exact.

    Raises:
        KbenchError: unknown precision or monitor, unwritable ``default_root_dir``.
    """

    def __init__(self, max_epochs: int | None = None, max_steps: int = -1,
                 limit_train_batches: int | float = 1.0, limit_val_batches: int | float = 1.0,
                 limit_test_batches: int | float = 1.0, fast_dev_run: bool = False,
                 precision: str = "float32", jit_compile: bool | str = "auto", seed: int = 42,
                 deterministic: bool = True, callbacks: list | None = None, default_root_dir: str = "runs",
                 name: str = "kbench", enable_progress_bar: bool = True, inference_batches: int = 10,
                 enable_checkpointing: bool = True, monitor: str = "val_accuracy", save_top_k: int = 1,
                 early_stopping_patience: int | None = None, checkpoint_every_n_steps: int | None = None,
                 console: Console | None = None):
        if precision not in PRECISIONS:
            raise KbenchError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
        if checkpoint_every_n_steps is not None and checkpoint_every_n_steps < 1:
            raise KbenchError(f"checkpoint_every_n_steps={checkpoint_every_n_steps} must be >= 1 (or null for "
                              "checkpoints only after each epoch)")
        self.checkpoint_every_n_steps = checkpoint_every_n_steps
        self.max_epochs, self.max_steps, self.fast_dev_run = max_epochs, max_steps, fast_dev_run
        self.limits = {"train": limit_train_batches, "val": limit_val_batches, "test": limit_test_batches}
        self.precision_requested = precision
        self.precision, self.jit_compile, self.seed = backend.resolve_precision(precision), jit_compile, seed
        self.callbacks = list(callbacks or [])
        self.default_root_dir, self.name = default_root_dir, name
        self.enable_progress_bar, self.inference_batches = enable_progress_bar, inference_batches
        self.console = console or Console()
        self.run_dir: str | None = None
        self.history: list[dict] = []
        self.results: dict = {}
        self.enable_checkpointing = enable_checkpointing
        self.tracker = checkpoint.BestTracker(monitor, save_top_k, early_stopping_patience)
        self.guard = SignalGuard()
        self._pos: dict = {"phase_index": None, "net": None, "epoch": 0, "step": 0}
        keras.config.set_dtype_policy(self.precision)
        backend.prepare_environment()
        backend.seed_everything(seed, deterministic)

    # ------------------------------------------------------------ helpers
    def _limit(self, split: str):
        return 1 if self.fast_dev_run else self.limits[split]

    def _progress(self, description: str) -> list:
        """Callbacks for every fit/evaluate/predict: progress bar (if enabled) and the
        signal / non-finite-loss guard."""
        bar = [RichProgressBar(self.console, description)] if self.enable_progress_bar else []
        return [*bar, GuardCallback(self.guard)]

    def _log(self, msg: str) -> None:
        self.console.print(msg)

    def make_run_dir(self) -> str:
        """Create this run's folder (see :func:`kbench.trainer.results.make_run_dir`) and return it."""
        self.run_dir = make_run_dir(self.default_root_dir, self.name)
        return self.run_dir

    def _compile(self, model: keras.Model, tm: TransferModel, recipe: Recipe, lr: float) -> None:
        model.compile(optimizer=make_optimizer(recipe.optimizer, lr, recipe.weight_decay, recipe.momentum),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=tm.from_logits),
                      metrics=["accuracy"], jit_compile=self.jit_compile)

    def _phase_epochs(self, phases: list[Phase]) -> list[int]:
        out, left = [], self.max_epochs if self.max_epochs is not None else math.inf
        for p in phases:
            n = 1 if self.fast_dev_run and p.epochs > 0 else p.epochs
            n = int(min(n, left))
            left -= n
            out.append(n)
        return out

    def _cut_for(self, tm: TransferModel, phase: Phase, datamodule: DataModule, recipe: Recipe) -> str | None:
        if recipe.cache == "off" or datamodule.augment or not phase.base_inference:
            return None
        return cache_cut(tm.base, first_trainable_index(tm.base, phase.train_base))

    # ------------------------------------------------------------ API
    def fit(self, model: TransferModel, datamodule: DataModule, recipe: Recipe, config: dict | None = None,
            ckpt_path: str | None = None) -> dict:
        """Train ``model`` with ``recipe``, then test it and write the run folder.

        Writes ``config.yaml`` (when ``config`` is given), ``metrics.csv``,
        ``checkpoints/``, ``results.json`` and ``model.keras`` into :attr:`run_dir`.
        The model that is tested and saved is the one from the best epoch by
        ``monitor`` (``results.json`` names it).

        Args:
            ckpt_path: a run folder or checkpoint folder to resume from: the run
                continues in that run folder from its last epoch checkpoint (same
                phase, epoch, optimizer state, dropout generator state).

        Returns:
            The results dict (also in ``results.json``).

        Raises:
            KbenchError: user errors (data, config, a checkpoint of another run), a
                non-finite loss (the last good checkpoint is kept);
            TrainingInterrupted: SIGINT/SIGTERM (an ``interrupted``
                checkpoint and ``results.json`` are written first);
            RuntimeError: a frozen variable changed during a phase.
        """
        t_start = time.perf_counter()
        datamodule.setup()
        ckpt, state = (checkpoint.find(ckpt_path), None) if ckpt_path else (None, None)
        if ckpt:
            state = checkpoint.load_state(ckpt)
            self.run_dir = self.run_dir or os.path.dirname(os.path.dirname(os.path.abspath(ckpt)))
        run_dir = self.run_dir or self.make_run_dir()
        e2e = model.compose(base_training=None)
        if self.enable_checkpointing:
            checkpoint.check_free_space(run_dir, 3 * checkpoint.estimate_bytes(e2e))
        if config is not None and not ckpt:
            import yaml

            with open(os.path.join(run_dir, "config.yaml"), "w") as f:
                yaml.safe_dump(config, f, sort_keys=False)
        csv_path = os.path.join(run_dir, "metrics.csv")
        epoch, step, phase_info = 0, 0, []
        if state:
            epoch, step, phase_info = self._resume(ckpt, state, model, e2e, datamodule, recipe, csv_path)
        skip = state.get("batches_done", 0) if state else 0
        where = f"in epoch {epoch + 1} after batch {skip}" if skip else f"after epoch {epoch}"
        self._log(f"[bold]kbench[/] {recipe.name} on {model.spec.name} @ {model.image_size}px, backend "
                  f"{backend.name()}, {len(datamodule.train)} train / {len(datamodule.val)} val / "
                  f"{len(datamodule.test)} test images, run folder {run_dir}"
                  + (f", resuming {where} from {ckpt}" if ckpt else ""))
        epochs = self._phase_epochs(recipe.phases)
        cuts = [self._cut_for(model, p, datamodule, recipe) if n else None for p, n in zip(recipe.phases, epochs)]
        cache = FeatureCache(model, datamodule, self)
        cache.plan([c for c in cuts if c])
        self._pos = {"phase_index": None, "net": None, "epoch": epoch, "step": step}
        with self.guard:
            try:
                for i, (phase, n_epochs, cut) in enumerate(zip(recipe.phases, epochs, cuts)):
                    done_before = 0
                    if state and i < state["phase_index"] or (state and i == state["phase_index"]
                                                              and state["phase_done"]):
                        continue
                    resume_at = None
                    if state and i == state["phase_index"]:
                        done_before = state["phase_epochs_done"]
                        resume_at = ckpt if done_before or skip else None
                    if n_epochs - done_before <= 0:
                        if phase.epochs and not done_before:
                            self._log(f"[yellow]skipping phase {phase.name!r}: trainer.max_epochs={self.max_epochs} reached")
                        continue
                    if 0 < self.max_steps <= step:
                        self._log(f"[yellow]skipping phase {phase.name!r}: trainer.max_steps={self.max_steps} reached")
                        continue
                    info = self._run_phase(i, phase, n_epochs, done_before, cut, model, datamodule, recipe, cache,
                                           csv_path, epoch, step, phase_info, resume_at,
                                           skip if resume_at else 0)
                    phase_info.append(info)
                    epoch, step = self._pos["epoch"], self._pos["step"]
                    self.guard.check()
                last_cut = next((c for c, n in zip(reversed(cuts), reversed(epochs)) if n), None)
                tested_epoch = self._restore_best(model, e2e, epoch)
                test = self._test_after_fit(model, datamodule, cache, last_cut)
                inference = self.measure_inference(model, datamodule)
            except TrainingInterrupted as e:
                self._on_interrupt(e, model, recipe, phase_info)
                raise
            except NonFiniteLoss as e:
                self._on_non_finite(e)
        model_path = os.path.join(run_dir, "model.keras")
        model.compose(base_training=None).save(model_path)
        self.results = write_results(run_dir, model=model, datamodule=datamodule, recipe=recipe, trainer=self,
                                     phases=phase_info, test=test, inference=inference,
                                     cache_time_s=cache.seconds, model_path=model_path,
                                     total_time_s=time.perf_counter() - t_start,
                                     extra={"tested_epoch": tested_epoch, "monitor": self.tracker.monitor,
                                            "best_epoch": self.tracker.best_epoch,
                                            "best_monitor_value": self.tracker.best_value,
                                            "resumed_from": os.path.basename(ckpt) if ckpt else None})
        self.console.print(summary_table(self.results, self.history))
        return self.results

    def _run_phase(self, i, phase, n_epochs, done_before, cut, model, datamodule, recipe, cache, csv_path,
                   epoch, step, phase_info, resume_ckpt, skip) -> dict:
        """Run phase ``i`` from epoch ``epoch`` (``done_before`` of its epochs already done; ``skip``
        batches of epoch ``epoch + 1`` already done, per ``resume_ckpt``)."""
        apply_phase(model.base, phase)
        e2e = model.compose(base_training=False if phase.base_inference else None)
        trainable, frozen = count_params(e2e)
        self._log(f"[bold cyan]phase {phase.name}[/]: {n_epochs} epoch(s) at learning rate "
                  f"{phase.learning_rate:g}; trainable params {trainable:,}, non-trainable {frozen:,}"
                  + (f"; frozen-prefix cache at {cut!r}" if cut else "")
                  + (f"; resuming after {done_before} epoch(s)" if done_before else ""))
        self._pos["phase_index"], self._pos["net"] = i, None
        before = snapshot_frozen(e2e)
        t0 = time.perf_counter()
        cache_s = cache.seconds
        if cut:
            train_x, val_x = cache.get("train", cut), cache.get("val", cut) if len(datamodule.val) else None
            _, net = model.split(cut)
            train_seq = BatchSequence(train_x, cache.labels("train"), datamodule.batch_size, None, shuffle=True,
                                      seed=datamodule.seed, limit_batches=self._limit("train"))
            val_seq = (BatchSequence(val_x, cache.labels("val"), datamodule.batch_size, None,
                                     limit_batches=self._limit("val")) if val_x is not None else None)
        else:
            net = e2e
            train_seq = datamodule.loader("train", model.image_size, shuffle=True, limit_batches=self._limit("train"))
            val_seq = (datamodule.loader("val", model.image_size, limit_batches=self._limit("val"))
                       if len(datamodule.val) else None)
        train_seq.epoch = epoch
        self._compile(net, model, recipe, phase.learning_rate)
        if resume_ckpt:
            checkpoint.restore_optimizer(resume_ckpt, net, checkpoint.load_state(resume_ckpt))
        self._pos["net"] = net
        meter = ThroughputMeter(train_seq.batch_sizes(), global_step=step)
        logger = MetricsLogger(csv_path, phase.name, meter)
        start_epoch = epoch - done_before

        def make_state(epoch1: int, logs: dict, stopped: bool) -> dict:
            self._pos.update(epoch=epoch1, step=meter.global_step, batches_done=0)
            return self._state(i, phase, epoch1 - start_epoch, n_epochs, stopped or epoch1 - start_epoch >= n_epochs,
                               model, net, logger.rows, phase_info)

        def make_position_state(epoch0: int, batches_done: int, kind: str) -> dict:
            self._pos.update(epoch=epoch0, step=meter.global_step, batches_done=batches_done)
            return {**self._state(i, phase, epoch0 - start_epoch, n_epochs, False, model, net, logger.rows,
                                  phase_info), "kind": kind, "batches_done": batches_done}

        ckpt_dir = self.run_dir if self.enable_checkpointing else None
        saver = checkpoint.EpochCheckpoint(ckpt_dir, model.keras_model, make_state, self.tracker)
        stepper = checkpoint.StepCheckpoint(ckpt_dir, model.keras_model, make_position_state,
                                            self.checkpoint_every_n_steps, self.guard, meter)
        cbs = [meter, logger, saver, stepper, MaxStepsStopper(meter, self.max_steps), *self._progress(phase.name),
               *self.callbacks]
        t_fit = time.perf_counter()
        try:
            first = epoch
            if skip:  # finish the interrupted epoch: its remaining batches, same order, metrics restored
                tail = train_seq.tail(skip)
                meter.batch_sizes, stepper.offset = tail.batch_sizes(), skip
                net.fit(tail, validation_data=val_seq, epochs=epoch + 1, initial_epoch=epoch, shuffle=False,
                        verbose=0, callbacks=[checkpoint.RestoreMetrics(resume_ckpt, tail[0]), *cbs])
                meter.batch_sizes, stepper.offset = train_seq.batch_sizes(), 0
                train_seq.epoch, first = epoch + 1, epoch + 1
            if first < start_epoch + n_epochs and not (skip and net.stop_training):
                net.fit(train_seq, validation_data=val_seq, epochs=start_epoch + n_epochs, initial_epoch=first,
                        shuffle=False, verbose=0, callbacks=cbs)
        finally:
            self.history.extend(logger.rows)
            self._pos["step"] = meter.global_step
        fit_s = time.perf_counter() - t_fit
        check_frozen_unchanged(e2e, before, phase.name)
        self._pos["epoch"] = epoch + len(logger.rows)
        return {
            "phase": phase.name, "epochs": done_before + len(logger.rows), "learning_rate": phase.learning_rate,
            "trainable_params": trainable, "non_trainable_params": frozen, "cache_cut": cut,
            "wall_time_s": time.perf_counter() - t0, "fit_time_s": fit_s,
            "cache_time_s": cache.seconds - cache_s if cut else 0.0,
            "train_images_per_s": meter.images_per_s, "first_steps_s": meter.first_steps_s,
            "step_time_ms_p50": float(np.percentile(meter.step_times, 50) * 1e3) if meter.step_times else None,
            "step_time_ms_p95": float(np.percentile(meter.step_times, 95) * 1e3) if meter.step_times else None,
            "optimizer_iterations": int(keras.ops.convert_to_numpy(net.optimizer.iterations)),
            "early_stopped": saver.stopped_epoch is not None, "resumed_after_epochs": done_before or None,
        }


__all__ = ["Trainer"]
