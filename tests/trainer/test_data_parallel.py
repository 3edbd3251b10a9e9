"""Data-parallel training (issue 15) on 2 replicas of this CPU: JAX with 2 virtual CPU
devices (keras.distribution), TensorFlow with 2 logical CPU devices (MirroredStrategy),
PyTorch with 2 gloo processes under torchrun (DDP). Every run is a real
``kbench.run`` process (tests/faults.py), so the devices are made before the backend
starts; nox runs this file once per backend.

The runs train VGG16 (real weights, 32 px) with a GAP head without dropout: dropout masks
are drawn per replica on TensorFlow and PyTorch (so they differ from one device's), and
VGG16 has no BatchNormalization (whose batch statistics are per replica there too).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import VGG16_WEIGHTS
from marks import BACKEND, slow_on

from kbench import KbenchError
from kbench.backend import distributed
from kbench.data import BatchSequence
from kbench.models.saved import load_saved_model
from kbench.trainer import replicas

HERE = Path(__file__).resolve().parent
# 70 training images: batches of 15 (none divides by 2: each replicated whole on JAX, fed whole to every PyTorch
# process) + a last one of 10 (split); TensorFlow cannot split a first batch unevenly: 16 (4 x 16 + 6, all split)
BATCH = "16" if BACKEND == "tensorflow" else "15"
# fine_tune: 1 epoch on cached features (head only) + 2 epochs of the top blocks; 10 validation, 50 test images
ARGS = ["--model.backbone", "vgg16", "--model.image_size", "32", "--model.head", "gap", "--model.head_dropout", "0",
        "--data.source", "folder", "--data.batch_size", BATCH, "--data.max_train_per_class",
        "8", "--data.max_test_per_class", "5", "--recipe.epochs", "1", "--recipe.fine_tune_epochs", "2",
        "--trainer.inference_batches", "0", "--trainer.enable_progress_bar", "false",
        "--trainer.precision", "float32"]
DP = ["--trainer.strategy", "data_parallel"] + ([] if BACKEND == "torch" else ["--trainer.devices", "2"])
# float summation order differs between one device and two replicas
TOL = {"rtol": 1e-4, "atol": 1e-5}


def _kbench(cifar_dir, root, *args, dp: bool, faults=(), resume=None):
    """One kbench run (2 torchrun processes for PyTorch data parallel); returns the process."""
    tail = ["--resume", str(resume)] if resume else [*ARGS, "--data.root", str(cifar_dir), "--model.weights",
                                                     str(VGG16_WEIGHTS), "--trainer.default_root_dir", str(root)]
    torchrun = dp and BACKEND == "torch"
    # torchrun's argument parser drops the first "--" of the script's arguments
    script = [str(HERE.parent / "faults.py"), *(["--"] if torchrun else []), *faults, "--", *tail, *args,
              *(DP if dp else [])]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] \
        if torchrun else [sys.executable]
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1])}
    return subprocess.run([*launch, *script], capture_output=True, text=True, env=env, timeout=900)


def _ok(p):
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]


def _only_run_dir(root) -> Path:
    (d,) = [p for p in Path(root).iterdir() if p.is_dir()]
    return d


def _metrics(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _weights(run_dir):
    return [np.asarray(w) for w in load_saved_model(str(run_dir / "model.keras")).model.get_weights()]


@pytest.fixture(scope="module")
def one_device(cifar_dir, vgg16_weights, tmp_path_factory):
    root = tmp_path_factory.mktemp("single")
    _ok(_kbench(cifar_dir, root, dp=False))
    return _only_run_dir(root)


@pytest.fixture(scope="module")
def two_replicas(cifar_dir, vgg16_weights, tmp_path_factory):
    root = tmp_path_factory.mktemp("dp")
    _ok(_kbench(cifar_dir, root, dp=True))
    return root, _only_run_dir(root)


def test_data_parallel_trains_as_one_device(one_device, two_replicas):
    root, run_dir = two_replicas
    assert [p.name for p in Path(root).iterdir()] == [run_dir.name]  # one run folder, written once
    res, ref = (json.loads((d / "results.json").read_text()) for d in (run_dir, one_device))
    par = res["parallel"]
    assert (par["strategy"], par["replicas"], par["global_batch_size"], par["per_device_batch_size"],
            par["lr_factor"]) == ("data_parallel", 2, int(BATCH), int(BATCH) / 2, 1.0)
    assert par["engine"] == distributed.ENGINES[BACKEND]
    assert par["processes"] == (2 if BACKEND == "torch" else 1)
    assert ref["parallel"]["strategy"] == "single" and ref["parallel"]["replicas"] == 1
    rows, ref_rows = _metrics(run_dir), _metrics(one_device)
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows] == ["5", "10", "15"]
    keys = ["val_loss", "val_accuracy"] + ([] if BACKEND == "torch" else ["loss", "accuracy"])  # torch: rank 0's part
    for k in keys:
        np.testing.assert_allclose([float(r[k]) for r in rows], [float(r[k]) for r in ref_rows], **TOL, err_msg=k)
    for a, b in zip(_weights(run_dir), _weights(one_device)):
        np.testing.assert_allclose(a, b, **TOL)
    assert res["test_accuracy"] == ref["test_accuracy"]
    np.testing.assert_allclose(res["test_loss"], ref["test_loss"], **TOL)


def test_data_parallel_kill_then_resume_is_exact(cifar_dir, tmp_path, two_replicas):
    _, clean = two_replicas
    killed = _kbench(cifar_dir, tmp_path, dp=True, faults=("--signal", "KILL@3:2"))
    assert killed.returncode != 0
    run_dir = _only_run_dir(tmp_path)
    assert not (run_dir / "results.json").exists()
    _ok(_kbench(cifar_dir, tmp_path, dp=True, resume=run_dir))
    assert _metrics(run_dir) == _metrics(clean) or all(
        np.allclose(float(a[k]), float(b[k]), **TOL) for a, b in zip(_metrics(run_dir), _metrics(clean))
        for k in ("loss", "val_loss", "val_accuracy"))
    for a, b in zip(_weights(run_dir), _weights(clean)):
        np.testing.assert_allclose(a, b, **TOL)


@pytest.mark.skipif(BACKEND != "torch", reason="several processes: PyTorch under torchrun")
def test_ctrl_c_on_one_process_stops_every_process_and_resumes_exactly(cifar_dir, tmp_path, two_replicas):
    _, clean = two_replicas
    p = _kbench(cifar_dir, tmp_path, dp=True, faults=("--signal", "INT@3:2", "--rank", "1"))
    assert p.returncode != 0 and "interrupted (SIGINT)" in p.stdout, p.stdout[-3000:] + p.stderr[-3000:]
    assert "ChildFailedError" not in p.stderr or "exitcode: 130" in p.stderr  # stopped, not crashed
    run_dir = _only_run_dir(tmp_path)
    assert json.loads((run_dir / "results.json").read_text())["status"] == "interrupted"
    _ok(_kbench(cifar_dir, tmp_path, dp=True, resume=run_dir))
    for a, b in zip(_weights(run_dir), _weights(clean)):
        np.testing.assert_allclose(a, b, **TOL)


@slow_on("jax", "tensorflow")  # CI time; the same resume path as the kill test above, which runs everywhere
def test_one_device_checkpoint_resumes_data_parallel(cifar_dir, tmp_path, one_device):
    assert _kbench(cifar_dir, tmp_path, dp=False, faults=("--signal", "KILL@2:3")).returncode != 0
    run_dir = _only_run_dir(tmp_path)
    _ok(_kbench(cifar_dir, tmp_path, dp=True, resume=run_dir))
    assert json.loads((run_dir / "results.json").read_text())["parallel"]["replicas"] == 2
    for a, b in zip(_weights(run_dir), _weights(one_device)):
        np.testing.assert_allclose(a, b, **TOL)


# ------------------------------------------------------------------ in this process
def test_each_process_gets_its_contiguous_part_and_a_ragged_batch_whole():
    x, y = np.arange(20.0)[:, None], np.arange(20)
    seq = BatchSequence(x, y, 8, None)
    seq.shard = (1, 2)
    assert seq[0][1].tolist() == [4, 5, 6, 7] and seq[1][1].tolist() == [12, 13, 14, 15]
    assert seq[2][1].tolist() == [18, 19]  # the last batch (4) divides by 2: split...
    seq.shard = (1, 3)
    assert seq[0][1].tolist() == list(range(8)) and seq[2][1].tolist() == [16, 17, 18, 19]  # ...not by 3: whole
    assert seq.batch_sizes() == [8, 8, 4]  # the global batches, for images/s


def test_one_device_summary_and_rules():
    assert distributed.current().strategy == "single"
    s = replicas.summary(64, "none")
    assert (s["replicas"], s["processes"], s["global_batch_size"], s["per_device_batch_size"]) == (1, 1, 64, 64.0)
    assert replicas.lr_factor("linear") == 1.0
    with pytest.raises(KbenchError, match="trainer.lr_scaling='square'.*none, linear"):
        replicas.check_lr_scaling("square")


def test_several_processes_refuse_the_lr_finder_and_swa(monkeypatch):
    from types import SimpleNamespace as Recipe

    monkeypatch.setattr(distributed, "_CURRENT", [distributed.Replicas("data_parallel", 2, 2, 1)])
    assert replicas.lr_factor("linear") == 2.0
    dm = Recipe(batch_size=16)
    replicas.scale_batch(dm, "none")
    assert dm.batch_size == 16  # none: data.batch_size is the global batch
    replicas.scale_batch(dm, "linear")
    replicas.scale_batch(dm, "linear")  # once only
    assert (dm.batch_size, dm.batch_size_per_device) == (32, 16)
    assert replicas.summary(dm.batch_size, "linear")["per_device_batch_size"] == 16.0
    phases = [Recipe(learning_rate=1e-3), Recipe(learning_rate="auto")]
    with pytest.raises(KbenchError, match="learning_rate: auto"):
        replicas.check_features(Recipe(phases=phases, swa_epochs=0), "none")
    with pytest.raises(KbenchError, match="SWA"):
        replicas.check_features(Recipe(phases=phases[:1], swa_epochs=2), "none")
    replicas.check_features(Recipe(phases=phases[:1], swa_epochs=0), "none")  # fine


@pytest.mark.parametrize("devices,match", [(5, "trainer.devices=5 but 1 .* available"),
                                           ([0, 0], r"trainer.devices=\[0, 0\]: .* distinct"),
                                           (0, "trainer.devices=0: give a device count of at least 1")])
def test_devices_that_do_not_exist_are_refused(devices, match):
    with pytest.raises(KbenchError, match=match):
        distributed._indices(devices, 1, "cpu")


def test_bad_strategy_settings_are_refused():
    with pytest.raises(KbenchError, match="trainer.strategy='ring'"):
        distributed.start("ring")
    with pytest.raises(KbenchError, match="strategy=single with trainer.devices=2"):
        distributed.start("single", 2)


@pytest.mark.skipif(BACKEND != "jax", reason="JAX only")
def test_several_jax_processes_are_refused_with_the_reason(monkeypatch):
    monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "2")
    with pytest.raises(KbenchError, match="does not run JAX over several processes yet.*torchrun"):
        distributed.start("data_parallel")


@pytest.mark.skipif(BACKEND != "torch", reason="PyTorch data parallel needs torchrun")
def test_torch_data_parallel_outside_torchrun_says_how(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(KbenchError, match="torchrun --nproc_per_node 2 -m kbench.run"):
        distributed.start("data_parallel", 2)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow only")
def test_tensorflow_refuses_a_batch_that_does_not_divide_by_the_replicas(monkeypatch):
    from types import SimpleNamespace as Obj

    monkeypatch.setattr(distributed, "_CURRENT", [distributed.Replicas("data_parallel", 2, 1, 0, (),
                                                                       distributed.ENGINES["tensorflow"])])
    lines = []
    trainer = Obj(lr_scaling="none", tools=Obj(log=lines.append))
    with pytest.raises(KbenchError, match="data.batch_size=15 does not divide by the 2 replicas"):
        replicas.begin_fit(trainer, Obj(batch_size=15), Obj(phases=[], swa_epochs=0))
    replicas.begin_fit(trainer, Obj(batch_size=16), Obj(phases=[], swa_epochs=0))
    assert lines == ["data parallel: 2 replicas in 1 process(es) on tf.distribute.MirroredStrategy, global batch 16 "
                     "(8 per device), learning rates x1 (lr_scaling none)"]


def test_bad_strategy_on_the_command_line_is_one_line(capsys):
    from kbench.run import main

    with pytest.raises(SystemExit) as e:
        main(["--trainer.strategy", "ring"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "trainer.strategy" in err and "data_parallel" in err and "Traceback" not in err
