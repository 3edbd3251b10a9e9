"""Experiment tracking (trainer.loggers): TensorBoard event files read back with
TensorBoard's own reader (no TensorFlow needed), an MLflow run in the local file store,
a Ctrl-C + --resume that continues both, and the unknown-name error."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kbench import KbenchError
from kbench.config import parse
from kbench.run import run

HERE = Path(__file__).resolve().parent
# fine_tune: 1 feature-extraction epoch + 1 fine-tune epoch (two phases), 3 batches each
ARGS = ["--model.backbone", "mobilenetv3small", "--model.image_size", "32", "--model.weights", "none",
        "--data.source", "folder", "--data.batch_size", "32", "--recipe.epochs", "1", "--recipe.fine_tune_epochs",
        "1", "--trainer.limit_train_batches", "3", "--trainer.inference_batches", "0",
        "--trainer.enable_progress_bar", "false", "--trainer.precision", "float32"]
EPOCH_TAGS = {f"epoch/{k}" for k in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "images_per_s")}


def _env():
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1])}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _only_run_dir(root) -> Path:
    (d,) = [p for p in Path(root).iterdir() if p.is_dir()]
    return d


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _check_tensorboard(run_dir, n_epochs):
    """Event scalars equal lr.csv (per step) and metrics.csv (per epoch); the config text is config.yaml."""
    acc = _events(run_dir)
    scalars = set(acc.Tags()["scalars"])
    assert {"train_step/loss", "train_step/learning_rate", "train_step/images_per_s", "test/loss",
            "test/accuracy"} | EPOCH_TAGS <= scalars
    lr_rows, metric_rows = _rows(run_dir / "lr.csv"), _rows(run_dir / "metrics.csv")
    lr = acc.Scalars("train_step/learning_rate")
    assert [e.step for e in lr] == [int(r["step"]) for r in lr_rows] == list(range(1, len(lr_rows) + 1))
    assert [e.value for e in lr] == pytest.approx([float(r["learning_rate"]) for r in lr_rows], rel=1e-6)
    assert [e.step for e in acc.Scalars("train_step/loss")] == [e.step for e in lr]
    assert len(metric_rows) == n_epochs
    for field in ("loss", "val_accuracy", "learning_rate"):
        events = acc.Scalars(f"epoch/{field}")
        assert [e.step for e in events] == [int(r["epoch"]) for r in metric_rows] == list(range(1, n_epochs + 1))
        assert [e.value for e in events] == pytest.approx([float(r[field]) for r in metric_rows], rel=1e-6)
    results = json.loads((run_dir / "results.json").read_text())
    (test,) = acc.Scalars("test/accuracy")
    assert (test.step, test.value) == (n_epochs, pytest.approx(results["test_accuracy"], rel=1e-6))
    (text,) = acc.Tensors("config/text_summary")
    shown = text.tensor_proto.string_val[0].decode()
    assert textwrap.dedent(shown) == (run_dir / "config.yaml").read_text()
    return acc


def test_tensorboard_from_the_command_line(cifar_dir, tmp_path):
    r = subprocess.run([sys.executable, "-m", "kbench.run", *ARGS, "--data.root", str(cifar_dir),
                        "--trainer.default_root_dir", str(tmp_path), "--trainer.loggers", "[csv,tensorboard]"],
                       capture_output=True, text=True, env=_env(), timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run_dir = _only_run_dir(tmp_path)
    acc = _check_tensorboard(run_dir, 2)
    assert len(acc.Scalars("train_step/loss")) == 6  # 2 epochs x 3 batches
    assert not (run_dir / "mlruns").exists() and not (run_dir / "mlflow_run_id").exists()


def _mlflow_run(run_dir):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"file:{run_dir / 'mlruns'}")
    return client, client.get_run((run_dir / "mlflow_run_id").read_text().strip())


def _check_mlflow(run_dir, n_epochs):
    client, mrun = _mlflow_run(run_dir)
    assert mrun.info.status == "FINISHED"
    assert mrun.data.params["recipe.name"] == "fine_tune" and mrun.data.params["trainer.limit_train_batches"] == "3"
    metric_rows = _rows(run_dir / "metrics.csv")
    for field in ("loss", "accuracy", "val_loss", "learning_rate"):
        history = sorted(client.get_metric_history(mrun.info.run_id, f"epoch/{field}"), key=lambda m: m.step)
        assert [m.step for m in history] == list(range(1, n_epochs + 1))
        assert [m.value for m in history] == pytest.approx([float(r[field]) for r in metric_rows], rel=1e-6)
    results = json.loads((run_dir / "results.json").read_text())
    assert mrun.data.metrics["test/accuracy"] == pytest.approx(results["test_accuracy"], rel=1e-6)
    artifacts = Path(mrun.info.artifact_uri.removeprefix("file://"))
    assert (artifacts / "model.keras").read_bytes() == (run_dir / "model.keras").read_bytes()
    assert json.loads((artifacts / "results.json").read_text()) == results
    return mrun


def test_mlflow_local_store_in_process(cifar_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    results = run(parse([*ARGS, "--data.root", str(cifar_dir), "--trainer.default_root_dir", str(tmp_path),
                         "--trainer.loggers", "[mlflow]"]))
    run_dir = _only_run_dir(tmp_path)
    assert results["test_accuracy"] == json.loads((run_dir / "results.json").read_text())["test_accuracy"]
    _check_mlflow(run_dir, 2)
    assert (run_dir / "metrics.csv").exists() and (run_dir / "lr.csv").exists()  # csv stays on
    assert not (run_dir / "tensorboard").exists()


@pytest.mark.slow  # two kbench.run processes: ~100 s on jax/tensorflow on the shared 2-core machine
def test_ctrl_c_then_resume_continues_both_trackers(cifar_dir, tmp_path):
    """SIGINT in epoch 2 (phase fine_tune): the MLflow run is marked KILLED, --resume continues it,
    and TensorBoard shows every step once, equal to the resumed run's lr.csv."""
    cmd = [sys.executable, str(HERE.parent / "faults.py"), "--signal", "INT@2:1", "--", *ARGS,
           "--data.root", str(cifar_dir), "--trainer.default_root_dir", str(tmp_path),
           "--trainer.loggers", "[csv,tensorboard,mlflow]"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=900)
    assert p.returncode == 130, p.stdout[-3000:] + p.stderr[-3000:]
    run_dir = _only_run_dir(tmp_path)
    first_id = (run_dir / "mlflow_run_id").read_text().strip()
    assert _mlflow_run(run_dir)[1].info.status == "KILLED"
    r = subprocess.run([sys.executable, "-m", "kbench.run", "--resume", str(run_dir)], capture_output=True,
                       text=True, env=_env(), timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert _check_mlflow(run_dir, 2).info.run_id == first_id
    acc = _check_tensorboard(run_dir, 2)
    assert len(acc.Scalars("train_step/loss")) == 6
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 2


def test_unknown_logger_is_one_error_before_any_work(cifar_dir, tmp_path):
    from kbench.trainer import Trainer

    with pytest.raises(KbenchError, match=r"unknown logger 'wandb'; allowed: csv, tensorboard, mlflow"):
        Trainer(loggers=["csv", "wandb"], default_root_dir=str(tmp_path), process_setup=False)
    r = subprocess.run([sys.executable, "-m", "kbench.run", *ARGS, "--data.root", str(cifar_dir),
                        "--trainer.default_root_dir", str(tmp_path), "--trainer.loggers", "[csv,wandb]"],
                       capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "trainer.loggers" in r.stderr and "wandb" in r.stderr and "['csv', 'tensorboard', 'mlflow']" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_csv_is_always_on():
    from kbench.trainer.tracking import check_loggers

    assert check_loggers(None) == check_loggers([]) == check_loggers(["csv"]) == ("csv",)
    assert check_loggers(["tensorboard"]) == ("csv", "tensorboard")


def test_missing_tracker_package_names_its_extra(monkeypatch):
    import importlib.util

    from kbench.trainer import tracking

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(KbenchError, match=r'mlflow needs the mlflow package.*pip install "kbench\[mlflow\]"'):
        tracking.check_loggers(["csv", "tensorboard", "mlflow"])
