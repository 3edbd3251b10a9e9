"""The LR finder: the suggestion rules on known curves, the sweep on a real phase (files,
geometric learning rates, every variable restored), ``python -m kbench.lr_find`` end to
end and its errors, ``learning_rate: auto`` in a run and across a kill + ``--resume``,
and the suggestion on the VGG16 feature-extraction phase."""

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
from kbench.lr_find import main as lr_find_main
from kbench.run import build_parts
from kbench.trainer import checkpoint
from kbench.trainer.lr_finder import RULE_SOURCE, lr_find, smooth, steepest_index, suggest, valley_index

HERE = Path(__file__).resolve().parent
TINY = ["--model.backbone", "mobilenetv3small", "--model.image_size", "32", "--model.weights", "none"]
AUTO = """\
recipe:
  phases:
    - {name: head, epochs: 2, learning_rate: auto, train: none}
"""


def _env():
    return {**os.environ, "PYTHONPATH": str(HERE.parents[1])}


def _parts(cifar_dir, tmp_path, *extra):
    cfg = parse(["--data.source", "folder", "--data.root", str(cifar_dir), "--data.batch_size", "32",
                 "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
                 "--trainer.precision", "float32", *extra])
    return build_parts(cfg)


def _values(model) -> list[np.ndarray]:
    return [np.array(keras.ops.convert_to_numpy(v.value)) for v in model.variables]


# ------------------------------------------------------------------ the rules
def test_valley_and_steepest_on_a_known_curve():
    # rises to index 2, falls strictly to index 10 (the longest valley), then diverges.
    # fastai's valley: start = end - run length = 10 - 9 = 1, sections = 3, index 1 + 3 + 1 = 5;
    # the steepest fall is 1.05 -> 0.5, between indices 7 and 8 (its left end, 7)
    losses = [2.0, 2.2, 2.4, 2.3, 2.1, 1.8, 1.4, 1.05, 0.5, 0.45, 0.4, 1.5, 4.0]
    lrs = 1e-7 * 10.0 ** np.arange(len(losses))
    assert valley_index(losses) == 5
    assert steepest_index(lrs, losses) == 7
    assert valley_index([3.0, 2.0]) == 0  # fastai's formula gives -1 here
    assert valley_index([1.0, 2.0, 3.0]) == 0  # no valley at all: the first point


def test_suggest_skips_the_ends_and_the_non_finite_tail():
    # 40 steps: fastai drops the first 40 // 10 = 4 points and the last 5; a NaN ends the curve early
    lrs = np.geomspace(1e-6, 1.0, 40)
    curve = np.concatenate([np.linspace(2.0, 0.5, 30), np.linspace(0.6, 9.0, 10)])
    valley, steep = suggest(lrs, curve, 40)
    kept = lrs[4:35]
    assert valley == kept[valley_index(curve[4:35])] and steep == kept[steepest_index(kept, curve[4:35])]
    broken = curve.copy()
    broken[20:] = np.nan
    valley, _ = suggest(lrs, broken, 40)
    assert valley == lrs[4:20][valley_index(broken[4:20])]


def test_smoothing_is_the_debiased_moving_average():
    np.testing.assert_allclose(smooth([1.5, 1.5, 1.5]), [1.5, 1.5, 1.5])
    avg1, avg2 = 0.02 * 2.0, 0.98 * 0.02 * 2.0
    np.testing.assert_allclose(smooth([2.0, 0.0]), [avg1 / 0.02, avg2 / (1 - 0.98 ** 2)])


# ------------------------------------------------------------------ the sweep
@pytest.mark.parametrize("recipe,steps", [("feature_extraction", 30), ("full", 12)],
                         ids=["cached-suffix", "end-to-end-bn-train"])
