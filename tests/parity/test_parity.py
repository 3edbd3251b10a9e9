"""``kbench.parity``: comparison and verdict logic (constructed arrays, golden values),
report rendering, command-line refusals, ``backend.value_and_grad`` on the current
backend, and real parity of a tiny model across every importable backend (each in a
subprocess; skipped when fewer than two backends are importable).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from kbench import backend
from kbench.parity import cli as parity
from kbench.parity.numeric import (
    QUANTITIES,
    TOLERANCES,
    compare_arrays,
    compare_results,
    describe_worst,
    tolerances_for,
)
from kbench.parity.report import render_markdown

ROOT = Path(__file__).resolve().parents[2]
CPU32 = TOLERANCES[("float32", "cpu")]


def fake_outputs(seed: int = 0, steps: int = 3) -> dict[str, np.ndarray]:
    """One backend's outputs as the worker writes them (10 classes, batch 4, small head)."""
    rng = np.random.default_rng(seed)
    return {
        "logits": rng.normal(0, 3, (4, 10)).astype(np.float32),
        "loss": np.float32(2.3),
        "grad/logits/kernel": rng.normal(0, 1e-2, (16, 10)).astype(np.float32),
        "grad/logits/bias": rng.normal(0, 1e-1, (10,)).astype(np.float32),
        "step_losses": np.linspace(2.5, 1.5, steps).astype(np.float32),
    }


def perturbed(a: dict, key: str, rel: float, index=(0, 0)) -> dict:
    """A copy of ``a`` whose ``key`` differs by ``rel * max|a[key]|`` at one element."""
    b = {k: np.array(v, dtype=np.float64) for k, v in a.items()}
    arr = np.atleast_1d(b[key])
    idx = index[: arr.ndim]
    arr[idx] += rel * np.abs(arr).max()
    b[key] = arr.reshape(np.shape(a[key]))
    return b


# --------------------------------------------------------------------------- comparison logic
def test_compare_arrays_definition():
    a = np.array([1.0, -4.0, 0.0])
    b = np.array([1.0, -4.0, 2e-3])
    d = compare_arrays(a, b)
    assert d["max_abs"] == pytest.approx(2e-3)
    assert d["rel"] == pytest.approx(2e-3 / 4.0)  # relative to the tensor's scale, not to the element (0 there)
    assert compare_arrays(np.zeros(3), np.zeros(3))["rel"] == 0.0
    assert compare_arrays([np.nan], [1.0]) == {"max_abs": float("inf"), "rel": float("inf"), "finite": False}
    with pytest.raises(ValueError, match="shapes differ"):
        compare_arrays(np.zeros(3), np.zeros(4))


def test_identical_outputs_pass():
    a = fake_outputs()
    r = compare_results(a, a, CPU32)
    assert r["verdict"] == "pass"
    assert all(q["ok"] and q["rel"] == 0.0 for q in r["quantities"].values())


def test_golden_logits_2e4_fails_1e4_and_is_named():
    """A pair whose logits differ by 2e-4 relative fails the CPU float32 tolerance 1e-4."""
    a = fake_outputs()
    b = perturbed(a, "logits", 2e-4)
    r = compare_results(a, b, CPU32)
    assert r["verdict"] == "fail"
    assert r["quantities"]["logits"]["ok"] is False
    assert r["quantities"]["logits"]["rel"] == pytest.approx(2e-4, rel=1e-3)
    assert r["quantities"]["logits"]["tol"] == 1e-4
    assert all(r["quantities"][q]["ok"] for q in ("loss", "head_grads", "step_losses"))
    assert r["worst"]["quantity"] == "logits"
    line = describe_worst(r)
    assert line.startswith("logits rel 2.0e-04 > tol 1e-04")
    report = {"command": "python -m kbench.parity --models x", "date": "d", "machine": "m",
              "settings": {"precision": "float32", "batch_size": 4, "num_classes": 10, "seed": 0, "head": "mlp",
                           "steps": 3, "learning_rate": 1e-3, "jit_compile": "auto"},
              "tolerances": {"float32 cpu": {"logits": 1e-4, "loss": 1e-4, "head_grads": 1e-3,
                                             "step_losses": 1e-3, "why": "w"}},
              "models": [{"model": "tiny", "image_size": 32, "backends": {"jax": {}, "torch": {}},
                          "pairs": [{"a": "jax", "b": "torch", **r}]}]}
    md = render_markdown(report)
    assert "| tiny | 32 | - | jax vs torch | **fail** | logits rel 2.0e-04 > tol 1e-04" in md
    assert "Summary: 0 of 1 model/backend pairs pass." in md


