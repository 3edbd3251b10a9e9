"""The Lightning-style :class:`Trainer`, built on ``keras.Model.compile/fit/evaluate``.

``fit`` runs a recipe's phases in order. For each phase it sets what is
trainable, prints parameter counts, recompiles, trains with ``Model.fit`` (epochs
numbered continuously across phases), then checks that every frozen variable is
bit-identical to its value before the phase.

Frozen-prefix cache: when the bottom of the network is frozen and in inference
mode and there is no random augmentation, the frozen prefix's output is computed
once per split and the phase trains ``suffix = base[cut:] + head`` on it
(:class:`FeatureCache`). The suffix shares its variables with the end-to-end
model, so the result is the same model as the uncached path.

Keras cannot do the per-phase bookkeeping itself (freezing, recompiling,
feature caching), so that loop lives here; each phase's epochs are plain
``Model.fit``.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import keras
import numpy as np
from rich.console import Console

from kbench import KbenchError, backend
from kbench.callbacks import MaxStepsStopper, MetricsLogger, RichProgressBar, ThroughputMeter
from kbench.data import BatchSequence, DataModule
from kbench.models import TransferModel
from kbench.recipes import (
    Phase,
    apply_phase,
    cache_cut,
    check_frozen_unchanged,
    count_params,
    first_trainable_index,
    snapshot_frozen,
)
from kbench.results import summary_table, write_results

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")


@dataclass
class Recipe:
    """A recipe ready to run: phases plus optimizer settings.

    Attributes:
        name: recipe name (see ``kbench.recipes.RECIPES``).
        phases: the :class:`~kbench.recipes.Phase` list, run in order.
        optimizer: one of :data:`OPTIMIZERS`.
        weight_decay: decoupled weight decay (adamw) or L2 factor for others; 0 = off.
        momentum: SGD momentum.
        cache: ``"auto"`` uses the frozen-prefix cache where it is exact; ``"off"`` never.
    """

    name: str
    phases: list[Phase]
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    cache: str = "auto"


def make_optimizer(name: str, lr: float, weight_decay: float = 0.0, momentum: float = 0.9):
    """A fresh Keras optimizer (a new one per phase: Keras recompiles per phase)."""
    wd = weight_decay or None
    if name == "adam":
        return keras.optimizers.Adam(lr, weight_decay=wd)
    if name == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=weight_decay or 0.004)
    if name == "sgd":
        return keras.optimizers.SGD(lr, momentum=momentum, weight_decay=wd)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(lr, weight_decay=wd)
    raise KbenchError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")


class FeatureCache:
    """Outputs of frozen backbone prefixes, per split, computed once.

    The shallowest cut that any phase needs is computed from images; deeper cuts
    are derived from it by running only the layers in between. Arrays are
    ``float32 (N, h, w, c)`` in sample order of the split (never modified).
    """

    def __init__(self, model: TransferModel, datamodule: DataModule, trainer: "Trainer"):
        self.tm, self.dm, self.trainer = model, datamodule, trainer
        self.store: dict[tuple[str, str], np.ndarray] = {}
        self.root_cut: str | None = None
        self.seconds = 0.0

    def _index(self, cut: str) -> int:
        return [layer.name for layer in self.tm.base.layers].index(cut)

    def plan(self, cuts: list[str]) -> None:
        """Declare the cuts the run will need; the shallowest is computed from images."""
        self.root_cut = min(cuts, key=self._index) if cuts else None

    def get(self, split: str, cut: str) -> np.ndarray:
        """Features of ``split`` at the output of base layer ``cut``; adds the time
        spent computing them to :attr:`seconds`."""
        t0 = time.perf_counter()
        out = self._get(split, cut)
        self.seconds += time.perf_counter() - t0
        return out

    def _get(self, split: str, cut: str) -> np.ndarray:
        key = (split, cut)
        if key in self.store:
            return self.store[key]
        root = self.root_cut if self.root_cut and self._index(self.root_cut) <= self._index(cut) else cut
        limit = self.trainer._limit(split)
        if root == cut:
            prefix, _ = self.tm.split(cut)
            seq = self.dm.loader(split, self.tm.image_size, limit_batches=limit)
        else:
            src = self._get(split, root)
            prefix = keras.Model(self.tm.base.get_layer(root).output, self.tm.base.get_layer(cut).output)
            seq = BatchSequence(src, np.zeros(len(src), np.int32), self.dm.batch_size, None)
        bar = self.trainer._progress(f"cache {cut} ({split})")
        feats = prefix.predict(seq, verbose=0, callbacks=bar)
        self.store[key] = np.asarray(feats, dtype=np.float32)
        return self.store[key]

    def labels(self, split: str) -> np.ndarray:
        """Labels aligned with the cached features of ``split`` (limits applied)."""
        s = getattr(self.dm, split)
        n = next(len(v) for (sp, _), v in self.store.items() if sp == split)
        return s.y[:n]


class Trainer:
    """Runs recipes on a :class:`~kbench.models.TransferModel` and a :class:`~kbench.data.DataModule`.

    Args:
        max_epochs: cap on the total epochs over all phases (None = the recipe's sum).
        max_steps: cap on total optimizer steps (-1 = none).
        limit_train_batches, limit_val_batches, limit_test_batches: int = batches
            per epoch, float = fraction (1.0 = all).
        fast_dev_run: one batch of train/val/test per phase, one epoch per phase.
        precision: ``float32``, ``mixed_bfloat16`` or ``mixed_float16`` (Keras dtype
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

    Raises:
        KbenchError: unknown precision, unwritable ``default_root_dir``.
    """

    def __init__(self, max_epochs: int | None = None, max_steps: int = -1,
                 limit_train_batches: int | float = 1.0, limit_val_batches: int | float = 1.0,
                 limit_test_batches: int | float = 1.0, fast_dev_run: bool = False,
                 precision: str = "float32", jit_compile: bool | str = "auto", seed: int = 42,
                 deterministic: bool = True, callbacks: list | None = None, default_root_dir: str = "runs",
                 name: str = "kbench", enable_progress_bar: bool = True, inference_batches: int = 10,
                 console: Console | None = None):
        if precision not in PRECISIONS:
            raise KbenchError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
        self.max_epochs, self.max_steps, self.fast_dev_run = max_epochs, max_steps, fast_dev_run
        self.limits = {"train": limit_train_batches, "val": limit_val_batches, "test": limit_test_batches}
        self.precision, self.jit_compile, self.seed = precision, jit_compile, seed
        self.callbacks = list(callbacks or [])
        self.default_root_dir, self.name = default_root_dir, name
        self.enable_progress_bar, self.inference_batches = enable_progress_bar, inference_batches
        self.console = console or Console()
        self.run_dir: str | None = None
        self.history: list[dict] = []
        self.results: dict = {}
        keras.config.set_dtype_policy(precision)
        backend.prepare_environment()
        backend.seed_everything(seed, deterministic)

    # ------------------------------------------------------------ helpers
    def _limit(self, split: str):
        return 1 if self.fast_dev_run else self.limits[split]

    def _progress(self, description: str) -> list:
        return [RichProgressBar(self.console, description)] if self.enable_progress_bar else []

    def _log(self, msg: str) -> None:
        self.console.print(msg)

    def make_run_dir(self) -> str:
        """Create ``<default_root_dir>/<name>-<YYYYmmdd-HHMMSS>`` (suffixed if taken).

        Raises:
            KbenchError: the folder cannot be created or written.
        """
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = os.path.join(self.default_root_dir, f"{self.name}-{stamp}")
        path, i = base, 1
        try:
            while os.path.exists(path):
                path, i = f"{base}-{i}", i + 1
            os.makedirs(path)
            probe = os.path.join(path, ".write-test")
            with open(probe, "w") as f:
                f.write("ok")
            os.remove(probe)
        except OSError as e:
            raise KbenchError(f"cannot create run folder {path!r} ({e.strerror}); "
                              "set --trainer.default_root_dir to a writable folder") from None
        self.run_dir = path
        return path

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
    def fit(self, model: TransferModel, datamodule: DataModule, recipe: Recipe, config: dict | None = None) -> dict:
        """Train ``model`` with ``recipe``, then test it and write the run folder.

        Writes ``config.yaml`` (when ``config`` is given), ``metrics.csv``,
        ``results.json`` and ``model.keras`` into :attr:`run_dir`.

        Returns:
            The results dict (also in ``results.json``).

        Raises:
            KbenchError: user errors (data, config); RuntimeError if a frozen
            variable changed during a phase.
        """
        t_start = time.perf_counter()
        datamodule.setup()
        run_dir = self.run_dir or self.make_run_dir()
        if config is not None:
            import yaml

            with open(os.path.join(run_dir, "config.yaml"), "w") as f:
                yaml.safe_dump(config, f, sort_keys=False)
        self._log(f"[bold]kbench[/] {recipe.name} on {model.spec.name} @ {model.image_size}px, backend "
                  f"{backend.name()}, {len(datamodule.train)} train / {len(datamodule.val)} val / "
                  f"{len(datamodule.test)} test images, run folder {run_dir}")
        epochs = self._phase_epochs(recipe.phases)
        cuts = [self._cut_for(model, p, datamodule, recipe) if n else None for p, n in zip(recipe.phases, epochs)]
        cache = FeatureCache(model, datamodule, self)
        cache.plan([c for c in cuts if c])
        csv_path = os.path.join(run_dir, "metrics.csv")
        epoch, step, phase_info = 0, 0, []
        for phase, n_epochs, cut in zip(recipe.phases, epochs, cuts):
            if n_epochs == 0:
                if phase.epochs:
                    self._log(f"[yellow]skipping phase {phase.name!r}: trainer.max_epochs={self.max_epochs} reached")
                continue
            if 0 < self.max_steps <= step:
                self._log(f"[yellow]skipping phase {phase.name!r}: trainer.max_steps={self.max_steps} reached")
                continue
            apply_phase(model.base, phase)
            e2e = model.compose(base_training=False if phase.base_inference else None)
            trainable, frozen = count_params(e2e)
            self._log(f"[bold cyan]phase {phase.name}[/]: {n_epochs} epoch(s) at learning rate "
                      f"{phase.learning_rate:g}; trainable params {trainable:,}, non-trainable {frozen:,}"
                      + (f"; frozen-prefix cache at {cut!r}" if cut else ""))
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
            meter = ThroughputMeter(train_seq.batch_sizes(), global_step=step)
            logger = MetricsLogger(csv_path, phase.name, meter)
            cbs = [meter, logger, MaxStepsStopper(meter, self.max_steps), *self._progress(phase.name), *self.callbacks]
            t_fit = time.perf_counter()
            net.fit(train_seq, validation_data=val_seq, epochs=epoch + n_epochs, initial_epoch=epoch,
                    shuffle=False, verbose=0, callbacks=cbs)
            fit_s = time.perf_counter() - t_fit
            check_frozen_unchanged(e2e, before, phase.name)
            done = len(logger.rows)
            epoch, step = epoch + done, meter.global_step
            self.history.extend(logger.rows)
            phase_info.append({
                "phase": phase.name, "epochs": done, "learning_rate": phase.learning_rate,
                "trainable_params": trainable, "non_trainable_params": frozen, "cache_cut": cut,
                "wall_time_s": time.perf_counter() - t0, "fit_time_s": fit_s,
                "cache_time_s": cache.seconds - cache_s if cut else 0.0,
                "train_images_per_s": meter.images_per_s, "first_steps_s": meter.first_steps_s,
                "step_time_ms_p50": float(np.percentile(meter.step_times, 50) * 1e3) if meter.step_times else None,
                "step_time_ms_p95": float(np.percentile(meter.step_times, 95) * 1e3) if meter.step_times else None,
            })
        last_cut = next((c for c, n in zip(reversed(cuts), reversed(epochs)) if n), None)
        test = self._test_after_fit(model, datamodule, cache, last_cut)
        inference = self.measure_inference(model, datamodule)
        model_path = os.path.join(run_dir, "model.keras")
        model.compose(base_training=None).save(model_path)
        self.results = write_results(run_dir, model=model, datamodule=datamodule, recipe=recipe, trainer=self,
                                     phases=phase_info, test=test, inference=inference,
                                     cache_time_s=cache.seconds, model_path=model_path,
                                     total_time_s=time.perf_counter() - t_start)
        self.console.print(summary_table(self.results, self.history))
        return self.results

    def _test_after_fit(self, model: TransferModel, datamodule: DataModule, cache: FeatureCache,
                        cut: str | None) -> dict:
        if cut:
            x = cache.get("test", cut)
            seq = BatchSequence(x, cache.labels("test"), datamodule.batch_size, None)
            return {**self._evaluate_seq(model, model.split(cut)[1], seq, "test"), "via_cache": cut}
        return {**self.test(model, datamodule), "via_cache": None}

    def _evaluate_seq(self, model: TransferModel, net: keras.Model, seq: BatchSequence, label: str) -> dict:
        self._compile(net, model, Recipe("eval", []), 1e-3)
        out = net.evaluate(seq, verbose=0, return_dict=True, callbacks=self._progress(label))
        return {"loss": float(out["loss"]), "accuracy": float(out["accuracy"]), "images": sum(seq.batch_sizes())}

    def measure_inference(self, model: TransferModel, datamodule: DataModule) -> dict:
        """End-to-end inference images/s on real test images (2 warm-up batches excluded)."""
        n = 0 if self.fast_dev_run else self.inference_batches
        if n <= 0:
            return {"images_per_s": None, "batches": 0}
        seq = datamodule.loader("test", model.image_size, limit_batches=n + 2)
        net = model.compose(base_training=None)
        meter = ThroughputMeter(seq.batch_sizes(), warmup=2)
        net.predict(seq, verbose=0, callbacks=[meter, *self._progress("inference benchmark")])
        return {"images_per_s": meter.images_per_s, "batches": len(meter.step_times),
                "batch_size": datamodule.batch_size, "first_steps_s": meter.first_steps_s}

    def validate(self, model: TransferModel, datamodule: DataModule) -> dict:
        """Loss and top-1 accuracy of the end-to-end model on the validation split."""
        return self._evaluate(model, datamodule, "val")

    def test(self, model: TransferModel, datamodule: DataModule) -> dict:
        """Loss and top-1 accuracy of the end-to-end model on the test split."""
        return self._evaluate(model, datamodule, "test")

    def _evaluate(self, model: TransferModel, datamodule: DataModule, split: str) -> dict:
        datamodule.setup()
        seq = datamodule.loader(split, model.image_size, limit_batches=self._limit(split))
        return self._evaluate_seq(model, model.compose(base_training=None), seq, split)

    def predict(self, model: TransferModel, datamodule: DataModule, split: str = "test") -> np.ndarray:
        """Class probabilities ``float32 (N, num_classes)`` for ``split``."""
        datamodule.setup()
        seq = datamodule.loader(split, model.image_size, limit_batches=self._limit(split))
        out = model.compose(base_training=None).predict(seq, verbose=0, callbacks=self._progress("predict"))
        out = np.asarray(out, np.float32)
        return np.asarray(keras.ops.softmax(out, axis=-1)) if model.from_logits else out


__all__ = ["Trainer", "Recipe", "FeatureCache", "make_optimizer", "PRECISIONS", "OPTIMIZERS"]
