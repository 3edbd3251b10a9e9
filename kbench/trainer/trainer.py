"""The Lightning-style :class:`Trainer`, built on ``keras.Model.compile/fit/evaluate``.

``fit`` runs a recipe's phases in order (:class:`~kbench.trainer.phase.PhaseRun`: sets
what trains, recompiles, ``Model.fit`` with epochs numbered across phases, checks that
frozen variables are bit-identical), then tests the best epoch's weights and writes the
run folder. Frozen-prefix cache: :mod:`kbench.trainer.cache`. Data parallelism:
:mod:`kbench.trainer.replicas`. The parts: run position in a
:class:`~kbench.trainer.state.TrainerState`, loop helpers in
:class:`~kbench.trainer.loop.LoopTools`, evaluation in an
:class:`~kbench.trainer.evaluate.Evaluator`, resume and interrupts in
:mod:`kbench.trainer.resume`.

Order of set-up: :func:`~kbench.trainer.setup.setup_process` (dtype policy, seeds,
data-parallel engine) must come before the model is built. ``Trainer(...)`` calls it
unless ``process_setup=False``, so a library user builds the Trainer first, then the
model; :func:`kbench.run.run` calls ``setup_process`` itself.
"""

from __future__ import annotations

import os
import time

from rich.console import Console

from kbench import KbenchError, backend
from kbench.data import DataModule
from kbench.data.external import as_datamodule, data_notes, prepare_data
from kbench.models import TransferModel
from kbench.recipes import Recipe, check_train_layers
from kbench.recipes.layerwise import check_lr_mult
from kbench.trainer import checkpoint, replicas
from kbench.trainer.averaging import Averaging
from kbench.trainer.best import BestTracker
from kbench.trainer.cache import FeatureCache
from kbench.trainer.callbacks import NonFiniteLoss, TrainingInterrupted
from kbench.trainer.evaluate import Evaluator
from kbench.trainer.loggers import Tracking
from kbench.trainer.loop import LoopTools
from kbench.trainer.phase import PhaseRun
from kbench.trainer.plan import PhasePlan, check_schedules, plan_phases, should_run
from kbench.trainer.profile import RunProfile
from kbench.trainer.results import make_run_dir, summary_table, write_results
from kbench.trainer.resume import find_resume_point, on_interrupt, on_non_finite, restore_best, restore_run
from kbench.trainer.setup import check_precision, setup_process
from kbench.trainer.state import FitRun, ResumePoint, TrainerState
from kbench.trainer.tracking import check_loggers