def test_just_inside_tolerance_passes():
    a = fake_outputs()
    r = compare_results(a, perturbed(a, "logits", 0.9e-4), CPU32)
    assert r["verdict"] == "pass" and r["worst"]["quantity"] == "logits"


def test_worst_gradient_variable_and_step_are_named():
    a = fake_outputs()
    b = perturbed(perturbed(a, "grad/logits/bias", 5e-3, (3,)), "step_losses", 2e-4, (2,))
    r = compare_results(a, b, CPU32)
    assert r["verdict"] == "fail"
    g, s = r["quantities"]["head_grads"], r["quantities"]["step_losses"]
    assert g["where"] == "logits/bias" and not g["ok"] and g["rel"] == pytest.approx(5e-3, rel=1e-3)
    assert s["where"] == "step 3" and s["ok"]  # 2e-4 of the largest step loss is within 1e-3
    assert r["worst"]["quantity"] == "head_grads"
    assert "[logits/bias]" in describe_worst(r)


def test_non_finite_fails_and_mismatched_variables_raise():
    a = fake_outputs()
    b = {**a, "loss": np.float32(np.nan)}
    r = compare_results(a, b, CPU32)
    assert r["verdict"] == "fail" and r["worst"]["quantity"] == "loss"
    with pytest.raises(ValueError, match="head variables differ"):
        compare_results(a, {k: v for k, v in a.items() if k != "grad/logits/bias"}, CPU32)


def test_tolerances_are_stated_and_ordered():
    assert CPU32.logits == 1e-4  # the requirement
    assert tolerances_for("float32", ["cpu", "gpu"]).logits > CPU32.logits
    assert tolerances_for("mixed_bfloat16", ["cpu", "cpu"]).logits > tolerances_for(
        "float32", ["gpu", "gpu"]).logits
    assert all(t.why for t in TOLERANCES.values())


def test_failed_backend_is_reported_and_others_still_compared(monkeypatch):
    """run_model with one crashing backend: its pairs fail with the error, the other pair is compared;
    a fingerprint mismatch (weights not identical after loading) fails the pair."""
    outs = {"jax": fake_outputs(), "tensorflow": perturbed(fake_outputs(), "logits", 1e-6)}

    def fake_run(name, job, timeout):
        if name == "torch":
            return {"error": "exit 1: RuntimeError: boom"}
        return {"arrays": outs[name], "fingerprint": "f", "device": "cpu", "seconds": {}, "wall_s": 0.0,
                "versions": {name: "1"}}

    monkeypatch.setattr(parity, "run_backend", fake_run)
    settings = {"seed": 0, "batch_size": 2, "num_classes": 10, "precision": "float32"}
    r = parity.run_model("tiny", 32, ["jax", "tensorflow", "torch"], settings, 10, log=lambda s: None)
    verdicts = {(p["a"], p["b"]): p for p in r["pairs"]}
    assert verdicts[("jax", "tensorflow")]["verdict"] == "pass"
    for pair in [("jax", "torch"), ("tensorflow", "torch")]:
        assert verdicts[pair]["verdict"] == "fail" and "torch failed: exit 1: RuntimeError: boom" in \
            verdicts[pair]["error"]
    assert r["backends"]["torch"]["error"].endswith("boom") and "arrays" not in r["backends"]["jax"]

    def fake_run_fp(name, job, timeout):
        return {**fake_run(name, job, timeout), "fingerprint": name}

    monkeypatch.setattr(parity, "run_backend", fake_run_fp)
    r = parity.run_model("tiny", 32, ["jax", "tensorflow"], settings, 10, log=lambda s: None)
    assert r["pairs"][0]["verdict"] == "fail" and "fingerprints differ" in r["pairs"][0]["error"]


