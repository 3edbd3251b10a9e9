"""End to end on real CIFAR-10 images: every recipe, cache vs no cache, run folder contents, CLI errors."""

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

from kbench import xla
from kbench.config import parse
from kbench.run import run


def _cfg(cifar_dir, tmp_path, *extra):
    return parse(["--data.source", "folder", "--data.root", str(cifar_dir), "--data.batch_size", "32",
                  "--trainer.default_root_dir", str(tmp_path), "--trainer.inference_batches", "1",
                  "--trainer.enable_progress_bar", "false", "--trainer.precision", "float32", *extra])


TINY = ["--model.backbone", "mobilenetv3small", "--model.image_size", "32", "--model.weights", "none"]


def _check_run_dir(results, tmp_path, n_epochs):
    run_dir = next(Path(tmp_path).iterdir())
    files = {p.name for p in run_dir.iterdir()}
    assert {"config.yaml", "metrics.csv", "results.json", "model.keras"} <= files
    stored = json.loads((run_dir / "results.json").read_text())
    assert stored["test_accuracy"] == results["test_accuracy"] and 0.0 <= stored["test_accuracy"] <= 1.0
    assert stored["num_test"] == 100 and stored["test_images"] == 100
    assert stored["class_names"][0] == "airplane" and stored["backend"] == keras.backend.backend()
    # kbench's XLA:CPU flags (tests/test_xla.py): what this process set, none off JAX
    assert stored["xla_flags"] == xla.record() and stored["xla_flags"]["XLA_FLAGS"] == os.environ.get("XLA_FLAGS")
    if keras.backend.backend() != "jax":
        assert stored["xla_flags"]["set_by_kbench"] == []
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(1, n_epochs + 1))
    assert all(float(r["loss"]) > 0 for r in rows)
    loaded = keras.saving.load_model(run_dir / "model.keras")
    assert loaded.output.shape[-1] == 10
    return stored, rows


@pytest.mark.parametrize("recipe,epochs", [("feature_extraction", 1), pytest.param("full", 1, marks=slow_on("tensorflow", "jax")),
                                            pytest.param("scratch", 1, marks=slow_on("jax"))])  # CI time: full 83 s TF / 43 s JAX, scratch 42 s JAX
def test_recipe_end_to_end(cifar_dir, tmp_path, recipe, epochs):
    cfg = _cfg(cifar_dir, tmp_path, *TINY, "--recipe.name", recipe, "--recipe.epochs", str(epochs))
    results = run(cfg)
    stored, rows = _check_run_dir(results, tmp_path, epochs)
    assert {r["phase"] for r in rows} == {recipe}
    assert (stored["phases"][0]["cache_cut"] is not None) == (recipe == "feature_extraction")


def test_fine_tune_end_to_end_two_phases(cifar_dir, tmp_path):
    cfg = _cfg(cifar_dir, tmp_path, *TINY, "--recipe.epochs", "1", "--recipe.fine_tune_epochs", "1")
    results = run(cfg)
    stored, rows = _check_run_dir(results, tmp_path, 2)
    assert [r["phase"] for r in rows] == ["feature_extraction", "fine_tune"]
    assert float(rows[1]["learning_rate"]) == pytest.approx(float(rows[0]["learning_rate"]) / 10)
    p1, p2 = stored["phases"]
    assert p2["trainable_params"] > p1["trainable_params"]
    assert p1["non_trainable_params"] + p1["trainable_params"] == p2["non_trainable_params"] + p2["trainable_params"]


def test_seed_tutorial_end_to_end(cifar_dir, tmp_path, vgg16_weights):
    root = Path(__file__).resolve().parents[2]
    cfg = _cfg(cifar_dir, tmp_path, "--config", str(root / "configs" / "seed_tutorial.yaml"),
               "--model.weights", str(vgg16_weights), "--model.image_size", "32",
               "--data.source", "folder", "--data.root", str(cifar_dir))
    results = run(cfg)
    stored, rows = _check_run_dir(results, tmp_path, 1)
    assert stored["preprocess"] == "scale01" and stored["batch_size"] == 32 and rows[0]["phase"] == "seed_tutorial"


def _weights(tm):
    return [keras.ops.convert_to_numpy(v.value) for v in tm.keras_model.weights]


@pytest.mark.parametrize("recipe", ["feature_extraction", "fine_tune"])
def test_cache_matches_uncached_path(cifar_dir, tmp_path, vgg16_weights, recipe):
    """Same seed, same backend: training on cached prefix features gives the same model
    and test metrics as training end to end (block5_pool cut, then block4_pool cut)."""
    from kbench.data import DataModule
    from kbench.models import build_model
    from kbench.recipes import make_phases
    from kbench.trainer import Recipe, Trainer

    out = {}
    for cache in ("auto", "off"):
        trainer = Trainer(seed=7, default_root_dir=str(tmp_path / cache), enable_progress_bar=False,
                          inference_batches=0)
        dm = DataModule("folder", str(cifar_dir), batch_size=32, seed=7, max_train_per_class=12,
                        max_test_per_class=5)
        dm.setup()
        tm = build_model("vgg16", str(vgg16_weights), 32, "gap", 0.5, "auto", 10, dm.class_names)
        phases = make_phases(recipe, 1, 1e-3, 1, None, "auto", "block5")
        res = trainer.fit(tm, dm, Recipe(recipe, phases, cache=cache))
        out[cache] = (res, trainer.history, _weights(tm))
    (ra, ha, wa), (ro, ho, wo) = out["auto"], out["off"]
    cuts = [p["cache_cut"] for p in ra["phases"]]
    assert cuts == (["block5_pool"] if recipe == "feature_extraction" else ["block5_pool", "block4_pool"])
    assert all(p["cache_cut"] is None for p in ro["phases"])
    for a, o in zip(ha, ho):
        np.testing.assert_allclose([a["loss"], a["val_loss"]], [o["loss"], o["val_loss"]], rtol=2e-4)
        assert a["accuracy"] == pytest.approx(o["accuracy"], abs=1e-6)
    assert ra["test_accuracy"] == pytest.approx(ro["test_accuracy"], abs=1e-6)
    assert ra["test_loss"] == pytest.approx(ro["test_loss"], rel=2e-4)
    for a, o in zip(wa, wo):
        np.testing.assert_allclose(a, o, rtol=1e-3, atol=1e-5)


