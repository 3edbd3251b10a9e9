"""A recipe written as a phase list (``recipe.phases``), end to end on real CIFAR-10 images
and real VGG16 weights: three phases (head / block 5 / everything) in order, the
frozen-prefix cache on and off giving the same model, and an exact resume after a
SIGKILL in phase 3.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from kbench.config import parse
from kbench.run import main, run

HERE = Path(__file__).resolve().parent
PHASES = """\
recipe:
  name: three_phase
  phases:
    - {name: head, epochs: 1, learning_rate: 1.0e-3, train: none}
    - {name: top, epochs: 1, learning_rate: 1.0e-4, train: "from:block5"}
    - {name: all, epochs: 1, learning_rate: 1.0e-5, train: all}
"""
# 3 train images per class: 20 after the validation split (10 val), 20 test images; batches of 10, so
# that every batch has one shape (jax and tensorflow compile a step per batch shape): 2 steps per epoch
ARGS = ["--model.backbone", "vgg16", "--model.image_size", "32", "--model.head", "gap", "--data.source", "folder",
        "--data.batch_size", "10", "--data.max_train_per_class", "3", "--data.max_test_per_class", "2",
        "--trainer.inference_batches", "0", "--trainer.enable_progress_bar", "false", "--trainer.precision", "float32"]


def _args(cifar_dir, weights, root, config, *extra) -> list[str]:
    return ["--config", str(config), *ARGS, "--model.weights", str(weights), "--data.root", str(cifar_dir),
            "--trainer.default_root_dir", str(root), *extra]


def _only_run_dir(root) -> Path:
    (d,) = [p for p in Path(root).iterdir() if p.is_dir()]
    return d


def _metrics(run_dir) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return [{k: r[k] for k in ("phase", "epoch", "step", "loss", "accuracy", "val_loss", "val_accuracy",
                                   "learning_rate")} for r in csv.DictReader(f)]


def _weights(run_dir, tag) -> list[np.ndarray]:
    """Every variable of the model in checkpoint ``tag``, in model order (variable paths can
    differ between processes: the dropout seed generator is numbered per process)."""
    with np.load(run_dir / "checkpoints" / tag / "model.npz") as z:
        return [z[k] for k in sorted(z.files)]


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "three_phase.yaml"
    path.write_text(PHASES)
    return path


@pytest.fixture(scope="module")
def cached(cifar_dir, vgg16_weights, tmp_path_factory, config):
    """The uninterrupted run, frozen-prefix cache on (``recipe.cache auto``, the default)."""
    root = tmp_path_factory.mktemp("cache_auto")
    results = run(parse(_args(cifar_dir, vgg16_weights, root, config)))
    return results, _only_run_dir(root)


def test_phases_run_in_order_with_their_epochs(cached):
    results, run_dir = cached
    assert results["recipe"] == "three_phase" and results["status"] == "completed"
    rows = _metrics(run_dir)
    assert [(r["phase"], r["epoch"]) for r in rows] == [("head", "1"), ("top", "2"), ("all", "3")]
    assert [float(r["learning_rate"]) for r in rows] == pytest.approx([1e-3, 1e-4, 1e-5], rel=1e-6)
    assert [int(r["step"]) for r in rows] == [2, 4, 6]
    head, top, everything = results["phases"]
    assert [(p["phase"], p["epochs"]) for p in results["phases"]] == [("head", 1), ("top", 1), ("all", 1)]
    assert [p["optimizer_iterations"] for p in results["phases"]] == [2, 2, 2]
    # each phase trains more of the backbone; the total never changes
    assert head["trainable_params"] < top["trainable_params"] < everything["trainable_params"]
    totals = {p["trainable_params"] + p["non_trainable_params"] for p in results["phases"]}
    assert len(totals) == 1
    assert top["trainable_params"] - head["trainable_params"] == 3 * (3 * 3 * 512 * 512 + 512)  # block 5's convs
    assert everything["non_trainable_params"] == 0
    # the cache cut moves down with each phase's lowest trainable layer; `all` trains everything: no cache
    assert [p["cache_cut"] for p in results["phases"]] == ["block5_pool", "block4_pool", None]
    config = (run_dir / "config.yaml").read_text()
    assert "three_phase" in config and "from:block5" in config


def test_cache_on_and_off_give_the_same_model(cifar_dir, vgg16_weights, tmp_path, config, cached):
    """Measured on x86 CPUs: bit-identical metrics and weights on jax, tensorflow and torch. The
    tolerances leave room only for float noise from kernels that depend on the batch's shape
    (the cache is computed in unshuffled batches, training draws shuffled ones), as on a GPU;
    training on other samples or a skipped update moves these numbers far more."""
    on, on_dir = cached
    off = run(parse(_args(cifar_dir, vgg16_weights, tmp_path, config, "--recipe.cache", "off")))
    off_dir = _only_run_dir(tmp_path)
    assert all(p["cache_cut"] is None for p in off["phases"])
    assert off["tested_epoch"] == on["tested_epoch"]
    a, b = _metrics(on_dir), _metrics(off_dir)
    assert [(r["phase"], r["epoch"], r["step"], r["learning_rate"]) for r in a] == \
        [(r["phase"], r["epoch"], r["step"], r["learning_rate"]) for r in b]
    for ra, rb in zip(a, b):
        np.testing.assert_allclose([float(ra[k]) for k in ("loss", "val_loss")],
                                   [float(rb[k]) for k in ("loss", "val_loss")], rtol=1e-5)
        assert float(ra["accuracy"]) == pytest.approx(float(rb["accuracy"]), abs=1e-6)
        assert float(ra["val_accuracy"]) == pytest.approx(float(rb["val_accuracy"]), abs=1e-6)
    assert on["test_accuracy"] == pytest.approx(off["test_accuracy"], abs=1e-6)
    assert on["test_loss"] == pytest.approx(off["test_loss"], rel=1e-5)
    wa, wb = _weights(on_dir, "epoch-0003"), _weights(off_dir, "epoch-0003")
    assert len(wa) == len(wb) == 29  # 13 conv kernels and biases, the dropout seed, the logits kernel and bias
    for i, (x, y) in enumerate(zip(wa, wb)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7, err_msg=f"variable {i}")


def test_sigkill_in_phase_3_then_resume_is_exact(cifar_dir, vgg16_weights, tmp_path, config, cached):
    clean, clean_dir = cached
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1])}
    # a step checkpoint every 5 steps: step 5 is batch 1 of epoch 3, the `all` phase; killed after batch 2
    p = subprocess.run([sys.executable, str(HERE.parent / "faults.py"), "--signal", "KILL@3:2", "--",
                        *_args(cifar_dir, vgg16_weights, tmp_path, config, "--trainer.checkpoint_every_n_steps", "5")],
                       capture_output=True, text=True, env=env, timeout=900)
    assert p.returncode == -9, p.stdout[-3000:] + p.stderr[-3000:]
    run_dir = _only_run_dir(tmp_path)
    last = json.loads((run_dir / "checkpoints" / "last.json").read_text())["tag"]
    state = json.loads((run_dir / "checkpoints" / last / "state.json").read_text())
    assert last == "step-00000005"
    assert (state["phase"], state["phase_index"], state["epoch"], state["batches_done"]) == ("all", 2, 2, 1)
    assert main(["--resume", str(run_dir)]) == 0  # in this process: the variables are matched by order
    res = json.loads((run_dir / "results.json").read_text())
    assert res["status"] == "completed" and res["resumed_from"] == "step-00000005"
    assert _metrics(run_dir) == _metrics(clean_dir)  # every epoch's losses, steps and learning rates
    assert res["test_accuracy"] == clean["test_accuracy"] and res["test_loss"] == clean["test_loss"]
    # the optimizer continued inside phase 3: 2 steps in all, not 1 after the restart
    assert [(p["phase"], p["epochs"], p["optimizer_iterations"]) for p in res["phases"]] == \
        [(p["phase"], p["epochs"], p["optimizer_iterations"]) for p in clean["phases"]]
    assert res["tested_epoch"] == clean["tested_epoch"]
    for i, (x, y) in enumerate(zip(_weights(run_dir, "epoch-0003"), _weights(clean_dir, "epoch-0003"))):
        np.testing.assert_array_equal(x, y, err_msg=f"variable {i}")
    assert res["backend"] == keras.backend.backend()