def test_crashed_worker_is_reported_with_its_exception_line(tmp_path):
    """A worker that fails (unknown backbone in its job): the error names the exception, the log is kept."""
    b = backend.name()
    job = {"work": str(tmp_path), "model": "nope", "image_size": 32, "seed": 0, "precision": "float32", "head": "gap",
           "num_classes": 10, "save_weights": True}
    res = parity.run_backend(b, job, 600)
    assert res["error"].startswith("exit 1: kbench.KbenchError: unknown backbone 'nope'"), res
    assert "Traceback" in res["stderr_tail"] and (tmp_path / f"{b}.log").exists()


# --------------------------------------------------------------------------- command line
@pytest.mark.parametrize("args, needle", [
    (["--models", "vgg16,nope"], "unknown model nope; valid: vgg16, vgg19"),
    (["--backends", "jax,mxnet"], "unknown backend mxnet; valid: jax, tensorflow, torch"),
    (["--precision", "float16"], "unknown precision 'float16'; valid: float32, mixed_bfloat16"),
    (["--models", "xception", "--image-size", "32"], "below the minimum of 71"),
])
def test_bad_cli_input_is_exit_2(args, needle, capsys, tmp_path):
    assert parity.main([*args, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_bad_model_subprocess_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "kbench.parity", "--models", "resnet51"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert "unknown model resnet51" in r.stderr and "convnexttiny" in r.stderr and "Traceback" not in r.stderr


# --------------------------------------------------------------------------- backend.value_and_grad
def test_value_and_grad_matches_closed_form():
    """Dense layer + sparse cross-entropy from logits: dL/dW = x^T (softmax - onehot) / n on this backend."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3)).astype(np.float32)
    y = np.array([0, 1, 2, 3, 1], np.int32)
    dense = keras.layers.Dense(4)
    dense.build((None, 3))
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    unused = keras.Variable(np.ones(2, np.float32))
    value, (gk, gb, gu) = backend.value_and_grad(lambda: loss_fn(y, dense(x)), [dense.kernel, dense.bias, unused])
    z = x @ keras.ops.convert_to_numpy(dense.kernel) + keras.ops.convert_to_numpy(dense.bias)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    d = (p - np.eye(4)[y]) / len(y)
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(value)), -np.log(p[np.arange(5), y]).mean(),
                               rtol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(gk), x.T @ d, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(gb), d.sum(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(gu), np.zeros(2))


# --------------------------------------------------------------------------- real parity across backends
def available_backends() -> list[str]:
    return [b for b in parity.BACKENDS if importlib.util.find_spec(b) is not None]


@pytest.mark.slow
def test_parity_across_backends_tiny_model(tmp_path):
    """mobilenetv3small at 32 px, batch 4, 2 SGD steps, every importable backend in its own subprocess:
    every pair passes the CPU float32 tolerances (1e-4 on logits) and the files are written."""
    backends = available_backends()
    if len(backends) < 2:
        pytest.skip(f"needs two importable Keras backends, found only {backends} "
                    "(nox sessions install one backend each; run in a venv with jax, tensorflow and torch)")
    out = tmp_path / "parity"
    r = subprocess.run([sys.executable, "-m", "kbench.parity", "--models", "mobilenetv3small",
                        "--backends", ",".join(backends), "--batch-size", "4", "--steps", "2",
                        "--output", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    report = json.loads((out / "parity.json").read_text())
    md = (out / "parity.md").read_text()
    pairs = report["models"][0]["pairs"]
    print("\n".join(f"{p['a']} vs {p['b']}: {p['verdict']}: {describe_worst(p)}" for p in pairs))
    assert len(pairs) == len(backends) * (len(backends) - 1) // 2
    assert r.returncode == 0, r.stderr[-3000:]
    for p in pairs:
        assert p["verdict"] == "pass", describe_worst(p)
        assert set(p["quantities"]) == set(QUANTITIES)
    runs = report["models"][0]["backends"]
    assert len({runs[b]["fingerprint"] for b in backends}) == 1  # the same initial weights everywhere
    assert all(len(runs[b]["step_losses"]) == 2 for b in backends)
    assert "mobilenetv3small" in md and "tolerances" in md and "float32 cpu" in md
