"""Saved ``.keras`` models: round trip, cross-backend agreement, ``kbench.predict`` CLI, refusals.

The cross-backend test saves a model on every backend that is importable here and
loads it on the others, each in a subprocess (``KERAS_BACKEND`` is fixed per
process). This file is also that subprocess's script: ``python tests/test_predict.py
save|load DIR [WEIGHTS]``.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from kbench import KbenchError
from kbench.data import CIFAR10_CLASSES, read_image, resize_batch
from kbench.models import ClassNames, Preprocess, build_model
from kbench.models.saved import load_saved_model
from kbench.recipes import Phase, apply_phase

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("tensorflow", "jax", "torch")
# Cross-backend tolerance on the logits of the same saved model (float32, CPU): the
# backends run the same convolutions through different kernels (oneDNN, XLA, ATen), so
# results differ by float32 rounding only. Allowed: |a - b| <= ABS + REL * max|logit|.
# Measured on VGG16 (real weights) + mlp head, 32x32 CIFAR-10 test images: see README.
LOGIT_TOL_ABS = 1e-4
LOGIT_TOL_REL = 1e-4
SIZE = 32
FINE_TUNE = Phase("fine_tune", 1, 1e-4, "block5", base_inference=True)  # block5 trains, BN-free VGG rest frozen


def trainable_flags(model: keras.Model, prefix: str = "") -> dict[str, bool]:
    """``{layer path: trainable}`` for every layer, nested models included, plus the
    trainable / non-trainable parameter counts. InputLayers are left out: they hold no
    variables and Keras does not save their flag."""
    out = {prefix + "<model>": model.trainable,
           prefix + "<params>": [sum(int(np.prod(v.shape)) for v in ws)
                                 for ws in (model.trainable_weights, model.non_trainable_weights)]}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        out[prefix + layer.name] = layer.trainable
        if isinstance(layer, keras.Model):
            out.update(trainable_flags(layer, prefix + layer.name + "/"))
    return out


def available_backends() -> list[str]:
    return [b for b in BACKENDS if importlib.util.find_spec(b) is not None]


def real_images(cifar_dir: Path, per_class: int = 2) -> tuple[list[Path], np.ndarray]:
    """``per_class`` real CIFAR-10 test JPEGs per class and their ``float32 (n, SIZE, SIZE, 3)`` batch."""
    files = [f for c in sorted((cifar_dir / "test").iterdir()) for f in sorted(c.iterdir())[:per_class]]
    return files, resize_batch([read_image(str(f)) for f in files], SIZE)


def vgg_model(weights: str):
    """VGG16 (real weights) at 32 px with the default mlp head, block5 trainable, rest frozen."""
    keras.utils.set_random_seed(0)
    tm = build_model("vgg16", weights, SIZE, "mlp", 0.5, "auto", 10, CIFAR10_CLASSES)
    apply_phase(tm.base, FINE_TUNE)
    return tm


# --------------------------------------------------------------------------- same process
@pytest.mark.parametrize("head", ["gap", "article"])
def test_round_trip_same_backend(cifar_dir, tmp_path, head):
    """Save and load in one process: flags, class names, preprocess mode and outputs are kept."""
    keras.utils.set_random_seed(1)
    names = [f"class {c}" for c in CIFAR10_CLASSES]  # spaces survive too
    tm = build_model("mobilenetv3small", "none", SIZE, head, 0.2, "tf", 10, names)
    apply_phase(tm.base, Phase("fine_tune", 1, 1e-4, "expanded_conv_10", base_inference=True))
    model = tm.compose()
    _, x = real_images(cifar_dir, 1)
    ref = keras.ops.convert_to_numpy(model(x, training=False))
    path = tmp_path / "model.keras"
    model.save(path)

    loaded = load_saved_model(str(path))
    assert loaded.class_names == names
    assert loaded.preprocess == "tf" and loaded.image_size == SIZE
    assert loaded.from_logits is (head == "gap")
    flags = trainable_flags(model)
    assert trainable_flags(loaded.model) == flags
    assert all(flags["<params>"])  # mixed: some parameters train, some are frozen
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded.model(x, training=False)), ref)


def test_class_names_layer_is_identity_without_variables():
    tm = build_model("mobilenetv3small", "none", SIZE, "gap", 0.2, "auto", 3, ["a", "b", "c"])
    last = tm.keras_model.layers[-1]
    assert isinstance(last, ClassNames) and last.weights == [] and last.class_names == ["a", "b", "c"]
    assert isinstance(tm.keras_model.layers[1], Preprocess)
    x = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)
    head_only = keras.Model(tm.keras_model.input, tm.keras_model.layers[-2].output)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(tm.keras_model(x)),
                                  keras.ops.convert_to_numpy(head_only(x)))
    # The cached path (split) is untouched: same variables as the end-to-end model.
    prefix, suffix = tm.split(tm.base.layers[-1].name)
    assert {id(v) for v in suffix.weights} <= {id(v) for v in tm.keras_model.weights}


def test_load_saved_model_still_reachable_from_models():
    """kbench.models.load_saved_model (its home before kbench.models.saved) is the same function."""
    import kbench.models
    import kbench.models.saved

    for name in ("load_saved_model", "LoadedModel", "REFUSED_MODEL_SUFFIXES"):
        assert getattr(kbench.models, name) is getattr(kbench.models.saved, name)
    with pytest.raises(AttributeError, match="no_such_name"):
        kbench.models.no_such_name  # noqa: B018


def test_model_saved_before_class_names_layer(tmp_path):
    """Older model.keras files (no ClassNames layer): names from results.json beside them, else indices."""
    tm = build_model("mobilenetv3small", "none", SIZE, "gap", 0.2, "auto", 3, ["a", "b", "c"])
    old = keras.Model(tm.keras_model.input, tm.keras_model.layers[-2].output)
    old.save(tmp_path / "model.keras")
    with pytest.warns(UserWarning, match="class indices 0..2"):
        assert load_saved_model(str(tmp_path / "model.keras")).class_names == ["0", "1", "2"]
    (tmp_path / "results.json").write_text(json.dumps({"class_names": ["x", "y", "z"]}))
    loaded = load_saved_model(str(tmp_path / "model.keras"))
    assert loaded.class_names == ["x", "y", "z"] and loaded.preprocess == "none" and loaded.from_logits


# --------------------------------------------------------------------------- cross-backend
def _worker(mode: str, out: Path, weights: str | None = None) -> None:
    """Subprocess body. ``save``: build, save ``model_<backend>.keras`` and its own
    logits/metadata; ``load``: load every other backend's model and predict."""
    backend = keras.backend.backend()
    x = np.load(out / "images.npy", allow_pickle=False)
    if mode == "save":
        model = vgg_model(weights).compose()
        model.save(out / f"model_{backend}.keras")
        jobs = [(backend, model, {"class_names": CIFAR10_CLASSES, "preprocess": "caffe", "image_size": SIZE,
                                  "from_logits": True})]
    else:
        jobs = []
        for f in sorted(out.glob("model_*.keras")):
            src = f.stem.removeprefix("model_")
            if src != backend:
                m, names, pre, size, logits = load_saved_model(str(f))
                jobs.append((src, m, {"class_names": names, "preprocess": pre, "image_size": size,
                                      "from_logits": logits}))
    for src, m, meta in jobs:
        np.save(out / f"logits_{src}_on_{backend}.npy", keras.ops.convert_to_numpy(m.predict(x, verbose=0)))
        (out / f"meta_{src}_on_{backend}.json").write_text(json.dumps({**meta, "flags": trainable_flags(m)}))


