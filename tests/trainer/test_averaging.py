"""Weight averaging end to end on real CIFAR-10 images (current KERAS_BACKEND): EMA
validated, tested and saved with the averaged weights, SWA's equal-weight average and
BatchNormalization recalibration, and both surviving a crash + ``--resume`` exactly.

Runs are in-process (``kbench.run.run``); a crash is an exception raised by a callback
placed after kbench's own (as ``tests/faults.py`` places its SIGKILL), so every
checkpoint the step / epoch callbacks write before it is on disk, and nothing after it.
"""

from __future__ import annotations

import csv
from pathlib import Path

import keras
import numpy as np
import pytest
from marks import slow_on

from kbench import KbenchError
from kbench.config import parse
from kbench.run import run
from kbench.trainer import checkpoint
from kbench.trainer.averaging import recalibrate_bn

TINY = ["--model.backbone", "mobilenetv3small", "--model.image_size", "32", "--model.weights", "none",
        "--data.source", "folder", "--data.batch_size", "32", "--trainer.limit_train_batches", "3",
        "--trainer.limit_test_batches", "1", "--trainer.inference_batches", "0",
        "--trainer.enable_progress_bar", "false", "--trainer.precision", "float32"]
# EMA: 1 head epoch on the cached features, then 3 fine-tune epochs; 3 batches each (steps 1..12)
EMA = ["--recipe.epochs", "1", "--recipe.fine_tune_epochs", "3", "--recipe.learning_rate", "0.01",
       "--recipe.fine_tune_learning_rate", "0.01", "--recipe.ema", "0.8", "--trainer.checkpoint_every_n_steps", "2"]
# SWA: one end-to-end phase (BatchNormalization trains), average of epochs 2 and 3
SWA = ["--recipe.name", "full", "--recipe.epochs", "3", "--recipe.learning_rate", "0.01", "--recipe.swa_epochs", "2"]


class Crash(Exception):
    """Stands for a SIGKILL."""


class CrashAt(keras.callbacks.Callback):
    """Raises :class:`Crash` after batch ``batch`` (1-based) of global epoch ``epoch`` (1-based),
    or at the end of that epoch (``batch`` None), after kbench's callbacks ran."""

    def __init__(self, epoch: int, batch: int | None = None):
        super().__init__()
        self.at, self.batch, self.epoch = epoch, batch, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch + 1) == (self.at, self.batch):
            raise Crash(f"epoch {self.epoch} batch {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        if self.batch is None and epoch + 1 == self.at:
            raise Crash(f"end of epoch {epoch + 1}")


def _np(v) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(v))


class Recorder(keras.callbacks.Callback):
    """What the trained model holds, at each phase start and epoch end (after kbench's callbacks).

    Attributes:
        variables: the end-to-end model's variables (the objects), from the last phase.
        start: per phase, ``{id(variable): value}`` of the trainable variables when it starts.
        raw, ema: per global epoch (1-based), ``{id(variable): value}`` of the trained weights and
            of the optimizer's EMA of them (EMA runs only).
        full: per global epoch, every variable of ``self.model`` in order.
        val: a validation batch ``(x, y)`` for the end-to-end model, set by the test.
    """

    def __init__(self):
        super().__init__()
        self.start, self.raw, self.ema, self.full, self.variables = [], {}, {}, {}, []

    def on_train_begin(self, logs=None):
        self.start.append({id(v): _np(v) for v in self.model.trainable_variables})
        self.variables = list(self.model.variables)

    def on_epoch_end(self, epoch, logs=None):
        e = epoch + 1
        self.raw[e] = {id(v): _np(v) for v in self.model.trainable_variables}
        opt = self.model.optimizer
        if getattr(opt, "use_ema", False):
            self.ema[e] = {id(v): _np(a) for v, a in zip(opt._trainable_variables, opt._model_variables_moving_average)}
        self.full[e] = [_np(v) for v in self.model.variables]


def _cfg(cifar_dir, root, *extra):
    return parse([*TINY, "--data.root", str(cifar_dir), "--trainer.default_root_dir", str(root), *extra])


def _only_run_dir(root) -> Path:
    """The one run folder under ``root``."""
    folders = [p for p in Path(root).iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    return folders[0]


def _metrics(run_dir) -> list[dict]:
    """``metrics.csv`` rows without the timing columns (every loss, step count and learning rate)."""
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k not in ("images_per_s", "epoch_time_s")} for r in csv.DictReader(f)]


