"""Schedules, layer-wise rates, accumulation and clipping inside Trainer.fit (issue 12): the per-step
learning-rate trace (lr.csv), metrics.csv, results.json, and an exact resume after Ctrl-C."""

from __future__ import annotations

import csv
import json
import signal
from pathlib import Path

import keras
import numpy as np
import pytest
from faults import Fault

from kbench.recipes import Phase, Recipe
from kbench.recipes.schedules import PhaseSchedule
from kbench.trainer.callbacks import TrainingInterrupted

# 90 train images (batch 16: 6 batches an epoch), accumulate 2 -> 3 updates an epoch.
# Phase 2 trains the top block of MobileNetV3Small (its registry top block) with layer-wise decay.
PHASES = [Phase("head", 2, 1e-2, "none", schedule="cosine", warmup_steps=2, final_lr_fraction=0.1),
          Phase("top", 2, 1e-3, "from:expanded_conv_10", schedule="one_cycle", layer_decay=0.5,
                top_block="expanded_conv_10")]


def _fit(cifar_dir, root, callbacks=(), ckpt_path=None):
    from kbench.data import DataModule
    from kbench.models import build_model
    from kbench.trainer import Trainer

    trainer = Trainer(seed=3, default_root_dir=str(root), enable_progress_bar=False, inference_batches=0,
                      callbacks=list(callbacks))
    dm = DataModule(source="folder", root=str(cifar_dir), batch_size=16, seed=3, max_train_per_class=10,
                    max_test_per_class=3).setup()
    tm = build_model(backbone="mobilenetv3small", weights="none", image_size=32, head="gap", head_dropout=0.2,
                     preprocess="auto", num_classes=dm.num_classes, class_names=dm.class_names)
    recipe = Recipe("toolkit", PHASES, accumulate_steps=2, clip_norm=1.0)
    return trainer.fit(tm, dm, recipe, ckpt_path=ckpt_path), tm


def _csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _only_run_dir(root) -> Path:
    (d,) = [p for p in Path(root).iterdir() if p.is_dir()]
    return d


@pytest.fixture(scope="module")
def clean(cifar_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    res, tm = _fit(cifar_dir, root)
    return res, [keras.ops.convert_to_numpy(v.value) for v in tm.keras_model.weights], _only_run_dir(root)


def test_lr_trace_metrics_and_results_follow_the_schedules(clean):
    res, _, run_dir = clean
    trace = _csv(run_dir / "lr.csv")
    assert [r["phase"] for r in trace] == ["head"] * 12 + ["top"] * 12  # 2 epochs x 6 batches per phase
    assert [int(r["step"]) for r in trace] == list(range(1, 25))
    assert [int(r["update"]) for r in trace[:12]] == [i // 2 for i in range(12)]  # 2 batches per update
    head = PhaseSchedule("cosine", 1e-2, updates=6, warmup=2, final_fraction=0.1, accumulate=2)
    top = PhaseSchedule("one_cycle", 1e-3, updates=6, accumulate=2)
    want = [float(keras.ops.convert_to_numpy(s(i))) for s in (head, top) for i in range(12)]
    np.testing.assert_allclose([float(r["learning_rate"]) for r in trace], want, rtol=1e-6)
    assert float(trace[0]["learning_rate"]) == 0.0 and max(want[:12]) == pytest.approx(1e-2)
    # metrics.csv: the optimizer's rate at the end of each epoch (the next update's rate)
    rows = _csv(run_dir / "metrics.csv")
    ends = [float(keras.ops.convert_to_numpy(s(i))) for s, i in ((head, 6), (head, 12), (top, 6), (top, 12))]
    np.testing.assert_allclose([float(r["learning_rate"]) for r in rows], ends, rtol=1e-5)
    p1, p2 = res["phases"]
    assert (p1["schedule"], p1["optimizer_updates_planned"], p1["warmup_updates"]) == ("cosine", 6, 2)
    assert (p2["schedule"], p2["warmup_updates"]) == ("one_cycle", 0)
    assert p1["effective_batch_size"] == 32 and p1["optimizer_iterations"] == 6 == p2["optimizer_iterations"]
    assert p1["layer_multipliers"] is None and set(p2["layer_multipliers"].values()) == {0.5, 1.0}
    assert json.loads((run_dir / "results.json").read_text())["phases"][1]["learning_rate"] == 1e-3


def test_ctrl_c_mid_schedule_then_exact_resume(cifar_dir, tmp_path, clean):
    res_clean, w_clean, clean_dir = clean
    with pytest.raises(TrainingInterrupted):  # batch 3 of epoch 3: inside an accumulation window of phase 2
        _fit(cifar_dir, tmp_path, callbacks=[Fault(sig=signal.SIGINT, at=(3, 3))])
    run_dir = _only_run_dir(tmp_path)
    assert json.loads((run_dir / "checkpoints" / "last.json").read_text())["tag"] == "interrupted"
    res, tm = _fit(cifar_dir, tmp_path / "unused", ckpt_path=str(run_dir))
    assert res["resumed_from"] == "interrupted"
    assert _csv(run_dir / "lr.csv") == _csv(clean_dir / "lr.csv")
    strip = [{k: v for k, v in r.items() if k not in ("images_per_s", "epoch_time_s")} for r in _csv(run_dir / "metrics.csv")]
    assert strip == [{k: v for k, v in r.items() if k not in ("images_per_s", "epoch_time_s")}
                     for r in _csv(clean_dir / "metrics.csv")]
    for a, b in zip([keras.ops.convert_to_numpy(v.value) for v in tm.keras_model.weights], w_clean):
        np.testing.assert_array_equal(a, b)
    assert (res["test_loss"], res["test_accuracy"]) == (res_clean["test_loss"], res_clean["test_accuracy"])


@pytest.mark.parametrize("extra,match", [
    (["--recipe.warmup_steps", "1000"], "phase 'feature_extraction': the warm-up (1000 optimizer updates) is not "
                                        "shorter than the phase (3 updates: 1 epoch(s) x 3 batches)"),
    (["--recipe.lr_mult", "{blok5: 0.5}"], "phase 'feature_extraction': lr_mult prefix 'blok5' matches no layer of "
                                           "'mobilenetv3small' or its head"),
])
def test_data_dependent_mistakes_stop_before_the_run_folder(cifar_dir, tmp_path, capsys, extra, match):
    """A warm-up longer than its phase in steps, an lr_mult prefix that names no layer: one message, exit 2,
    after the data are read but before a run folder is written."""
    from kbench.run import main

    code = main(["--model.backbone", "mobilenetv3small", "--model.image_size", "32", "--model.weights", "none",
                 "--data.source", "folder", "--data.root", str(cifar_dir), "--data.batch_size", "32",
                 "--recipe.epochs", "1", "--recipe.fine_tune_epochs", "1", "--trainer.limit_train_batches", "3",
                 "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / "runs"),
                 *extra])
    out = " ".join(capsys.readouterr().out.split())
    assert code == 2 and match in out and "Traceback" not in out, out
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
