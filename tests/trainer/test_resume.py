"""Reliability: checkpoints, exact resume after SIGKILL, SIGINT/SIGTERM, non-finite
loss, best weights, bad --resume folders, failed checkpoint writes.

The fault runs are real ``python -m kbench.run`` processes (tests/faults.py) on
the current KERAS_BACKEND; nox runs this file once per backend.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from marks import slow_on

from kbench import KbenchError
from kbench.models.saved import load_saved_model
from kbench.run import main
from kbench.trainer import checkpoint

HERE = Path(__file__).resolve().parent
# fine_tune, 2 + 3 epochs of 3 batches on a tiny model: phase 2 = epochs 3..5
ARGS = ["--model.backbone", "mobilenetv3small", "--model.image_size", "32", "--model.weights", "none",
        "--data.source", "folder", "--data.batch_size", "32", "--recipe.epochs", "2", "--recipe.fine_tune_epochs",
        "3", "--trainer.limit_train_batches", "3", "--trainer.inference_batches", "0",
        "--trainer.enable_progress_bar", "false", "--trainer.precision", "float32"]


def _run(cifar_dir, root, *faults, extra=()):
    cmd = [sys.executable, str(HERE.parent / "faults.py"), *faults, "--", *ARGS, "--data.root", str(cifar_dir),
           "--trainer.default_root_dir", str(root), *extra]
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1])}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


def _resume(run_dir, *extra):
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1])}
    return subprocess.run([sys.executable, "-m", "kbench.run", "--resume", str(run_dir), *extra],
                          capture_output=True, text=True, env=env, timeout=900)


def _only_run_dir(root) -> Path:
    (d,) = [p for p in Path(root).iterdir() if p.is_dir()]
    return d


def _metrics(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return [{k: r[k] for k in ("phase", "epoch", "step", "loss", "accuracy", "val_loss", "val_accuracy",
                                   "learning_rate")} for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def uninterrupted(cifar_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    p = _run(cifar_dir, root)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    d = _only_run_dir(root)
    return json.loads((d / "results.json").read_text()), _metrics(d), d


@pytest.mark.parametrize("kill_epoch", [pytest.param(3, marks=pytest.mark.slow), 4],
                         ids=["at-phase-boundary", "inside-phase-2"])
def test_sigkill_then_resume_matches_uninterrupted_run(cifar_dir, tmp_path, uninterrupted, kill_epoch):
    clean, clean_rows, _ = uninterrupted
    p = _run(cifar_dir, tmp_path, "--signal", f"KILL@{kill_epoch}:2")
    assert p.returncode == -9, p.stderr[-3000:]
    run_dir = _only_run_dir(tmp_path)
    assert not (run_dir / "results.json").exists()
    last = json.loads((run_dir / "checkpoints" / "last.json").read_text())["tag"]
    assert last == f"epoch-{kill_epoch - 1:04d}"
    r = _resume(run_dir)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    _assert_same_as_uninterrupted(run_dir, clean, clean_rows, last)


def _assert_same_as_uninterrupted(run_dir, clean, clean_rows, resumed_from):
    res = json.loads((run_dir / "results.json").read_text())
    assert res["status"] == "completed" and res["resumed_from"] == resumed_from
    assert res["test_accuracy"] == clean["test_accuracy"]
    assert res["test_loss"] == clean["test_loss"]
    assert _metrics(run_dir) == clean_rows  # every epoch's losses, step counts and learning rates
    # the optimizer continued: phase 2 ran 3 epochs x 3 steps in total, not 3 after the restart
    assert res["phases"][-1]["optimizer_iterations"] == clean["phases"][-1]["optimizer_iterations"] == 9
    assert res["tested_epoch"] == clean["tested_epoch"]


@slow_on("jax")  # CI time: 36-38 s on JAX; in CI on tensorflow and torch
def test_step_checkpoint_sigkill_inside_an_epoch_then_exact_resume(cifar_dir, tmp_path, uninterrupted):
    # 3 batches per epoch, a step checkpoint every 2 steps: steps 8 (epoch 3) and 10 (epoch 4, batch 1);
    # killed at step 11 (epoch 4, batch 2). The resume replays batches 2-3 of epoch 4 with the saved
    # metric accumulators, so every logged number matches the uninterrupted run.
    clean, clean_rows, _ = uninterrupted
    p = _run(cifar_dir, tmp_path, "--signal", "KILL@4:2", extra=["--trainer.checkpoint_every_n_steps", "2"])
    assert p.returncode == -9, p.stderr[-3000:]
    run_dir = _only_run_dir(tmp_path)
    ckpts = sorted(x.name for x in (run_dir / "checkpoints").iterdir() if x.is_dir())
    steps = [c for c in ckpts if c.startswith("step-")]
    assert "epoch-0003" in ckpts and steps == ["step-00000010"]  # step 8 was superseded by epoch 3
    assert json.loads((run_dir / "checkpoints" / "last.json").read_text())["tag"] == "step-00000010"
    state = checkpoint.load_state(str(run_dir / "checkpoints" / "step-00000010"))
    assert (state["kind"], state["epoch"], state["batches_done"], state["step"]) == ("step", 3, 1, 10)
    r = _resume(run_dir)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "in epoch 4 after batch 1" in " ".join(r.stdout.split())  # rich wraps long lines
    _assert_same_as_uninterrupted(run_dir, clean, clean_rows, "step-00000010")
    assert not [x for x in (run_dir / "checkpoints").iterdir() if x.name.startswith("step-")]


def test_ctrl_c_inside_an_epoch_checkpoints_that_batch_and_resumes_exactly(cifar_dir, tmp_path, uninterrupted):
    # SIGINT sent at the end of epoch 4's batch 1 is seen after batch 2: the run stops there
    clean, clean_rows, _ = uninterrupted
    p = _run(cifar_dir, tmp_path, "--signal", "INT@4:1")
    assert p.returncode == 130, p.stdout[-3000:] + p.stderr[-3000:]
    assert "Traceback" not in p.stdout + p.stderr
    run_dir = _only_run_dir(tmp_path)
    res = json.loads((run_dir / "results.json").read_text())
    assert res["status"] == "interrupted" and res["signal"] == "SIGINT"
    assert res["epoch"] == 3 and res["step"] == 11 and res["batches_done"] == 2
    assert res["resume"].endswith(str(run_dir)) and res["resume_from"].endswith("interrupted")
    backend_name = keras.backend.backend()
    assert f"resume with: KERAS_BACKEND={backend_name} python -m kbench.run --resume" in " ".join(p.stdout.split())
    assert res["resume"] == f"KERAS_BACKEND={backend_name} python -m kbench.run --resume {run_dir}"
    state = checkpoint.load_state(str(run_dir / "checkpoints" / "interrupted"))
    assert (state["kind"], state["phase"], state["batches_done"]) == ("interrupted", "fine_tune", 2)
    assert json.loads((run_dir / "checkpoints" / "last.json").read_text())["tag"] == "interrupted"
    r = _resume(run_dir)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    _assert_same_as_uninterrupted(run_dir, clean, clean_rows, "interrupted")


@pytest.mark.slow
def test_signal_at_an_epochs_last_batch_waits_for_the_epoch_checkpoint(cifar_dir, tmp_path):
    # SIGTERM at the end of epoch 2's batch 2 is seen after batch 3, the epoch's last: validation
    # and the epoch checkpoint finish first, then the run stops
    p = _run(cifar_dir, tmp_path, "--signal", "TERM@2:2")
    assert p.returncode == 143, p.stdout[-3000:] + p.stderr[-3000:]
    run_dir = _only_run_dir(tmp_path)
    res = json.loads((run_dir / "results.json").read_text())
    assert res["status"] == "interrupted" and res["signal"] == "SIGTERM" and res["epoch"] == 2
    assert res["interrupted_checkpoint"].endswith("epoch-0002")
    assert json.loads((run_dir / "checkpoints" / "last.json").read_text())["tag"] == "epoch-0002"
    assert [r["epoch"] for r in _metrics(run_dir)] == ["1", "2"]
    assert "Traceback" not in p.stdout + p.stderr


def test_non_finite_loss_stops_with_message_and_keeps_last_good_checkpoint(cifar_dir, tmp_path):
    p = _run(cifar_dir, tmp_path, "--nan-at", "2")
    assert p.returncode == 2
    out = p.stdout + p.stderr
    assert "non-finite loss" in out and "epoch 2" in out and "Traceback" not in out
    run_dir = _only_run_dir(tmp_path)
    res = json.loads((run_dir / "results.json").read_text())
    assert res["status"] == "failed" and "non-finite loss" in res["error"]
    ckpts = sorted(x.name for x in (run_dir / "checkpoints").iterdir() if x.is_dir())
    assert ckpts == ["epoch-0001"]
    with np.load(run_dir / "checkpoints" / "epoch-0001" / "model.npz") as z:
        assert all(np.isfinite(z[k]).all() for k in z.files if z[k].dtype.kind == "f")


@slow_on("jax")  # CI time: 36-38 s on JAX; in CI on tensorflow and torch
def test_best_epoch_is_tested_and_saved_also_after_resume(cifar_dir, tmp_path):
    # epoch 2 starts from a wrecked head, so epoch 1 stays the best; the run is killed in
    # epoch 4 (after the best epoch) and resumed
    p = _run(cifar_dir, tmp_path, "--noise-at", "2", "--signal", "KILL@4:1")
    assert p.returncode == -9, p.stderr[-3000:]
    run_dir = _only_run_dir(tmp_path)
    r = _resume(run_dir)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((run_dir / "results.json").read_text())
    with open(run_dir / "metrics.csv") as f:
        val = {int(row["epoch"]): float(row["val_accuracy"]) for row in csv.DictReader(f)}
    best = max(val, key=lambda e: (val[e], -e))
    assert best != 5 and res["best_epoch"] == res["tested_epoch"] == best
    assert res["best_monitor_value"] == pytest.approx(val[best])
    saved = load_saved_model(str(run_dir / "model.keras")).model
    with np.load(run_dir / "checkpoints" / f"epoch-{best:04d}" / "model.npz") as z:
        want = [z[k] for k in sorted(z.files)]
    state = checkpoint.load_state(str(run_dir / "checkpoints" / f"epoch-{best:04d}"))
    by_path = dict(zip(state["variable_paths"], want))
    for v in saved.weights:
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v.value), by_path[v.path])


def test_resume_bad_folders(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--resume", str(tmp_path / "nope")])
    assert e.value.code == 2 and "no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        main(["--resume", str(tmp_path / "empty")])
    assert "not a kbench run folder" in capsys.readouterr().err


def test_resume_refuses_other_config_and_newer_format(cifar_dir, tmp_path, capsys):
    p = _run(cifar_dir, tmp_path, "--signal", "KILL@2:1")
    assert p.returncode == -9
    run_dir = _only_run_dir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["--resume", str(run_dir), "--data.batch_size", "16"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "belongs to another config" in err and "data.batch_size" in err
    state_file = run_dir / "checkpoints" / "epoch-0001" / "state.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "format": checkpoint.CKPT_FORMAT + 1}))
    assert main(["--resume", str(run_dir)]) == 2
    assert "newer than this kbench understands" in capsys.readouterr().out
    other = next(b for b in ("jax", "tensorflow", "torch") if b != keras.backend.backend())
    state_file.write_text(json.dumps({**state, "backend": other}))
    assert main(["--resume", str(run_dir)]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert f"was written on the {other} backend" in out and f"resume it with KERAS_BACKEND={other}" in out
    assert sorted(x.name for x in (run_dir / "checkpoints").iterdir()) == ["epoch-0001", "last.json"]


# A user-written phase list, not a preset: the cache cut moves down (block5_pool -> block4_pool) and
# back up, and "top" trains block5, inside head2's cached prefix, so head2 needs fresh features.
THREE_PHASES = [("head", 1, 1e-3, "none"), ("top", 1, 1e-4, "from:block5"), ("head2", 2, 1e-3, "none")]


class _SignalAt(keras.callbacks.Callback):
    """Sends ``signum`` to this process at the end of (global 1-based) epoch, batch."""

    def __init__(self, signum, epoch, batch):
        super().__init__()
        self.signum, self.at, self.epoch = signum, (epoch, batch), 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch + 1) == self.at:
            os.kill(os.getpid(), self.signum)


def _fit_three_phases(data, root, cache="auto", callbacks=(), ckpt_path=None):
    """VGG16 (real weights) at 32 px on 90 train / 10 val / 50 test images: 3 batches an epoch."""
    from kbench.data import DataModule
    from kbench.models import build_model
    from kbench.recipes import Phase, Recipe
    from kbench.trainer import Trainer

    cifar_dir, weights = data
    trainer = Trainer(seed=7, default_root_dir=str(root), enable_progress_bar=False, inference_batches=0,
                      callbacks=list(callbacks))
    dm = DataModule(source="folder", root=str(cifar_dir), batch_size=32, seed=7, max_train_per_class=10,
                    max_test_per_class=5).setup()
    tm = build_model(backbone="vgg16", weights=str(weights), image_size=32, head="gap", head_dropout=0.5,
                     preprocess="auto", num_classes=dm.num_classes, class_names=dm.class_names)
    recipe = Recipe("three", [Phase(n, e, lr, t) for n, e, lr, t in THREE_PHASES], cache=cache)
    return trainer.fit(tm, dm, recipe, ckpt_path=ckpt_path), trainer, tm


@pytest.fixture(scope="module")
def three_phases_clean(cifar_dir, vgg16_weights, tmp_path_factory):
    root = tmp_path_factory.mktemp("three")
    res, trainer, tm = _fit_three_phases((cifar_dir, vgg16_weights), root)
    weights = [keras.ops.convert_to_numpy(v.value) for v in tm.keras_model.weights]
    return res, list(trainer.history), weights, _only_run_dir(root)


def test_phase_list_with_moving_cache_cut_matches_uncached_run(cifar_dir, vgg16_weights, tmp_path,
                                                                three_phases_clean):
    res, history, weights, run_dir = three_phases_clean
    cuts = [p["cache_cut"] for p in res["phases"]]
    assert cuts == ["block5_pool", "block4_pool", "block5_pool"]
    assert [p["epochs"] for p in res["phases"]] == [1, 1, 2] and res["tested_epoch"] is not None
    off, off_trainer, off_tm = _fit_three_phases((cifar_dir, vgg16_weights), tmp_path, cache="off")
    assert [p["cache_cut"] for p in off["phases"]] == [None, None, None]
    assert [r["phase"] for r in history] == [r["phase"] for r in off_trainer.history] == ["head", "top", "head2",
                                                                                       "head2"]
    for a, o in zip(history, off_trainer.history):
        np.testing.assert_allclose([a["loss"], a["val_loss"]], [o["loss"], o["val_loss"]], rtol=2e-4)
        assert a["accuracy"] == pytest.approx(o["accuracy"], abs=1e-6)
    assert res["test_loss"] == pytest.approx(off["test_loss"], rel=2e-4)
    for a, o in zip(weights, [keras.ops.convert_to_numpy(v.value) for v in off_tm.keras_model.weights]):
        np.testing.assert_allclose(a, o, rtol=1e-3, atol=1e-5)


def test_phase_list_sigint_in_phase_3_then_exact_resume(cifar_dir, vgg16_weights, tmp_path, three_phases_clean):
    import signal

    from kbench.trainer.callbacks import TrainingInterrupted

    clean, _, _, clean_dir = three_phases_clean
    with pytest.raises(TrainingInterrupted):  # seen after batch 2 of epoch 3 (phase head2's first)
        _fit_three_phases((cifar_dir, vgg16_weights), tmp_path, callbacks=[_SignalAt(signal.SIGINT, 3, 1)])
    run_dir = _only_run_dir(tmp_path)
    assert json.loads((run_dir / "checkpoints" / "last.json").read_text())["tag"] == "interrupted"
    state = checkpoint.load_state(str(run_dir / "checkpoints" / "interrupted"))
    assert (state["phase_index"], state["phase"], state["epoch"], state["batches_done"]) == (2, "head2", 2, 2)
    res, _, _ = _fit_three_phases((cifar_dir, vgg16_weights), tmp_path / "unused", ckpt_path=str(run_dir))
    assert res["resumed_from"] == "interrupted" and res["status"] == "completed"
    assert _metrics(run_dir) == _metrics(clean_dir)
    assert (res["test_accuracy"], res["test_loss"]) == (clean["test_accuracy"], clean["test_loss"])
    assert [p["optimizer_iterations"] for p in res["phases"]] == [p["optimizer_iterations"] for p in clean["phases"]]


def _tiny_model():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(keras.layers.Dense(5)(inputs)))
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    model = _tiny_model()
    checkpoint.save(str(tmp_path), "epoch-0001", model, model.optimizer, {"epoch": 1})
    before = (tmp_path / "checkpoints" / "epoch-0001" / "model.npz").read_bytes()

    def full_disk(path, arrays):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "_write_npz", full_disk)
    with pytest.raises(KbenchError, match="No space left.*earlier checkpoints"):
        checkpoint.save(str(tmp_path), "epoch-0002", model, model.optimizer, {"epoch": 2})
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["epoch-0001"]  # no half-written folder
    assert (tmp_path / "checkpoints" / "epoch-0001" / "model.npz").read_bytes() == before


def test_checkpoint_round_trip_restores_model_and_optimizer(tmp_path):
    a, b = _tiny_model(), _tiny_model()
    a.optimizer.iterations.assign(7)
    path = checkpoint.save(str(tmp_path), "epoch-0003", a, a.optimizer, {"epoch": 3})
    state = checkpoint.load_state(path)
    checkpoint.restore_model(path, b, state)
    checkpoint.restore_optimizer(path, b, state)
    for x, y in zip(a.variables + a.optimizer.variables, b.variables + b.optimizer.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(x.value), keras.ops.convert_to_numpy(y.value))
    assert int(keras.ops.convert_to_numpy(b.optimizer.iterations)) == 7
    inputs = keras.Input((4,))
    other = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(KbenchError, match="another model"):
        checkpoint.restore_model(path, other, state)


def test_not_enough_disk_space_is_refused_before_training(tmp_path):
    with pytest.raises(KbenchError, match="not enough disk space"):
        checkpoint.check_free_space(str(tmp_path), 1 << 60)


def test_resume_of_a_completed_run_changes_nothing(uninterrupted):
    _, _, run_dir = uninterrupted
    before = (run_dir / "results.json").read_bytes()
    r = _resume(run_dir)
    assert r.returncode == 0 and "already completed" in r.stdout
    assert (run_dir / "results.json").read_bytes() == before


def test_unknown_keras_backend_is_one_message(tmp_path):
    env = {**os.environ, "KERAS_BACKEND": "nosuch"}
    p = subprocess.run([sys.executable, "-m", "kbench.run", "--print_config"], capture_output=True, text=True,
                       env=env, timeout=300)
    out = p.stdout + p.stderr
    assert p.returncode == 2 and "KERAS_BACKEND='nosuch'" in out and "Traceback" not in out


def test_missing_weights_file_refused_even_for_scratch(tmp_path, capsys):
    code = main(["--recipe.name", "scratch", "--model.weights", str(tmp_path / "missing.weights.h5"),
                 "--trainer.default_root_dir", str(tmp_path / "runs")])
    assert code == 2 and "missing.weights.h5" in capsys.readouterr().out
    assert not (tmp_path / "runs").exists()