def _ckpt_arrays(run_dir, tag):
    folder = run_dir / "checkpoints" / tag
    return [checkpoint.load_arrays(str(folder), name) for name in ("model", "optimizer")]


def _saved_weights(run_dir):
    return [_np(v) for v in keras.saving.load_model(run_dir / "model.keras").weights]


def _val_loss(model, x, y, weights: dict | None = None) -> float:
    """Validation loss of ``model`` on ``(x, y)``, with ``weights`` ({id: value}) assigned
    to its variables for the call (put back afterwards)."""
    keep = {id(v): _np(v) for v in model.variables}
    for v in model.variables:
        if weights and id(v) in weights:
            v.assign(weights[id(v)])
    logits = model(x, training=False)
    for v in model.variables:
        v.assign(keep[id(v)])
    return float(_np(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits)))


def _val_batch(cfg):
    from kbench.data import DataModule

    dm = DataModule(**vars(cfg.data), seed=cfg.trainer.seed, progress=False)
    dm.setup()
    return dm.loader("val", 32)[0]


# ------------------------------------------------------------------ EMA
@pytest.fixture(scope="module")
def ema_clean(cifar_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("ema-clean")
    return run(_cfg(cifar_dir, root, *EMA)), _only_run_dir(root)


@slow_on("jax")  # CI time: 34 s on JAX (2026-12-05 CI); in CI on tensorflow and torch
def test_ema_validates_tests_and_saves_the_averaged_weights(cifar_dir, tmp_path):
    # cache off: every phase trains the end-to-end model, so one validation batch serves all epochs
    rec = Recorder()
    cfg = _cfg(cifar_dir, tmp_path, *EMA, "--recipe.cache", "off", "--recipe.fine_tune_epochs", "1")
    results = run(cfg, callbacks=[rec])
    run_dir = _only_run_dir(tmp_path)
    x, y = _val_batch(cfg)
    model = rec.model
    rows = _metrics(run_dir)
    assert results["ema"] == 0.8 and len(rows) == 2 and results["num_val"] == 30  # one validation batch
    for e, row in enumerate(rows, 1):
        ema_loss, raw_loss = _val_loss(model, x, y, rec.ema[e]), _val_loss(model, x, y, rec.raw[e])
        # validation ran on the EMA weights, not on the trained ones
        assert float(row["val_loss"]) == pytest.approx(ema_loss, rel=1e-4, abs=1e-6)
        assert abs(raw_loss - ema_loss) > 1e-3
    # phase 2 started from phase 1's EMA weights (Keras's finalize_variable_values at the end of fit)
    head = rec.ema[1]
    assert head and all(np.array_equal(rec.start[1][k], head[k]) for k in head)
    assert not all(np.array_equal(rec.raw[1][k], head[k]) for k in head)
    # the tested and saved model: the tested epoch's EMA weights, the rest as trained
    t = results["tested_epoch"]
    final = {id(v): _np(v) for v in rec.variables}
    for k, avg in rec.ema[t].items():
        np.testing.assert_array_equal(final[k], avg)
    saved = _saved_weights(run_dir)
    assert len(saved) == len(model.weights)
    for s, v in zip(saved, model.weights):
        np.testing.assert_array_equal(s, _np(v))
    # the epoch checkpoints hold the EMA weights in the model slot, flagged; step checkpoints the raw ones
    state = checkpoint.load_state(str(run_dir / "checkpoints" / f"epoch-{t:04d}"))
    assert state["ema_in_model"] is True


@slow_on("tensorflow")  # CI time: 80-150 s on TensorFlow (2026-12-05 CI), covered in CI on jax and torch
def test_ema_crash_and_resume_is_exact(cifar_dir, tmp_path, ema_clean):
    clean, clean_dir = ema_clean
    # crash at the end of epoch 1 (phase 1 done): the resumed phase 2 starts from the checkpoint's EMA weights
    with pytest.raises(Crash):
        run(_cfg(cifar_dir, tmp_path, *EMA), callbacks=[CrashAt(1)])
    run_dir = _only_run_dir(tmp_path)
    resume = parse(["--resume", str(run_dir)])
    # crash after step 5: the last checkpoint is step 4 (epoch 2, batch 1; raw weights in the model slot),
    # the resume replays epoch 2's last two batches, then goes on with epochs 3 and 4
    with pytest.raises(Crash):
        run(resume, callbacks=[CrashAt(2, 2)])
    state = checkpoint.load_state(str(run_dir / "checkpoints" / "step-00000004"))
    assert (state["kind"], state["ema_in_model"]) == ("step", False)
    # crash at the end of epoch 3 (after its checkpoint, written with the EMA weights swapped in)
    with pytest.raises(Crash):
        run(resume, callbacks=[CrashAt(3)])
    assert checkpoint.load_state(str(run_dir / "checkpoints" / "epoch-0003"))["ema_in_model"] is True
    res = run(resume)
    assert res["status"] == "completed" and res["resumed_from"] == "epoch-0003"
    assert _metrics(run_dir) == _metrics(clean_dir)  # losses, validation on the EMA, learning rates
    assert (res["test_loss"], res["test_accuracy"], res["tested_epoch"]) == (
        clean["test_loss"], clean["test_accuracy"], clean["tested_epoch"])
    # model slot (EMA weights) and optimizer slots (raw weights, Adam moments, iterations) of the last epoch
    for got, want in zip(_ckpt_arrays(run_dir, "epoch-0004"), _ckpt_arrays(clean_dir, "epoch-0004")):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-7)
    for g, w in zip(_saved_weights(run_dir), _saved_weights(clean_dir)):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-7)


