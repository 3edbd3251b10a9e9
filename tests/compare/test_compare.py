"""kbench.compare / kbench.compare.report: the report rendered from hand-made rows with
golden values, --report-only rebuilding the same compare.json, CLI input errors,
the --parity hand-off, and one real compare run (this process's backend plus a
backend that cannot start) in subprocesses."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import sys
import types
from pathlib import Path

import pytest

from kbench.compare import cli as compare
from kbench.compare import env as compare_env
from kbench.compare import report
from kbench.compare import run as compare_run
from kbench.compare import summary as report_summary
from kbench.compare import tables as report_tables

SMOKE = str(Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml")
FLOPS = {"train_per_image": 3e9, "inference_per_image": 1e9, "source": "test", "error": None}
PEAK = {"flops_per_s": 1e12, "dtype": "float32", "backend": "jax", "source": "test probe", "method": "matmul",
        "gflops_by_backend": {"jax": 1000.0, "tensorflow": 900.0, "torch": 800.0}, "measured_at": "2025", "error": None}


def _row(backend: str, seed: int, acc: float, loss: float, *, train_ips: float = 100.0, infer_ips: float = 200.0,
         cache_cut: str | None = None) -> dict:
    phases = [{"phase": "feature_extraction", "epochs": 2, "cache_cut": cache_cut, "wall_time_s": 10.0,
               "train_images_per_s": train_ips, "first_steps_s": 1.5, "step_time_ms_p50": 10.0,
               "step_time_ms_p95": 20.0}]
    results = {"status": "completed", "backend": backend, "backbone": "mobilenetv3small", "image_size": 32,
               "recipe": "feature_extraction", "precision": "float32", "batch_size": 16, "num_train": 270,
               "num_val": 30, "num_test": 100, "epochs": 2, "seed": seed, "test_accuracy": acc, "test_loss": loss,
               "phases": phases, "inference_images_per_s": infer_ips, "peak_host_memory_mb": 1000.0 + seed,
               "peak_device_memory_mb": None, "total_time_s": 30.0,
               "versions": {"python": "3.11.0", "keras": "3.15.1", backend: "1.0"},
               "device": {"type": "cpu", "name": "Test CPU", "cores": 2}}
    metrics = [{"phase": "feature_extraction", "epoch": e, "step": 4 * e, "loss": 2.0 / e + seed * 0.1,
                "accuracy": 0.3 * e, "val_loss": 2.5 / e, "val_accuracy": 0.25 * e, "learning_rate": 1e-3,
                "images_per_s": train_ips, "epoch_time_s": 5.0} for e in (1, 2)]
    return {"backend": backend, "seed": seed, "status": "completed", "error": None, "exit_code": 0, "reused": False,
            "wall_time_s": 40.0, "log": f"logs/{backend}-seed{seed}.log", "run_dir": f"runs/{backend}-seed{seed}/x",
            "results": results, "metrics": metrics, "flops": dict(FLOPS), "peak": dict(PEAK)}


def _failed(backend: str, seed: int) -> dict:
    return {"backend": backend, "seed": seed, "status": "failed", "exit_code": 1, "reused": False,
            "error": "exit code 1: RuntimeError: boom in the test\n--- last lines of logs/torch-seed2.log:\n"
                     "RuntimeError: boom in the test",
            "wall_time_s": 3.0, "log": f"logs/{backend}-seed{seed}.log", "run_dir": None, "results": None,
            "metrics": [], "flops": None, "peak": None}


@pytest.fixture
def stored() -> dict:
    """jax [0.60, 0.62], tensorflow [0.61, 0.61], torch [0.64, 0.64] + one failed torch run."""
    rows = [_row("jax", 0, 0.60, 1.00), _row("tensorflow", 0, 0.61, 1.10), _row("torch", 0, 0.64, 0.90),
            _row("jax", 1, 0.62, 1.20), _row("tensorflow", 1, 0.61, 1.10), _row("torch", 1, 0.64, 0.90),
            _failed("torch", 2)]
    return {"format": 1, "created": "2025-01-01T00:00:00+0000", "command": "python -m kbench.compare --config c.yaml",
            "config": "c.yaml", "overrides": ["--trainer.max_epochs", "2"], "backends": ["jax", "tensorflow", "torch"],
            "seeds": [0, 1, 2], "environment": {"cpu": "Test CPU", "cores": 2, "memory_gib": 8.0, "gpus": [],
                                                 "os": "Linux", "python": "3.11.0",
                                                 "packages": {"keras": "3.15.1", "numpy": "2.4.0", "jax": None}},
            "rows": rows}


def _by(summary: dict) -> dict:
    return {b["backend"]: b for b in summary["backends"]}


# ------------------------------------------------------------------ golden values
def test_mean_std_golden():
    s = report_summary.mean_std([0.60, 0.62])
    assert s["n"] == 2 and s["mean"] == pytest.approx(0.61, abs=1e-12)
    assert s["std"] == pytest.approx(0.014142135623730963, rel=1e-9)  # ddof=1
    assert report_summary.mean_std([0.5]) == {"mean": 0.5, "std": None, "n": 1}
    assert report_summary.mean_std([None, float("nan")]) == {"mean": None, "std": None, "n": 0}


def test_summary_golden(stored):
    s = report_summary.summarize(stored)
    b = _by(s)
    assert b["jax"]["test_accuracy"]["mean"] == pytest.approx(0.61)
    assert b["jax"]["test_accuracy"]["std"] == pytest.approx(0.014142, abs=1e-6)
    assert b["jax"]["test_accuracy"]["n"] == 2
    assert b["tensorflow"]["test_accuracy"]["std"] == pytest.approx(0.0, abs=1e-12)
    # torch is 3 points above the mean of the others (0.61): flagged; jax/tf are 1.5 points off: not flagged
    assert b["torch"]["accuracy_delta_vs_others"] == pytest.approx(0.03)
    assert b["torch"]["accuracy_flag"] is True
    assert b["jax"]["accuracy_delta_vs_others"] == pytest.approx(-0.015)
    assert not b["jax"]["accuracy_flag"] and not b["tensorflow"]["accuracy_flag"]
    assert any("accuracy flag: torch" in n for n in s["notes"])
    assert (b["torch"]["runs"], b["torch"]["completed"], b["torch"]["failed"]) == (3, 2, 1)
    assert b["torch"]["errors"][0]["seed"] == 2 and "boom" in b["torch"]["errors"][0]["error"]
    assert b["jax"]["test_loss"]["mean"] == pytest.approx(1.10)
    # throughput, compute: 100 images/s x 3 GFLOPs = 300 GFLOP/s = 30 % of 1000 GFLOP/s
    j = b["jax"]
    assert j["train_images_per_s"]["mean"] == pytest.approx(100.0)
    assert j["inference_images_per_s"]["mean"] == pytest.approx(200.0)
    assert j["step_time_ms_p50"]["mean"] == 10.0 and j["step_time_ms_p95"]["mean"] == 20.0
    assert j["first_steps_s"]["mean"] == 1.5
    assert j["peak_host_memory_mb"]["mean"] == pytest.approx(1000.5)
    assert j["peak_device_memory_mb"]["mean"] is None
    assert j["train_gflops_per_s"]["mean"] == pytest.approx(300.0)
    assert j["train_mfu"]["mean"] == pytest.approx(0.3)
    assert j["inference_gflops_per_s"]["mean"] == pytest.approx(200.0)
    assert j["inference_mfu"]["mean"] == pytest.approx(0.2)
    assert s["compute"]["peak_flops_per_s"] == 1e12
    # learning curves: per-epoch mean over seeds (jax train loss epoch 1: 2.0 and 2.1)
    assert s["curves"]["jax"]["epoch"] == [1, 2]
    assert s["curves"]["jax"]["loss"][0] == pytest.approx(2.05)
    assert s["curves"]["torch"]["val_accuracy"] == pytest.approx([0.25, 0.5])
    assert s["failed"] == [{"backend": "torch", "seed": 2, "status": "failed", "exit_code": 1,
                            "error": stored["rows"][-1]["error"], "log": "logs/torch-seed2.log"}]
    assert s["environment"]["runs"]["jax"]["device"]["name"] == "Test CPU"


def test_cached_phase_has_no_training_mfu(stored):
    stored["rows"] = [_row("jax", 0, 0.6, 1.0, cache_cut="block5_pool"), _row("torch", 0, 0.6, 1.0, train_ips=10.0,
                                                                              infer_ips=20.0)]
    s = report_summary.summarize(stored)
    b = _by(s)
    assert b["jax"]["train_gflops_per_s"]["mean"] is None and b["jax"]["train_mfu"]["mean"] is None
    assert b["jax"]["inference_mfu"]["mean"] == pytest.approx(0.2)
    assert any("cached frozen-prefix features" in n for n in s["notes"])
    assert any("throughput gap: torch 10.0 images/s is 10.0x below jax" in n for n in s["notes"])
    assert _by(s)["tensorflow"]["runs"] == 0  # listed backend without rows


def test_missing_flops_and_peak_show_dash(stored):
    for r in stored["rows"]:
        if r["status"] == "completed":
            r["flops"] = {"train_per_image": None, "inference_per_image": None, "source": "x",
                          "error": "ModuleNotFoundError: No module named 'kbench.perf'"}
            r["peak"] = {"flops_per_s": None, "source": "x", "error": "no perf"}
    s = report_summary.summarize(stored)
    assert _by(s)["jax"]["inference_mfu"]["mean"] is None
    md = report_tables.render_markdown(s)
    assert "| jax | - | - | - | - |" in md
    assert any(n.startswith("FLOPs per image unavailable") for n in s["notes"])


def test_write_report_files(stored, tmp_path):
    report.write_report(stored, str(tmp_path))
    for name in report_summary.FILES:
        assert (tmp_path / name).stat().st_size > 0, name
    for name in report_summary.PLOTS.values():
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((tmp_path / "compare.json").read_text())
    assert _by(data)["jax"]["test_accuracy"]["std"] == pytest.approx(0.014142, abs=1e-6)
    with open(tmp_path / "compare.csv", newline="") as f:
        rows = {r["backend"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["jax", "tensorflow", "torch"]
    assert float(rows["jax"]["test_accuracy_mean"]) == pytest.approx(0.61)
    assert float(rows["jax"]["test_accuracy_std"]) == pytest.approx(0.014142, abs=1e-6)
    assert rows["jax"]["test_accuracy_n"] == "2"
    assert rows["torch"]["accuracy_flag"] == "True" and rows["jax"]["accuracy_flag"] == "False"
    assert rows["torch"]["failed"] == "1" and "boom" in rows["torch"]["errors"]
    assert float(rows["jax"]["train_mfu"]) == pytest.approx(0.3)
    assert rows["jax"]["peak_device_memory_mb"] == ""
    md = (tmp_path / "compare.md").read_text()
    assert "| jax | 2/2 | 0.6100 ± 0.0141 (n=2) | -1.50 pt |" in md
    assert "| torch | 2/3 | 0.6400 ± 0.0000 (n=2) | FLAG +3.00 pt |" in md
    assert "## Failed runs" in md and "**torch seed 2: failed** (exit code 1" in md
    assert "RuntimeError: boom in the test" in md
    assert "| jax | 300.00 | 30.00% | 200.00 | 20.00% |" in md
    assert "Test CPU" in md and "keras 3.15.1" in md
    assert "Machine peak: 1000.0 GFLOP/s float32" in md and "jax 1000.0, tensorflow 900.0, torch 800.0" in md
    for name in report_summary.PLOTS.values():
        assert f"]({name})" in md


def test_all_failed_still_reports(tmp_path):
    data = {"backends": ["jax"], "seeds": [0], "rows": [_failed("jax", 0)]}
    s = report.write_report(data, str(tmp_path))
    assert _by(s)["jax"]["completed"] == 0
    assert "| jax | 0/1 | failed |" in (tmp_path / "compare.md").read_text()
    assert (tmp_path / "accuracy.png").stat().st_size > 0


# ------------------------------------------------------------------ CLI
def test_report_only_rebuilds_identical_json(stored, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "rows.json").write_text(json.dumps(stored))
    report.write_report(stored, str(a))
    first = (a / "compare.json").read_bytes()
    shutil.copytree(a, b)
    for name in report_summary.FILES:
        (b / name).unlink()
    assert compare.main(["--report-only", str(b)]) == 0
    assert (b / "compare.json").read_bytes() == first
    assert compare.main(["--report-only", str(a)]) == 0
    assert (a / "compare.json").read_bytes() == first
    for name in report_summary.FILES:
        assert (b / name).stat().st_size > 0
    assert "kbench.compare" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--config", SMOKE, "--backends", "jax,tenserflow"], "unknown backend(s) 'tenserflow'"),
    (["--config", "no/such.yaml", "--backends", "jax"], "config file 'no/such.yaml' not found"),
    (["--config", SMOKE, "--seeds", "zero"], "--seeds 'zero'"),
    (["--report-only", "{tmp}"], "no rows.json there"),
    (["--report-only", "{tmp}/missing"], "no such folder"),
    (["--backends", "jax"], "--config FILE is required"),
])
def test_bad_cli_input(argv, message, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert compare.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_override_refused_before_any_run(tmp_path, capsys):
    rc = compare.main(["--config", SMOKE, "--backends", "jax", "--output", str(tmp_path / "o"),
                       "--", "--trainer.max_epohcs", "1"])
    assert rc == 2
    assert "trainer.max_epohcs" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_parse_seeds():
    assert compare.parse_seeds("3") == [0, 1, 2]
    assert compare.parse_seeds("0,5,7") == [0, 5, 7]
    assert compare.parse_seeds("42,") == [42]


def test_parity_flag_is_handed_over(monkeypatch):
    seen = []
    fake = types.ModuleType("kbench.parity.cli")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "kbench.parity.cli", fake)
    argv = ["--parity", "--models", "vgg16,resnet50,mobilenetv2", "--backends", "jax,tensorflow,torch"]
    assert compare.main(argv) == 0
    assert seen == [["--models", "vgg16,resnet50,mobilenetv2", "--backends", "jax,tensorflow,torch"]]


def test_make_row_reads_failed_status(tmp_path):
    """A run that wrote a ``failed`` results.json (kbench.trainer.results.write_status) is a failed row."""
    run = tmp_path / "runs" / "jax-seed0" / "m-1"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"status": "failed", "error": "non-finite loss nan at epoch 1",
                                                  "backend": "jax", "history": [{"epoch": 1}]}))
    log = tmp_path / "logs" / "jax-seed0.log"
    log.parent.mkdir()
    log.write_text("line 1\nerror: non-finite loss\n")
    row = compare_run.make_row("jax", 0, str(tmp_path), str(run), 2, str(log), 5.0)
    assert row["status"] == "failed" and row["exit_code"] == 2
    assert row["error"].startswith("exit code 2; non-finite loss nan at epoch 1")
    assert "error: non-finite loss" in row["error"]
    assert "history" not in row["results"] and row["run_dir"] == os.path.join("runs", "jax-seed0", "m-1")


# ------------------------------------------------------------------ end to end
TINY = """\
data:
  source: folder
  root: {root}
  batch_size: 16