def test_sweep_writes_the_curve_and_restores_every_variable(cifar_dir, tmp_path, recipe, steps):
    trainer, dm, model, rec = _parts(cifar_dir, tmp_path, *TINY, "--recipe.name", recipe,
                                     "--recipe.lr_find_steps", str(steps))
    before, flags = _values(model.keras_model), [la.trainable for la in model.base.layers]
    r = lr_find(model, dm, rec, trainer=trainer, out_dir=str(tmp_path / "out"))
    # every variable (weights, BN statistics, dropout seed generators) bit-identical, trainable flags too
    after = _values(model.keras_model)
    assert len(after) == len(before) and all(np.array_equal(a, b) for a, b in zip(after, before))
    assert [la.trainable for la in model.base.layers] == flags
    assert np.ptp(r.losses) > 0.05  # ... although the sweep did train (the loss moved)
    n = len(r.lrs)
    assert 5 <= n <= steps and (n == steps) != r.diverged
    if r.diverged:
        last = r.smoothed[-1]
        assert not np.isfinite(last) or last > 4 * r.smoothed[:-1].min()
    ratio = (10.0 / 1e-7) ** (1 / (steps - 1))
    assert r.lrs[0] == pytest.approx(1e-7, rel=1e-5)
    np.testing.assert_allclose(r.lrs[1:] / r.lrs[:-1], ratio, rtol=1e-4)
    if not r.diverged:
        assert r.lrs[-1] == pytest.approx(10.0, rel=1e-4)
    assert r.suggestion in r.lrs and r.steepest in r.lrs and r.rule == "valley"
    with open(r.csv_path) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "learning_rate", "loss", "smoothed_loss"] and len(rows) == n
    np.testing.assert_allclose([float(x["learning_rate"]) for x in rows], r.lrs, rtol=1e-6)
    np.testing.assert_allclose([float(x["smoothed_loss"]) for x in rows], r.smoothed, rtol=1e-5)
    assert Path(r.png_path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(Path(r.json_path).read_text())
    assert (saved["suggestion"], saved["steepest"], saved["steps_run"]) == (r.suggestion, r.steepest, n)


# ------------------------------------------------------------------ the command
def test_cli_end_to_end(cifar_dir, tmp_path):
    args = [*TINY, "--data.source", "folder", "--data.root", str(cifar_dir), "--data.max_train_per_class", "10",
            "--data.max_test_per_class", "2", "--data.batch_size", "16", "--trainer.precision", "float32",
            "--trainer.enable_progress_bar", "false", "--recipe.lr_find_steps", "12",
            "--phase", "feature_extraction", "--out", str(tmp_path / "out")]
    p = subprocess.run([sys.executable, "-m", "kbench.lr_find", *args], capture_output=True, text=True,
                       env=_env(), timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = " ".join(p.stdout.split())
    saved = json.loads((tmp_path / "out" / "lr_find.json").read_text())
    assert f"suggested learning rate {saved['suggestion']:.3g} (rule: valley, {RULE_SOURCE})" in out
    with open(tmp_path / "out" / "lr_find.csv") as f:
        assert len(list(csv.DictReader(f))) == saved["steps_run"] <= 12
    assert (tmp_path / "out" / "lr_find.png").stat().st_size > 1000


@pytest.mark.parametrize("argv,message", [
    (["--phase", "nope"], "unknown phase 'nope'; recipe 'fine_tune' has phases ['feature_extraction', 'fine_tune']"),
    (["--phase"], "--phase needs a value"),
    (["--resume", "runs/x"], "--resume is not an option of kbench.lr_find"),
])
def test_cli_bad_flags_give_one_error_line(tmp_path, capsys, argv, message):
    rc = lr_find_main([*TINY, "--data.root", str(tmp_path / "no-data"), "--trainer.default_root_dir",
                       str(tmp_path), *argv])
    out = capsys.readouterr().out
    assert rc == 2 and sum(ln.startswith("error:") for ln in out.splitlines()) == 1
    assert f"error: {message}" in " ".join(out.split())
    assert not any(tmp_path.iterdir())  # nothing read or written


def test_cli_unknown_config_key_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        lr_find_main(["--recipe.lr_find_stepz", "10"])
    assert e.value.code == 2 and "error:" in capsys.readouterr().err


# ------------------------------------------------------------------ learning_rate: auto
def _auto_run(cifar_dir, root, config, *faults):
    args = [*TINY, "--config", str(config), "--data.source", "folder", "--data.root", str(cifar_dir),
            "--data.batch_size", "32", "--trainer.limit_train_batches", "3", "--trainer.inference_batches", "0",
            "--trainer.enable_progress_bar", "false", "--trainer.precision", "float32",
            "--recipe.lr_find_steps", "15", "--trainer.default_root_dir", str(root)]
    return subprocess.run([sys.executable, str(HERE.parent / "faults.py"), *faults, "--", *args],
                          capture_output=True, text=True, env=_env(), timeout=900)


def _only_run_dir(root) -> Path:
    (d,) = [p for p in Path(root).iterdir() if p.is_dir()]
    return d


def _metrics(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return [{k: r[k] for k in ("epoch", "step", "loss", "val_loss", "learning_rate")} for r in csv.DictReader(f)]


@pytest.mark.slow  # ~100 s torch, ~180 s jax: passed on all three backends in CI before it was marked slow (2026-12-05)
def test_auto_learning_rate_is_found_recorded_and_reused_on_resume(cifar_dir, tmp_path):
    config = tmp_path / "auto.yaml"
    config.write_text(AUTO)
    p = _auto_run(cifar_dir, tmp_path / "clean", config)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    clean = _only_run_dir(tmp_path / "clean")
    found = json.loads((clean / "lr_find-head.json").read_text())["suggestion"]
    row = json.loads((clean / "results.json").read_text())["phases"][0]
    assert (row["learning_rate"], row["learning_rate_found_by"]) == (found, "lr_find valley")
    assert 1e-7 < found < 10 and (clean / "lr_find-head.csv").exists() and (clean / "lr_find-head.png").exists()
    assert [float(r["learning_rate"]) for r in _metrics(clean)] == pytest.approx([found] * 2, rel=1e-6)

    # killed in epoch 2: the resumed run takes the value from the checkpoint instead of sweeping again
    p = _auto_run(cifar_dir, tmp_path / "killed", config, "--signal", "KILL@2:2")
    assert p.returncode == -9, p.stderr[-3000:]
    run_dir = _only_run_dir(tmp_path / "killed")
    assert checkpoint.load_state(str(run_dir / "checkpoints" / "epoch-0001"))["learning_rate_found"] == found
    swept_at = (run_dir / "lr_find-head.csv").stat().st_mtime_ns
    r = subprocess.run([sys.executable, "-m", "kbench.run", "--resume", str(run_dir)], capture_output=True,
                       text=True, env=_env(), timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = " ".join(r.stdout.split())
    assert "found before the interruption" in out and "running the LR finder" not in out
    assert (run_dir / "lr_find-head.csv").stat().st_mtime_ns == swept_at
    resumed = json.loads((run_dir / "results.json").read_text())
    assert resumed["phases"][0]["learning_rate"] == found and resumed["resumed_from"] == "epoch-0001"
    assert _metrics(run_dir) == _metrics(clean)  # exactly the uninterrupted run
    assert resumed["test_loss"] == json.loads((clean / "results.json").read_text())["test_loss"]


# ------------------------------------------------------------------ the real case
def test_vgg16_feature_extraction_suggestion_is_near_the_default_learning_rate(cifar_dir, tmp_path, vgg16_weights):
    # the default recipe trains the head on the frozen VGG16 at 1e-3; the finder should land within 10x of it
    trainer, dm, model, rec = _parts(cifar_dir, tmp_path, "--model.weights", str(vgg16_weights),
                                     "--trainer.precision", "auto", "--data.batch_size", "64")
    r = lr_find(model, dm, rec, phase="feature_extraction", trainer=trainer, out_dir=str(tmp_path / "out"))
    assert 1e-4 <= r.suggestion <= 1e-2, (r.suggestion, r.steepest)