# ------------------------------------------------------------------ SWA
@pytest.fixture(scope="module")
def swa_clean(cifar_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("swa-clean")
    rec = Recorder()
    cfg = _cfg(cifar_dir, root, *SWA)
    results = run(cfg, callbacks=[rec])
    return results, rec, _only_run_dir(root), cfg


@slow_on("tensorflow", "jax")  # CI time (2026-12-05 CI): 80-150 s on TensorFlow, 33-46 s on JAX; in CI on torch
def test_swa_tests_and_saves_the_average_of_the_last_epochs(swa_clean):
    results, rec, run_dir, cfg = swa_clean
    swa = results["swa"]
    assert swa["epochs"] == [2, 3] and results["tested_epoch"] == 3
    model = rec.model
    final = {id(v): _np(v) for v in rec.variables}
    trained = list(rec.raw[3])
    assert len(trained) == len(model.trainable_variables) > 0
    for k in trained:  # every trainable weight is the mean of its values at the end of epochs 2 and 3
        np.testing.assert_allclose(final[k], (rec.raw[2][k] + rec.raw[3][k]) / 2, rtol=1e-6, atol=1e-7)
    assert any(not np.allclose(rec.raw[2][k], rec.raw[3][k]) for k in trained)
    # BatchNormalization statistics were recomputed for the average: every BN layer of the backbone trains here
    bns = [la for la in model._flatten_layers(recursive=True) if isinstance(la, keras.layers.BatchNormalization)]
    assert swa["bn_layers_recalibrated"] == len(bns) > 10
    index = {id(v): i for i, v in enumerate(rec.variables)}
    for la in bns:
        assert not np.allclose(final[id(la.moving_mean)], rec.full[3][index[id(la.moving_mean)]])
    # the recorded validation is the SWA model's, and it is what was saved
    x, y = _val_batch(cfg)
    assert swa["val_loss"] == pytest.approx(_val_loss(model, x, y), rel=1e-4)
    for s, v in zip(_saved_weights(run_dir), model.weights):
        np.testing.assert_array_equal(s, _np(v))
    state = checkpoint.load_state(str(run_dir / "checkpoints" / "epoch-0003"))
    assert state["swa"]["epochs"] == [2, 3]


@slow_on("tensorflow", "jax")  # CI time (2026-12-05 CI): 80-150 s on TensorFlow, 33-46 s on JAX; in CI on torch
def test_swa_crash_and_resume_is_exact(cifar_dir, tmp_path, swa_clean, monkeypatch):
    clean, _, clean_dir, _ = swa_clean
    # crash in epoch 3: the epoch-2 checkpoint holds the average of epoch 2 (swa.npz)
    with pytest.raises(Crash):
        run(_cfg(cifar_dir, tmp_path, *SWA), callbacks=[CrashAt(3, 1)])
    run_dir = _only_run_dir(tmp_path)
    state = checkpoint.load_state(str(run_dir / "checkpoints" / "epoch-0002"))
    assert state["swa"]["epochs"] == [2] and (run_dir / "checkpoints" / "epoch-0002" / "swa.npz").is_file()
    # crash after the last epoch, while testing: the resume has no epoch left, and averages from epoch 3's checkpoint
    from kbench.trainer.evaluate import Evaluator

    def crash(*a, **k):
        raise Crash("test")

    with monkeypatch.context() as m:
        m.setattr(Evaluator, "test_after_fit", crash)
        with pytest.raises(Crash):
            run(parse(["--resume", str(run_dir)]))
    res = run(parse(["--resume", str(run_dir)]))
    assert res["status"] == "completed" and res["resumed_from"] == "epoch-0003"
    assert res["swa"] == clean["swa"]
    assert (res["test_loss"], res["test_accuracy"]) == (clean["test_loss"], clean["test_accuracy"])
    assert _metrics(run_dir) == _metrics(clean_dir)
    for g, w in zip(_saved_weights(run_dir), _saved_weights(clean_dir)):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-7)