class Trainer:
    """Runs recipes on a :class:`~kbench.models.TransferModel` and a :class:`~kbench.data.DataModule`.

    The parameters up to ``checkpoint_every_n_steps`` are the fields of
    :class:`kbench.config.TrainerConfig`, by the same names (``Trainer(**vars(cfg.trainer))``).

    Args:
        max_epochs: cap on the total epochs over all phases (None = the recipe's sum).
        max_steps: cap on total optimizer steps (-1 = none).
        limit_train_batches, limit_val_batches, limit_test_batches: int = batches
            per epoch, float = fraction (1.0 = all).
        fast_dev_run: one batch of train/val/test per phase, one epoch per phase.
        precision: ``auto`` (``mixed_bfloat16`` where the device has native bfloat16,
            else ``float32``: :func:`kbench.backend.resolve_precision`), ``float32``,
            ``mixed_bfloat16`` or ``mixed_float16`` (Keras dtype policy).
        jit_compile: passed to ``Model.compile`` (``"auto"``, True, False).
        seed: seeds Python, NumPy, the backend and the data order.
        deterministic: ask the backend for deterministic kernels.
        default_root_dir: parent folder of the run folders.
        name: run name; the run folder is ``<default_root_dir>/<name>-<timestamp>``.
        enable_progress_bar: rich progress bars and per-epoch lines.
        inference_batches: batches timed for inference images/s (0 = skip).
        enable_checkpointing: write ``checkpoints/epoch-NNNN`` after every epoch (off: the
            best weights in memory only).
        monitor: metric that picks the best epoch (``val_accuracy``, ``val_loss``,
            ``accuracy``, ``loss``); the best epoch's weights are tested and saved.
        save_top_k: best epoch checkpoints kept besides the last one.
        early_stopping_patience: end a phase after this many epochs without a
            better ``monitor`` (None = never).
        checkpoint_every_n_steps: also write a position checkpoint every N
            optimizer steps inside an epoch (None = only after each epoch and at
            a signal); resuming from one is exact.
        loggers: experiment trackers from :data:`~kbench.trainer.tracking.LOGGERS` (``csv``
            always on; ``tensorboard``, ``mlflow``: see :mod:`kbench.trainer.tracking`).
        profile: True/``"trace"``: time breakdown in results (:mod:`kbench.trainer.profile`).
        strategy, devices, lr_scaling: data parallelism (:mod:`kbench.trainer.replicas`).
        callbacks: extra ``keras.callbacks.Callback`` objects for every phase.
        console: where progress and log lines go (default: a new rich Console).
        process_setup: call :func:`~kbench.trainer.setup.setup_process` with
            ``precision``, ``seed`` and ``deterministic`` here (dtype policy,
            backend environment, seeds): then build the Trainer *before* the
            model. False when the caller did it already (``kbench.run``).

    Attributes:
        state: the :class:`~kbench.trainer.state.TrainerState` of the last ``fit``.
        history: its ``metrics.csv`` rows; ``tracker``: its best-epoch tracker.
        results: the last ``fit``'s ``results.json`` dict.
        precision: the resolved dtype policy; ``precision_requested``: as given.

    Raises:
        KbenchError: unknown precision, monitor or logger (or a logger's package missing),
            ``checkpoint_every_n_steps`` < 1.
    """

    def __init__(self, max_epochs: int | None = None, max_steps: int = -1,
                 limit_train_batches: int | float = 1.0, limit_val_batches: int | float = 1.0,
                 limit_test_batches: int | float = 1.0, fast_dev_run: bool = False,
                 precision: str = "float32", jit_compile: bool | str = "auto", seed: int = 42,
                 deterministic: bool = True, default_root_dir: str = "runs", name: str = "kbench",
                 enable_progress_bar: bool = True, inference_batches: int = 10, enable_checkpointing: bool = True,
                 monitor: str = "val_accuracy", save_top_k: int = 1, early_stopping_patience: int | None = None,
                 checkpoint_every_n_steps: int | None = None, loggers: list[str] | None = None,
                 profile: bool | str = False, strategy: str = "auto", devices: int | list | None = None,
                 lr_scaling: str = "none", callbacks: list | None = None,
                 console: Console | None = None, process_setup: bool = True):
        self.precision_requested, self.precision = precision, check_precision(precision)
        if checkpoint_every_n_steps is not None and checkpoint_every_n_steps < 1:
            raise KbenchError(f"checkpoint_every_n_steps={checkpoint_every_n_steps} must be >= 1 (or null for "
                              "checkpoints only after each epoch)")
        self.max_epochs, self.max_steps, self.fast_dev_run = max_epochs, max_steps, fast_dev_run
        self.checkpoint_every_n_steps, self.seed = checkpoint_every_n_steps, seed
        self.callbacks = list(callbacks or [])
        self.loggers = check_loggers(loggers)
        self.default_root_dir, self.name, self.enable_checkpointing = default_root_dir, name, enable_checkpointing
        self.tools = LoopTools(console or Console(), {"train": limit_train_batches, "val": limit_val_batches,
                                                      "test": limit_test_batches},
                               fast_dev_run, jit_compile, enable_progress_bar)
        self.evaluator = Evaluator(self.tools, inference_batches)
        self.profiler = RunProfile(profile, self.tools.log)
        self._tracker_args = (monitor, save_top_k, early_stopping_patience)
        self.lr_scaling = replicas.check_lr_scaling(lr_scaling)
        self.state = TrainerState(BestTracker(*self._tracker_args))
        self.run_dir: str | None = None
        self.results: dict = {}
        if process_setup:
            setup_process(precision, seed, deterministic, strategy, devices)

    @property
    def history(self) -> list[dict]:
        """``metrics.csv`` rows (dicts keyed by :data:`~kbench.trainer.callbacks.CSV_FIELDS`) of the last fit."""
        return self.state.history

    @property
    def tracker(self) -> BestTracker:
        """The best-epoch tracker of the last fit."""
        return self.state.tracker

    def make_run_dir(self) -> str:
        """Create this run's folder (see :func:`kbench.trainer.results.make_run_dir`) and return it."""
        self.run_dir = replicas.follower_settings(self) or make_run_dir(self.default_root_dir, self.name)
        return self.run_dir

    # ------------------------------------------------------------ fit
    def fit(self, model: TransferModel, datamodule, recipe: Recipe, config: dict | None = None,
            ckpt_path: str | None = None) -> dict:
        """Train ``model`` with ``recipe``, then test it and write the run folder.

        ``datamodule``: a :class:`~kbench.data.DataModule` (e.g. from ``kbench.data.from_arrays``
        / ``from_pipelines``), or NumPy ``(x, y)``, a PyDataset, a tf.data.Dataset or a torch
        DataLoader (:func:`kbench.data.external.as_datamodule`). Class weights weight the
        training loss only.

        Writes ``config.yaml`` (when ``config`` is given), ``metrics.csv``,
        ``checkpoints/``, ``results.json`` and ``model.keras`` into :attr:`run_dir` (and the
        experiment trackers' files, see :mod:`kbench.trainer.tracking`).
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
        self.profiler.start()
        datamodule = as_datamodule(datamodule, model.class_names, self.seed)
        datamodule.setup()
        self.check_recipe(model, datamodule, recipe)  # every phase's layers and warm-up, before any trains
        resume = find_resume_point(ckpt_path)
        run = self._start(model, datamodule, recipe, config, resume)
        run.tracking = Tracking(self.loggers, run.run_dir, config, self.state.step if resume else None, self.tools.log)
        plans = plan_phases(run, resume, self.max_epochs, self.fast_dev_run, self._train_batches(model, datamodule),
                            self.tools.log)
        run.averaging = Averaging(recipe, plans, self.tools.log)
        if resume:
            run.averaging.resume(resume.ckpt, resume.saved)
        self.profiler.lap("setup_s", run.cache)
        with run.tracking:  # closes the experiment trackers if anything below raises
            with self.tools.guard:
                try:
                    self._run_phases(run, plans, resume)
                    self.profiler.lap("phases_s", run.cache)
                    outcome = self._test(run, plans)
                    self.profiler.lap("test_s", run.cache)
                except TrainingInterrupted as e:
                    on_interrupt(e, self.state, run, self.enable_checkpointing, self.tools.log)
                    raise
                except NonFiniteLoss as e:
                    on_non_finite(e, self.state, run.run_dir)
            return self._finish(run, outcome, resume, time.perf_counter() - t_start)

    def check_recipe(self, model: TransferModel, datamodule: DataModule, recipe: Recipe) -> None:
        """What can only be checked with the model and the data set up, before anything is
        written: every phase's ``train`` layers and ``lr_mult`` prefixes exist, every
        warm-up is shorter than its phase under this trainer's epoch and batch limits,
        the class weights resolve and the first batch of your own pipelines fits the model
        (:func:`kbench.data.external.prepare_data`); first :func:`~.replicas.begin_fit`.

        Raises:
            KbenchError: names the phase and the bad value (or the bad data).
        """
        replicas.begin_fit(self, datamodule, recipe)
        prepare_data(datamodule, model.image_size, model.num_classes, recipe.mixes)
        check_train_layers(model.base, recipe.phases)
        check_lr_mult([la.name for la in model.base.layers], [la.name for la in model.head], recipe.phases,
                      model.spec.name)
        check_schedules(recipe, self._train_batches(model, datamodule), self.max_epochs, self.fast_dev_run)

    def _train_batches(self, model: TransferModel, datamodule) -> int:
        """Training batches per epoch under ``limit_train_batches``."""
        return len(datamodule.loader("train", model.image_size, shuffle=True, limit_batches=self.tools.limit("train")))

    def _start(self, model: TransferModel, datamodule: DataModule, recipe: Recipe, config: dict | None,
               resume: ResumePoint | None) -> FitRun:
        """Fresh state, the run folder (the checkpoint's on resume), ``config.yaml``,
        the resumed model and history; logs the run's first line."""
        self.state = TrainerState(BestTracker(*self._tracker_args))
        if resume:
            self.run_dir = self.run_dir or resume.run_dir
        run_dir = self.run_dir or self.make_run_dir()
        e2e = model.compose(base_training=None)
        if self.enable_checkpointing:
            checkpoint.check_free_space(run_dir, 3 * checkpoint.estimate_bytes(e2e))
        if config is not None and not resume:
            import yaml

            with open(os.path.join(run_dir, "config.yaml"), "w") as f:
                yaml.safe_dump(config, f, sort_keys=False)
        run = FitRun(model, datamodule, recipe, run_dir, e2e, FeatureCache(model, datamodule, self.tools))
        if resume:
            restore_run(resume, self.state, run)
        self.tools.log(f"[bold]kbench[/] {recipe.name} on {model.spec.name} @ {model.image_size}px, backend "
                       f"{backend.name()}, {len(datamodule.train)} train / {len(datamodule.val)} val / "
                       f"{len(datamodule.test)} test images, run folder {run_dir}"
                       + (f", resuming {resume.where()} from {resume.ckpt}" if resume else ""))
        for line in data_notes(datamodule):
            self.tools.log(line)
        return run

    def _run_phases(self, run: FitRun, plans: list[PhasePlan], resume: ResumePoint | None) -> None:
        """Run every phase not finished before the checkpoint and within the caps."""
        for plan in plans:
            if (resume and resume.finished(plan.index)) or not should_run(plan, self.max_epochs, self.max_steps,
                                                                          self.state.step, self.tools.log):
                continue
            self.state.phases.append(PhaseRun(self, run, plan).execute())
            self.tools.guard.check()

    def _test(self, run: FitRun, plans: list[PhasePlan]) -> dict:
        """Put the SWA average (with SWA) or the best epoch in the model, test it (on the
        last trained phase's cache cut, if any) and time inference; returns
        ``{"tested_epoch", "test", "inference", "swa"}``."""
        last_cut = next((p.cut for p in reversed(plans) if p.epochs), None)
        swa = self._apply_swa(run)
        tested_epoch = self.state.epoch if swa else restore_best(self.state, run, self.enable_checkpointing,
                                                                 self.tools.log)
        test = self.evaluator.test_after_fit(run.model, run.datamodule, run.cache, last_cut)
        return {"tested_epoch": tested_epoch, "test": test, "swa": swa,
                "inference": self.evaluator.inference(run.model, run.datamodule)}

    def _apply_swa(self, run: FitRun) -> dict | None:
        """The SWA average in the model, BatchNormalization recalibrated on the SWA
        phase's training data, validated (see :mod:`kbench.trainer.averaging`);
        None without SWA."""
        avg = run.averaging
        if avg.swa_plan is None:
            return None
        return avg.apply_swa(run.model.keras_model, PhaseRun(self, run, avg.swa_plan).sequences,
                             lambda n, seq: self.evaluator.evaluate_sequence(run.model, n, seq, "swa validation"))

    def _finish(self, run: FitRun, outcome: dict, resume: ResumePoint | None, elapsed_s: float) -> dict:
        """Save ``model.keras``, write ``results.json``, print the summary table."""
        model_path = os.path.join(run.run_dir, "model.keras")
        run.model.compose(base_training=None).save(model_path)
        tracker = self.state.tracker
        self.results = write_results(run.run_dir, model=run.model, datamodule=run.datamodule, recipe=run.recipe,
                                     trainer=self, phases=self.state.phases, test=outcome["test"],
                                     inference=outcome["inference"], cache_time_s=run.cache.seconds,
                                     model_path=model_path, total_time_s=elapsed_s,
                                     extra={"tested_epoch": outcome["tested_epoch"], "monitor": tracker.monitor,
                                            "best_epoch": tracker.best_epoch,
                                            "best_monitor_value": tracker.best_value,
                                            "resumed_from": os.path.basename(resume.ckpt) if resume else None,
                                            "class_weight": run.datamodule.class_weights(),
                                            "cache_memory_mb": run.cache.peak_mb,
                                            "parallel": replicas.summary(run.datamodule.batch_size, self.lr_scaling),
                                            **run.averaging.results(outcome["swa"]), **self.profiler.results("save_s")})
        run.tracking.finish(self.results, self.state.epoch, [os.path.join(run.run_dir, "results.json"), model_path])
        self.tools.console.print(summary_table(self.results, self.history))
        self.profiler.print_table(self.results, self.tools.console)
        return self.results

    # ------------------------------------------------------------ evaluation
    def validate(self, model: TransferModel, datamodule: DataModule) -> dict:
        """Loss and top-1 accuracy of the end-to-end model on the validation split."""
        return self.evaluator.evaluate(model, datamodule, "val")

    def test(self, model: TransferModel, datamodule: DataModule) -> dict:
        """Loss and top-1 accuracy of the end-to-end model on the test split."""
        return self.evaluator.evaluate(model, datamodule, "test")

    def predict(self, model: TransferModel, datamodule: DataModule, split: str = "test"):
        """Class probabilities ``float32 (N, num_classes)`` for ``split``."""
        return self.evaluator.predict(model, datamodule, split)

    def measure_inference(self, model: TransferModel, datamodule: DataModule) -> dict:
        """End-to-end inference images/s on real test images (2 warm-up batches excluded)."""
        return self.evaluator.inference(model, datamodule)


__all__ = ["Trainer"]