def test_same_seed_same_metrics(cifar_dir, tmp_path):
    res = [run(_cfg(cifar_dir, tmp_path / str(i), *TINY, "--recipe.name", "feature_extraction",
                    "--recipe.epochs", "2")) for i in range(2)]
    assert res[0]["test_accuracy"] == res[1]["test_accuracy"]
    assert res[0]["test_loss"] == res[1]["test_loss"]


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "kbench.run", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_cli_missing_data_root_is_one_clear_error(tmp_path):
    r = _cli("--data.root", str(tmp_path / "nowhere"), "--trainer.default_root_dir", str(tmp_path / "runs"))
    assert r.returncode == 2
    assert "does not exist" in r.stdout and "--data.root" in r.stdout and "Traceback" not in r.stdout + r.stderr


def test_cli_input_size_below_minimum(tmp_path):
    r = _cli("--model.backbone", "xception", "--model.image_size", "64",
             "--trainer.default_root_dir", str(tmp_path / "runs"))
    assert r.returncode == 2 and "minimum of 71 px" in r.stdout and "Traceback" not in r.stdout + r.stderr
    assert not (tmp_path / "runs").exists()  # refused before anything was created


@slow_on("jax")  # CI time: 37 s on JAX; in CI on tensorflow and torch
def test_cli_fast_dev_run(cifar_dir, tmp_path):
    r = _cli("--config", str(Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"),
             "--data.source", "folder", "--data.root", str(cifar_dir), "--trainer.fast_dev_run", "true",
             "--trainer.default_root_dir", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    stored = json.loads(next(tmp_path.iterdir()).joinpath("results.json").read_text())
    assert stored["fast_dev_run"] is True and stored["epochs"] == 1


def test_unwritable_run_root_refused_before_work(tmp_path):
    from kbench import KbenchError
    from kbench.run import check_writable

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")  # unwritable as a folder even for root
    with pytest.raises(KbenchError, match="not writable.*--trainer.default_root_dir"):
        check_writable(str(blocker / "runs"))
    check_writable(str(tmp_path / "new" / "runs"))  # a missing folder under a writable one is fine
    r = _cli("--trainer.default_root_dir", str(blocker / "runs"))
    assert r.returncode == 2 and "not writable" in r.stdout and "Traceback" not in r.stdout + r.stderr


def test_missing_weights_file_refused_before_data(tmp_path):
    r = _cli("--model.weights", str(tmp_path / "nope.weights.h5"), "--data.root", str(tmp_path / "nowhere"),
             "--trainer.default_root_dir", str(tmp_path / "runs"))
    assert r.returncode == 2 and "nope.weights.h5" in r.stdout and "does not exist" in r.stdout
    assert not (tmp_path / "runs").exists()


def test_trainer_parameters_are_the_trainer_config_fields():
    """run builds the Trainer as Trainer(**vars(cfg.trainer), ...): every config field is a
    parameter by the same name, and the only other parameters are the non-config ones."""
    import dataclasses
    import inspect

    from kbench.config import TrainerConfig
    from kbench.trainer import Trainer

    params = inspect.signature(Trainer).parameters
    fields = [f.name for f in dataclasses.fields(TrainerConfig)]
    assert [p for p in params if p in fields] == fields  # same names, same order
    assert set(params) - set(fields) == {"callbacks", "console", "process_setup"}
    assert all(params[p].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params)


def test_model_built_after_setup_process_computes_in_bfloat16():
    from kbench.models import build_model
    from kbench.trainer import Trainer, setup_process

    assert setup_process("mixed_bfloat16", seed=3) == "mixed_bfloat16"
    tm = build_model(backbone="mobilenetv3small", weights="none", image_size=32, head="gap", head_dropout=0.5,
                     preprocess="auto", num_classes=4, class_names=list("abcd"))
    convs = [la for la in tm.base.layers if isinstance(la, keras.layers.Conv2D)]
    assert len(convs) > 10 and {(la.compute_dtype, la.variable_dtype) for la in convs} == {("bfloat16", "float32")}
    features = tm.base(np.zeros((1, 32, 32, 3), np.float32))
    assert keras.backend.standardize_dtype(features.dtype) == "bfloat16"
    # a Trainer built afterwards with process_setup=False leaves the policy alone
    trainer = Trainer(precision="float32", process_setup=False, enable_progress_bar=False)
    assert trainer.precision == "float32" and keras.config.dtype_policy().name == "mixed_bfloat16"
    Trainer(precision="float32", enable_progress_bar=False)  # the library default sets it up itself
    assert keras.config.dtype_policy().name == "float32"


def test_setup_process_refuses_an_unknown_precision():
    from kbench import KbenchError
    from kbench.trainer import setup_process

    with pytest.raises(KbenchError, match="unknown precision 'bf16'; choose one of: auto, float32"):
        setup_process("bf16")
