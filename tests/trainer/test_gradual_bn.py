"""Progressive unfreezing and the BatchNorm policy end to end on real CIFAR-10 images.

* ``gradual_unfreeze`` on the shared VGG16 weights: head, then the top 1, 2, 3 blocks, the
  frozen-prefix cache cut moving down one block per stage, the audit shrinking with it.
* ``bn: train`` / ``bn: frozen`` on MobileNetV2 (BatchNorm after every conv, random init):
  the moving statistics of the trainable block's BN layers change under ``bn: train`` and
  only those; every other BN statistic and every frozen weight is bit-identical; under
  ``bn: frozen`` no statistic moves. ``bn: train`` keeps the frozen-prefix cache (the
  prefix has only frozen BN, no Dropout) and gives the model that training end to end gives.
* ``gradual_unfreeze`` with ``bn: train``: a SIGKILL in stage 2 resumes exactly (the trained
  BN statistics are part of the checkpoint).
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
from marks import slow_on

from kbench.config import parse
from kbench.run import main, run

HERE = Path(__file__).resolve().parent

# 3 train images per class, batches of 10 (see tests/trainer/test_phases.py)
ARGS = ["--model.image_size", "32", "--model.head", "gap", "--data.source", "folder", "--data.batch_size", "10",
        "--data.max_train_per_class", "3", "--data.max_test_per_class", "2", "--trainer.inference_batches", "0",
        "--trainer.enable_progress_bar", "false", "--trainer.precision", "float32"]
BLOCK = {5: 3 * (9 * 512 * 512 + 512), 4: 9 * 256 * 512 + 512 + 2 * (9 * 512 * 512 + 512),
         3: 9 * 128 * 256 + 256 + 2 * (9 * 256 * 256 + 256)}  # VGG16 conv parameters per block
MNV2_TOP_BN = ["block_16_expand_BN", "block_16_depthwise_BN", "block_16_project_BN", "Conv_1_bn"]
MNV2_TOP = ("block_16_", "Conv_1")  # the layers blocks:1 trains (out_relu has no variables)


def test_gradual_unfreeze_moves_the_cache_cut_down(cifar_dir, vgg16_weights, tmp_path):
    results = run(parse([*ARGS, "--model.backbone", "vgg16", "--model.weights", str(vgg16_weights),
                         "--data.root", str(cifar_dir), "--trainer.default_root_dir", str(tmp_path),
                         "--recipe.name", "gradual_unfreeze", "--recipe.epochs", "1", "--recipe.fine_tune_epochs", "1",
                         "--recipe.unfreeze_blocks", "3"]))
    (run_dir,) = Path(tmp_path).iterdir()
    assert json.loads((run_dir / "results.json").read_text())["phases"] == results["phases"]
    rows = results["phases"]
    assert [r["phase"] for r in rows] == ["feature_extraction", "unfreeze_1", "unfreeze_2", "unfreeze_3"]
    assert [r["cache_cut"] for r in rows] == ["block5_pool", "block4_pool", "block3_pool", "block2_pool"]
    assert [r["learning_rate"] for r in rows] == pytest.approx([1e-3, 1e-4, 1e-4, 1e-4])
    trainable = [r["trainable_params"] for r in rows]
    assert [b - a for a, b in zip(trainable, trainable[1:])] == [BLOCK[5], BLOCK[4], BLOCK[3]]
    # the audit compares the 26 VGG16 conv variables (13 kernels, 13 biases) that each stage leaves frozen
    assert [r["frozen_variables_checked"] for r in rows] == [26, 20, 14, 8]
    assert all(r["bn_layers_training"] == [] for r in rows)
    with open(run_dir / "metrics.csv") as f:
        metrics = list(csv.DictReader(f))
    assert [(m["phase"], m["epoch"]) for m in metrics] == [
        ("feature_extraction", "1"), ("unfreeze_1", "2"), ("unfreeze_2", "3"), ("unfreeze_3", "4")]


def test_more_stages_than_blocks_fail_before_the_run_folder(cifar_dir, vgg16_weights, tmp_path):
    from kbench import KbenchError

    with pytest.raises(KbenchError, match=r"^phase 'unfreeze_6': train 'from:block0' \(= blocks:6\) is deeper than "
                                          r"'vgg16' goes: it has only 5 numbered blocks"):
        run(parse([*ARGS, "--model.backbone", "vgg16", "--model.weights", str(vgg16_weights), "--data.root",
                   str(cifar_dir), "--trainer.default_root_dir", str(tmp_path / "runs"), "--recipe.name",
                   "gradual_unfreeze", "--recipe.unfreeze_blocks", "6"]))
    assert not (tmp_path / "runs").exists()


def _values(layers) -> dict[str, np.ndarray]:
    return {f"{la.name}/{v.name}": np.array(keras.ops.convert_to_numpy(v.value), copy=True)
            for la in layers for v in la.variables}


def _fit_top_block(cifar_dir, root, bn: str, cache: str) -> tuple[dict, dict, dict]:
    """MobileNetV2 (random init, seed 7) trained one epoch on ``blocks:1`` with ``bn``; returns
    the phase's results row and the backbone's variables before and after."""
    from kbench.data import DataModule
    from kbench.models import build_model
    from kbench.recipes import Recipe, phase_configs, resolve_phases
    from kbench.trainer import Trainer

    trainer = Trainer(seed=7, default_root_dir=str(root), enable_progress_bar=False, inference_batches=0,
                      precision="float32")
    dm = DataModule("folder", str(cifar_dir), batch_size=10, seed=7, max_train_per_class=3, max_test_per_class=2)
    dm.setup()
    tm = build_model("mobilenetv2", "none", 32, "gap", 0.5, "auto", 10, dm.class_names)
    phases = resolve_phases(phase_configs([{"name": "top", "epochs": 1, "learning_rate": 1e-3,
                                            "train": "blocks:1", "bn": bn}]), "block_16")
    before = _values(tm.base.layers)
    (row,) = trainer.fit(tm, dm, Recipe("bn", phases, cache=cache))["phases"]
    return row, before, _values(tm.base.layers)


@pytest.fixture(scope="module")
def bn_train_cached(cifar_dir, tmp_path_factory):
    return _fit_top_block(cifar_dir, tmp_path_factory.mktemp("bn_train"), "train", "auto")


def _is_top(key: str) -> bool:
    return key.startswith(MNV2_TOP)


def test_bn_train_moves_only_the_trainable_blocks_statistics(bn_train_cached):
    row, before, after = bn_train_cached
    assert row["bn_layers_training"] == MNV2_TOP_BN
    assert row["cache_cut"] == "block_15_add"  # bn: train keeps the cache: the prefix has no Dropout
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    stats = {f"{la}/{s}" for la in MNV2_TOP_BN for s in ("moving_mean", "moving_variance")}
    assert stats <= changed  # allowed to change, and did
    assert all(_is_top(k) for k in changed)  # nothing below the top block moved, bit for bit
    frozen = [k for k in before if not _is_top(k)]
    assert row["frozen_variables_checked"] == len(frozen) > 200
    assert sum(k.endswith("moving_mean") for k in frozen) == 52 - 4  # every other BN's statistics were audited


def test_bn_frozen_moves_no_statistic(cifar_dir, tmp_path):
    row, before, after = _fit_top_block(cifar_dir, tmp_path, "frozen", "auto")
    assert row["bn_layers_training"] == [] and row["cache_cut"] == "block_15_add"
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed and all(_is_top(k) for k in changed)
    assert not any("moving_" in k for k in changed)
    # the frozen BN layers of the top block are audited too
    assert row["frozen_variables_checked"] == sum(not _is_top(k) for k in before) + 4 * 4


def test_bn_train_cached_and_uncached_give_the_same_model(cifar_dir, tmp_path, bn_train_cached):
    cached_row, _, cached = bn_train_cached
    row, _, uncached = _fit_top_block(cifar_dir, tmp_path, "train", "off")
    assert row["cache_cut"] is None and row["bn_layers_training"] == cached_row["bn_layers_training"]
    assert row["optimizer_iterations"] == cached_row["optimizer_iterations"] > 0
    for k in cached:
        np.testing.assert_allclose(cached[k], uncached[k], rtol=1e-4, atol=1e-6, err_msg=k)


GRADUAL_BN = [*ARGS, "--model.backbone", "mobilenetv2", "--model.weights", "none", "--recipe.name", "gradual_unfreeze",
              "--recipe.epochs", "1", "--recipe.fine_tune_epochs", "1", "--recipe.unfreeze_blocks", "2",
              "--recipe.bn", "train"]


def _metrics(run_dir) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return [{k: r[k] for k in ("phase", "epoch", "step", "loss", "accuracy", "val_loss", "val_accuracy",
                                   "learning_rate")} for r in csv.DictReader(f)]


def _checkpoint(run_dir, tag) -> list[np.ndarray]:
    with np.load(run_dir / "checkpoints" / tag / "model.npz") as z:
        return [z[k] for k in sorted(z.files)]


@slow_on("tensorflow", "jax")  # CI time (2026-12-05 CI): 80-150 s on TensorFlow, 33-46 s on JAX; in CI on torch
def test_gradual_bn_train_sigkill_in_stage_2_then_exact_resume(cifar_dir, tmp_path):
    (tmp_path / "clean").mkdir()
    clean = run(parse([*GRADUAL_BN, "--data.root", str(cifar_dir), "--trainer.default_root_dir",
                       str(tmp_path / "clean")]))
    (clean_dir,) = (tmp_path / "clean").iterdir()
    assert [p["cache_cut"] for p in clean["phases"]] == ["out_relu", "block_15_add", "block_14_add"]
    assert [len(p["bn_layers_training"]) for p in clean["phases"]] == [0, 4, 7]  # + block_15's three BN
    # 2 steps per epoch; a step checkpoint at step 5 (epoch 3 = stage 2, batch 1), killed after batch 2
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1])}
    p = subprocess.run([sys.executable, str(HERE.parent / "faults.py"), "--signal", "KILL@3:2", "--", *GRADUAL_BN,
                        "--data.root", str(cifar_dir), "--trainer.default_root_dir", str(tmp_path / "killed"),
                        "--trainer.checkpoint_every_n_steps", "5"], capture_output=True, text=True, env=env, timeout=900)
    assert p.returncode == -9, p.stdout[-3000:] + p.stderr[-3000:]
    (run_dir,) = (tmp_path / "killed").iterdir()
    assert json.loads((run_dir / "checkpoints" / "last.json").read_text())["tag"] == "step-00000005"
    assert main(["--resume", str(run_dir)]) == 0
    res = json.loads((run_dir / "results.json").read_text())
    assert res["status"] == "completed" and res["resumed_from"] == "step-00000005"
    assert _metrics(run_dir) == _metrics(clean_dir)
    assert res["test_accuracy"] == clean["test_accuracy"] and res["test_loss"] == clean["test_loss"]
    assert [(p["phase"], p["optimizer_iterations"], p["bn_layers_training"]) for p in res["phases"]] == \
        [(p["phase"], p["optimizer_iterations"], p["bn_layers_training"]) for p in clean["phases"]]
    for i, (x, y) in enumerate(zip(_checkpoint(run_dir, "epoch-0003"), _checkpoint(clean_dir, "epoch-0003"))):
        np.testing.assert_array_equal(x, y, err_msg=f"variable {i}")