model:
  backbone: mobilenetv3small
  weights: none
  image_size: 32
  head: gap
recipe:
  name: feature_extraction
  epochs: 1
trainer:
  precision: float32
  limit_train_batches: 4
  limit_val_batches: 2
  limit_test_batches: 2
  inference_batches: 2
  enable_checkpointing: false
  enable_progress_bar: false
"""


def test_compare_end_to_end_with_a_failing_backend(cifar_dir, tmp_path):
    """One real run on this process's backend and one on a backend name Keras refuses:
    the failure is a row with its error, the good run still reports."""
    import keras


    good = keras.backend.backend()
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY.format(root=cifar_dir))
    out = tmp_path / "cmp"
    data = compare.run_compare(str(cfg), [good, "nosuchbackend"], [0], str(out), ["--trainer.max_epochs", "1"],
                               compute=False)  # the FLOPs / peak probe: test_probe_stores_flops_and_peak
    stored = json.loads((out / "rows.json").read_text())
    assert [(r["backend"], r["status"]) for r in stored["rows"]] == [(good, "completed"), ("nosuchbackend", "failed")]
    ok, bad = stored["rows"]
    assert ok["results"]["backend"] == good and ok["results"]["seed"] == 0
    assert 0.0 <= ok["results"]["test_accuracy"] <= 1.0
    assert [m["epoch"] for m in ok["metrics"]] == [1] and math.isfinite(ok["metrics"][0]["loss"])
    assert (out / ok["log"]).stat().st_size > 0 and os.path.isdir(out / ok["run_dir"])
    assert bad["exit_code"] not in (0, None) and "nosuchbackend" in bad["error"]
    s = report.write_report(data, str(out))
    assert _by(s)[good]["completed"] == 1 and _by(s)["nosuchbackend"]["failed"] == 1
    md = (out / "compare.md").read_text()
    assert "**nosuchbackend seed 0: failed**" in md and "is not a backend kbench runs on" in md
    assert f"| {good} | 1/1 |" in md
    for name in report_summary.FILES:
        assert (out / name).stat().st_size > 0
    # a second compare into the same folder reuses the completed run
    again = compare_run.run_one(str(cfg), good, 0, str(out), ["--trainer.max_epochs", "1"])
    assert again["reused"] and again["status"] == "completed"


def test_annotate_compute_takes_the_best_peak(tmp_path, monkeypatch):
    """FLOPs from the first probe, peak = the highest backend's matmul rate for the row's dtype."""
    peaks = {"jax": 50.0, "torch": 80.0}

    def fake_probe(backend, dtypes, models, log, timeout_s=900):
        flops = {k: {"inference_per_image": 1e9, "train_per_image": 3e9} for k in models}
        return {"peaks": {d: {"gflops": peaks[backend], "method": "m"} for d in dtypes}, "flops": flops, "errors": {}}

    monkeypatch.setattr(compare_env, "run_probe", fake_probe)
    rows = [_row("jax", 0, 0.6, 1.0), _row("torch", 0, 0.6, 1.0), _failed("torch", 1)]
    for r in rows:
        r["flops"] = r["peak"] = None
    compare_env.annotate_compute(rows, str(tmp_path))
    assert rows[0]["flops"]["inference_per_image"] == 1e9 and rows[1]["flops"]["train_per_image"] == 3e9
    assert rows[0]["flops"]["model"] == {"backbone": "mobilenetv3small", "image_size": 32, "head": "gap",
                                         "num_classes": 10}
    assert rows[0]["peak"]["flops_per_s"] == 80e9 and rows[0]["peak"]["backend"] == "torch"
    assert rows[0]["peak"]["gflops_by_backend"] == {"jax": 50.0, "torch": 80.0}
    assert rows[2]["flops"] is None and rows[2]["peak"] is None  # failed rows untouched


def test_failed_probe_reports_its_error_line(tmp_path, monkeypatch):
    monkeypatch.setattr(compare_env, "PROBE_SCRIPT", "import sys; print('working'); sys.exit('error: probe died')")
    log = tmp_path / "probe-torch.log"
    out = compare_env.run_probe("torch", ["float32"], {}, str(log), timeout_s=300)
    assert out == {"peaks": {}, "flops": {}, "errors": {"probe": "exit code 1: error: probe died"}}
    assert log.read_text().startswith("$ KERAS_BACKEND=torch python -c ") and "working" in log.read_text()


def test_environment_keeps_the_rows_json_keys():
    env = compare_env.environment()
    assert list(env) == ["cpu", "cores", "memory_gib", "gpus", "os", "python", "packages"]
    assert list(env["packages"]) == ["keras", "jax", "jaxlib", "tensorflow", "torch", "numpy", "opencv", "matplotlib",
                                     "kbench"]


def _seed_peak(cache_dir) -> bool:
    """Store a float32 peak of 123 GFLOP/s for this backend where kbench.perf looks it up."""
    try:
        from kbench import perf
    except ImportError:
        return False
    cache_dir.mkdir(parents=True, exist_ok=True)
    entry = {"gflops": 123.0, "format": perf.PEAK_FORMAT, "dtype": "float32", "method": "seeded by the test"}
    (cache_dir / "peak.json").write_text(json.dumps({perf.machine_key("float32"): entry}))
    return True


@pytest.mark.slow
def test_probe_stores_flops_and_peak(tmp_path, monkeypatch):
    """The real probe subprocess on this backend (kbench.perf): FLOPs per image and the
    stored peak end up in the row."""
    import keras

    good = keras.backend.backend()
    # FLOPs counted and peak read in a scratch cache, not ~/.cache; a stored peak spares the matmul probe
    monkeypatch.setenv("KBENCH_CACHE_DIR", str(tmp_path / "cache"))
    seeded = _seed_peak(tmp_path / "cache")
    ok = _row(good, 0, 0.5, 1.0)
    ok["flops"] = ok["peak"] = None
    out = tmp_path
    compare_env.annotate_compute([ok], str(out), timeout_s=300)
    # FLOPs and peak are stored in the row (None with the reason where kbench.perf cannot give them)
    assert ok["flops"]["model"] == {"backbone": "mobilenetv3small", "image_size": 32, "head": "gap", "num_classes": 10}
    if ok["flops"]["error"] is None:
        assert ok["flops"]["train_per_image"] == pytest.approx(3 * ok["flops"]["inference_per_image"])
        assert ok["flops"]["inference_per_image"] > 0
    if seeded:
        assert ok["peak"]["error"] is None and ok["peak"]["dtype"] == "float32"
        assert ok["peak"]["flops_per_s"] == pytest.approx(123.0e9) and ok["peak"]["backend"] == good
    assert (out / "logs" / f"probe-{good}.log").exists()
