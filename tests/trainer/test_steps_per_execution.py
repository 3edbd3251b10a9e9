"""Several training steps per dispatch (``LoopTools.steps_per_execution``) in phases on
cached features: the same weights, metrics and learning-rate trace as one step per
dispatch; per-step features (``max_steps``, step checkpoints) and PyTorch keep one."""

from __future__ import annotations

import csv
import dataclasses
import os

import keras
import numpy as np

from kbench.data import from_arrays
from kbench.models import build_model
from kbench.recipes import make_phases
from kbench.trainer import Recipe, Trainer
from kbench.trainer.callbacks import ThroughputMeter

SPE_BACKENDS = ("jax", "tensorflow")


def _fit(tmp_path, spe: int, **trainer_args) -> tuple[Trainer, dict, list, list]:
    """feature_extraction (cosine schedule with warm-up) on 7 batches of 24 + a last one of 8
    per epoch (200 images), 2 epochs, on a tiny model; returns the trainer, results, final
    weights and the ``lr.csv`` rows without the time-free columns dropped."""
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (260, 16, 16, 3), dtype=np.uint8), rng.integers(0, 3, 260)
    dm = from_arrays(x[:200], y[:200], x[200:230], y[200:230], x[230:], y[230:], batch_size=24, seed=1)
    trainer = Trainer(seed=3, default_root_dir=str(tmp_path), inference_batches=0, enable_progress_bar=False,
                      **trainer_args)
    trainer.tools.steps_per_execution = spe
    tm = build_model("mobilenetv3small", "none", 32, "mlp", 0.5, "auto", 3, head_hidden=16)
    phases = [dataclasses.replace(p, schedule="cosine", warmup_steps=3)
              for p in make_phases("feature_extraction", 2, 1e-2)]
    res = trainer.fit(tm, dm, Recipe("feature_extraction", phases))
    with open(os.path.join(trainer.run_dir, "lr.csv")) as f:
        lr_rows = list(csv.reader(f))
    return trainer, res, [np.asarray(v) for v in tm.keras_model.get_weights()], lr_rows


def test_steps_per_execution_gives_identical_training(tmp_path):
    t1, r1, w1, lr1 = _fit(tmp_path / "one", 1)
    t3, r3, w3, lr3 = _fit(tmp_path / "three", 3)
    assert r1["phases"][0]["cache_cut"] is not None
    assert t3.state.net.steps_per_execution == (3 if keras.backend.backend() in SPE_BACKENDS else 1)
    assert all(np.array_equal(a, b) for a, b in zip(w1, w3, strict=True))
    assert len(lr1) == 1 + 2 * 9 and lr3 == lr1  # one row per step, same steps, updates and rates
    keys = ("epoch", "step", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")
    assert [[h[k] for k in keys] for h in t3.history] == [[h[k] for k in keys] for h in t1.history]
    assert [h["step"] for h in t3.history] == [9, 18]
    assert r3["phases"][0]["optimizer_iterations"] == r1["phases"][0]["optimizer_iterations"] == 18
    assert r3["test_accuracy"] == r1["test_accuracy"]


def test_per_step_features_keep_one_step_per_dispatch(tmp_path):
    trainer, res, _, lr_rows = _fit(tmp_path, 4, max_steps=5, checkpoint_every_n_steps=2)
    assert trainer.state.net.steps_per_execution == 1
    assert res["phases"][0]["optimizer_iterations"] == 5  # stopped at exactly max_steps
    assert [int(r[2]) for r in lr_rows[1:]] == [1, 2, 3, 4, 5]


def test_meter_counts_every_step_of_a_dispatch():
    meter = ThroughputMeter([24] * 8 + [8], warmup=0, global_step=10)
    meter.on_train_begin()
    for first, last in ((0, 2), (3, 5), (6, 8)):
        meter.on_train_batch_begin(first)
        meter.on_train_batch_end(last, {"loss": 1.0})
    assert meter.global_step == 19 and meter.last_steps == 3
    assert meter.images == 200 and len(meter.step_times) == 9
    assert meter.step_times[0] == meter.step_times[2] > 0