def test_recalibrate_bn_sets_trainable_bn_statistics_to_the_data_and_leaves_the_rest():
    rng = np.random.default_rng(0)
    inner_in = keras.Input((4,))
    bn_nested = keras.layers.BatchNormalization(name="bn_nested")
    inner = keras.Model(inner_in, bn_nested(inner_in))  # a BN inside a nested model (a backbone) counts too
    inputs = keras.Input((3,))
    dense = keras.layers.Dense(4, name="dense")
    bn_train, bn_frozen = keras.layers.BatchNormalization(name="bn_train"), keras.layers.BatchNormalization()
    h = dense(inputs)
    net = keras.Model(inputs, [bn_train(h), inner(bn_frozen(h))])
    bn_frozen.trainable = False  # a frozen BN runs in inference mode and keeps its statistics
    batches = [(rng.normal(3.0, 2.0, (n, 3)).astype(np.float32), np.zeros(n, np.int32)) for n in (16, 16, 5)]
    frozen = [_np(bn_frozen.moving_mean), _np(bn_frozen.moving_variance)]
    momentum = bn_train.momentum
    assert recalibrate_bn(net, batches) == 2
    feats = [_np(dense(x)) for x, _ in batches]
    # torch update_bn (momentum=None): the average over batches of each batch's mean and (biased) variance
    for bn, f in ((bn_train, feats), (bn_nested, [_np(bn_frozen(x, training=False)) for x in feats])):
        np.testing.assert_allclose(_np(bn.moving_mean), np.mean([b.mean(0) for b in f], 0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(_np(bn.moving_variance), np.mean([b.var(0) for b in f], 0), rtol=1e-4)
    assert bn_train.momentum == bn_nested.momentum == momentum
    np.testing.assert_array_equal(_np(bn_frozen.moving_mean), frozen[0])
    np.testing.assert_array_equal(_np(bn_frozen.moving_variance), frozen[1])


# ------------------------------------------------------------------ settings
@pytest.mark.parametrize("args,match", [
    (["--recipe.swa_epochs", "3", "--recipe.epochs", "2", "--recipe.fine_tune_epochs", "2"],
     "recipe.swa_epochs=3 is more than the epochs SWA can average: the last phase that trains ('fine_tune') has 2; "
     "use recipe.swa_epochs <= 2"),
    (["--recipe.swa_epochs", "2", "--recipe.ema", "0.99"], "recipe.ema=0.99 and recipe.swa_epochs=2 are both set"),
])
def test_bad_averaging_settings_are_one_message_before_any_data(capsys, args, match):
    with pytest.raises(SystemExit) as e:
        parse(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and match in err and "Traceback" not in err and len(err.splitlines()) == 2, err


def test_library_recipes_are_checked_at_fit_start():
    from kbench.recipes import Phase
    from kbench.trainer import PhasePlan, Recipe
    from kbench.trainer.averaging import Averaging

    phases = [Phase("head", 2, 1e-3, "none"), Phase("top", 1, 1e-4, "from:block5")]
    plans = [PhasePlan(i, p, p.epochs) for i, p in enumerate(phases)]
    with pytest.raises(KbenchError, match=r"swa_epochs=2 is more .*\('top'\) has 1"):
        Averaging(Recipe("custom", phases, swa_epochs=2), plans)
    avg = Averaging(Recipe("custom", phases, swa_epochs=1), plans)
    assert avg.swa_plan is plans[1] and avg.swa_epochs == 1


def test_swa_counts_the_last_phase_that_trains():
    from kbench.recipes import build_recipe

    cfg = parse(["--recipe.swa_epochs", "2", "--recipe.epochs", "3", "--recipe.fine_tune_epochs", "0"])
    assert build_recipe(cfg.recipe, "block5").swa_epochs == 2  # fine_tune has 0 epochs: phase 1 is the last