def _run_worker(mode: str, backend: str, out: Path, *extra: str) -> None:
    env = {**os.environ, "KERAS_BACKEND": backend}
    r = subprocess.run([sys.executable, __file__, mode, str(out), *extra], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"{mode} on {backend} failed:\n{r.stderr[-3000:]}"


@pytest.fixture(scope="module")
def cross_backend(cifar_dir, vgg16_weights, tmp_path_factory):
    """Save on every available backend, then load each model on every other one."""
    backends = available_backends()
    if len(backends) < 2:
        pytest.skip(f"needs two importable Keras backends, found only {backends} "
                    "(nox sessions install one backend each; run in a venv with jax, tensorflow and torch)")
    out = tmp_path_factory.mktemp("xbackend")
    files, x = real_images(cifar_dir, 2)
    np.save(out / "images.npy", x)
    for b in backends:
        _run_worker("save", b, out, str(vgg16_weights))
    for b in backends:
        _run_worker("load", b, out)
    return out, backends


@pytest.mark.parametrize("source", BACKENDS)
def test_saved_model_predicts_the_same_on_other_backends(cross_backend, source):
    out, backends = cross_backend
    if source not in backends:
        pytest.skip(f"backend {source!r} is not importable here")
    ref = np.load(out / f"logits_{source}_on_{source}.npy")
    ref_meta = json.loads((out / f"meta_{source}_on_{source}.json").read_text())
    assert len(set(ref.argmax(1))) > 1  # a meaningful check: not one class for every image
    tol = LOGIT_TOL_ABS + LOGIT_TOL_REL * float(np.abs(ref).max())
    for target in backends:
        if target == source:
            continue
        got = np.load(out / f"logits_{source}_on_{target}.npy")
        meta = json.loads((out / f"meta_{source}_on_{target}.json").read_text())
        assert meta == ref_meta, f"{source} -> {target}: metadata or trainable flags differ"
        np.testing.assert_array_equal(got.argmax(1), ref.argmax(1), err_msg=f"{source} -> {target}: top-1")
        diff = float(np.abs(got - ref).max())
        print(f"{source} -> {target}: max |logit diff| {diff:.3g} (max |logit| {np.abs(ref).max():.3g}, "
              f"tolerance {tol:.3g})")
        assert diff <= tol, f"{source} -> {target}: max |logit diff| {diff} > {tol}"


# --------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def vgg_saved(cifar_dir, vgg16_weights, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("saved") / "model.keras"
    vgg_model(str(vgg16_weights)).compose().save(path)
    return path


def test_predict_cli_end_to_end(cifar_dir, vgg_saved, tmp_path):
    files, x = real_images(cifar_dir, 1)
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    copies = [shutil.copy(f, folder / ("sub" if i % 2 else "") / f"{i:02d}_{f.name}") for i, f in enumerate(files[:6])]
    (folder / "notes.txt").write_text("not an image")
    (folder / ".DS_Store").write_bytes(b"\0\1hidden")
    work = tmp_path / "cwd"
    work.mkdir()
    r = subprocess.run([sys.executable, "-m", "kbench.predict", str(vgg_saved), str(folder), "--top-k", "2",
                        "--batch-size", "4"], cwd=work, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "notes.txt" in r.stderr and ".DS_Store" not in r.stderr + r.stdout
    with open(work / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["file", "class", "probability", "class_index", "rank"]
    assert len(rows) == 2 * len(copies)
    assert sorted({row["file"] for row in rows}) == sorted(str(c) for c in copies)
    assert not list(work.glob(".predictions-*"))  # no temp file left
    model = load_saved_model(str(vgg_saved)).model
    for row in rows:
        p, j = float(row["probability"]), int(row["class_index"])
        assert 0.0 <= p <= 1.0 and row["class"] == CIFAR10_CLASSES[j]
    for c in copies:  # same top-1 (class and probability) as predicting in this process
        r1, r2 = [row for row in rows if row["file"] == str(c)]
        assert (r1["rank"], r2["rank"]) == ("1", "2") and float(r1["probability"]) >= float(r2["probability"])
        logits = model.predict(resize_batch([read_image(str(c))], SIZE), verbose=0)[0]
        prob = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert int(r1["class_index"]) == int(prob.argmax())
        assert float(r1["probability"]) == pytest.approx(float(prob.max()), abs=1e-5)


def _plain_keras_model(path: Path, lam: bool = False) -> None:
    inp = keras.Input((4,))
    out = keras.layers.Lambda(lambda t: t * 2)(inp) if lam else keras.layers.Dense(2)(inp)
    keras.Model(inp, out).save(path)


@pytest.mark.parametrize("case", ["missing", "pkl", "pt", "h5", "npz", "not_zip", "zip_no_config", "plain_keras",
                                  "lambda"])
def test_refused_model_files(tmp_path, capsys, case):
    from kbench.predict import main

    img = tmp_path / "x.png"
    import cv2
    cv2.imwrite(str(img), np.zeros((8, 8, 3), np.uint8))
    name = {"missing": "nope.keras", "pkl": "model.pkl", "pt": "model.pt", "h5": "model.h5", "npz": "model.npz",
            "not_zip": "renamed.keras", "zip_no_config": "other.keras", "plain_keras": "plain.keras",
            "lambda": "lambda.keras"}[case]
    path = tmp_path / name
    if case in ("pkl", "pt", "not_zip"):
        path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    elif case == "h5":
        path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    elif case == "npz":
        np.savez(path, a=np.zeros(3))
    elif case == "zip_no_config":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("data.pkl", pickle.dumps([1]))
    elif case in ("plain_keras", "lambda"):
        _plain_keras_model(path, lam=case == "lambda")
    with pytest.raises(KbenchError, match=name):
        load_saved_model(str(path))
    assert main([str(path), str(img), "--output", str(tmp_path / "out.csv")]) == 2
    err = capsys.readouterr().err
    assert name in err and "Traceback" not in err
    if case not in ("missing", "plain_keras", "lambda"):
        assert "only .keras files saved by kbench" in err and "pickled files" in err
    if case == "lambda":
        assert "safe mode" in err
    assert not (tmp_path / "out.csv").exists()


def test_pickle_refused_by_cli_subprocess(tmp_path):
    """The real command line: exit 2, one message naming the file, no traceback."""
    bad = tmp_path / "model.pkl"
    bad.write_bytes(pickle.dumps(object))
    r = subprocess.run([sys.executable, "-m", "kbench.predict", str(bad), str(tmp_path)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert str(bad) in r.stderr and "pickled files are refused" in r.stderr and "Traceback" not in r.stderr


def test_no_readable_image_is_exit_2(vgg_saved, tmp_path, capsys):
    from kbench.predict import main

    (tmp_path / "a.txt").write_text("text")
    assert main([str(vgg_saved), str(tmp_path), "--output", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert "a.txt" in err and "could be decoded" in err
    assert not (tmp_path / "p.csv").exists()


if __name__ == "__main__":
    _worker(sys.argv[1], Path(sys.argv[2]), *sys.argv[3:])
