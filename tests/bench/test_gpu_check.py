"""scripts/gpu_check.py: summary from fake results.json / bench.json / nvidia-smi lines, and one tiny real run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import gpu_check  # noqa: E402

SMI_LINES = ["0, 10, 500", "0, 80, 20000", "0, 90, 21000", "0, [N/A], 0", "1, 0, 5", "1, 0, 5", "0, 4"]


def test_gpu_stats_of_sample_lines():
    g = gpu_check.gpu_stats(SMI_LINES)
    assert g == {"gpu": "0", "samples": 3, "util_mean": 60.0, "util_p50": 80.0, "util_max": 90.0,
                 "memory_used_mib_max": 21000.0}
    two_fields = gpu_check.gpu_stats(["50, 100", "70, 300", "garbage"])
    assert (two_fields["samples"], two_fields["util_mean"], two_fields["memory_used_mib_max"]) == (2, 60.0, 300.0)
    assert gpu_check.gpu_stats(["", "nvidia-smi failed"]) is None


def _fake_outputs(out: Path) -> None:
    run = out / "runs" / "torch" / "main-20261205-000000"
    run.mkdir(parents=True)
    phases = [{"phase": "feature_extraction", "train_images_per_s": 8148.0, "step_time_ms_p50": 7.8,
               "wall_time_s": 20.0},
              {"phase": "fine_tune", "train_images_per_s": 5106.0, "step_time_ms_p50": 12.5, "wall_time_s": 40.0}]
    (run / "results.json").write_text(json.dumps({"total_time_s": 89.0, "test_accuracy": 0.6585, "status": "completed",
                                                  "precision": "mixed_bfloat16", "phases": phases}))
    bench = out / "bench" / "torch"
    bench.mkdir(parents=True)
    rows = [{"backend": "torch", "model": "vgg16", "precision": "mixed_bfloat16", "mode": "train", "status": "ok",
             "images_per_s": 9203.0, "step_ms_p50": 27.8, "mfu": 0.0354, "peak_gflops": 989400.0,
             "peak_source": "vendor", "error": None}]
    (bench / "bench.json").write_text(json.dumps({"rows": rows, "backends": {"torch": {"peaks": {}}}}))


def test_summary_from_fake_results(tmp_path):
    _fake_outputs(tmp_path)
    main = gpu_check.main_job_summary(str(tmp_path / "runs" / "torch"))
    assert (main["total_time_s"], main["test_accuracy"]) == (89.0, 0.6585)
    assert main["head"] == {"phase": "feature_extraction", "images_per_s": 8148.0, "step_ms_p50": 7.8}
    assert main["block5"]["images_per_s"] == 5106.0 and len(main["phases"]) == 2
    bench = gpu_check.bench_summary(str(tmp_path / "bench" / "torch"))
    assert bench["rows"][0]["mfu"] == 0.0354 and bench["rows"][0]["peak_source"] == "vendor"
    assert gpu_check.main_job_summary(str(tmp_path / "runs" / "jax")) is None
    assert gpu_check.bench_summary(str(tmp_path / "nothing")) is None
    gpu = gpu_check.gpu_stats(SMI_LINES)
    runs = {"torch": {"main": {"status": "ok", "wall_s": 114.0, "results": main, "gpu": gpu},
                      "bench": {"status": "ok", "wall_s": 50.0, "bench": bench, "gpu": gpu}},
            "jax": {"main": {"status": "timeout", "wall_s": 180.0, "error": "stopped", "results": None, "gpu": None}}}
    env = {"cpu": "EPYC", "cores": 16, "gpus": ["NVIDIA H200, 143771 MiB"], "packages": {"keras": "3.15.1"}}
    s = gpu_check.build_summary(runs, missing=["tensorflow"], env=env, smi_error=None, wall_s=344.0, budget_s=450.0)
    pj, pm = gpu_check.write_summary(s, str(tmp_path))
    back = json.loads(Path(pj).read_text())
    assert back["backends"]["torch"]["main"]["results"]["head"]["images_per_s"] == 8148.0
    assert back["missing"] == ["tensorflow"] and back["machine"]["gpus"] == ["NVIDIA H200, 143771 MiB"]
    md = Path(pm).read_text()
    assert "| torch | ok | 114 | 89 | 0.6585 | 8,148 (7.8) | 5,106 (12.5) | 60 / 80 / 90 |" in md
    assert "| torch | vgg16 | mixed_bfloat16 | 9,203 | 27.8 | 3.5% | 989 TFLOP/s (vendor) | 60 / 80 / 90 |" in md
    assert "- jax main: timeout: stopped" in md and "not installed: tensorflow" in md


def test_budget_cuts_limits_and_skips(tmp_path, monkeypatch):
    """Each step's limit leaves MIN_RUN_S for every later one; a step with too little time is skipped."""
    seen = []
    monkeypatch.setattr(gpu_check, "run_step", lambda cmd, b, log, limit, smi: seen.append(round(limit)) or
                        ({"status": "skipped"} if limit < gpu_check.MIN_RUN_S else {"status": "ok", "wall_s": 1.0}))
    args = gpu_check.parse_args(["--output", str(tmp_path), "--budget", "100", "--run-timeout", "500", "--", "--x", "1"])
    assert args.main_args == ["--x", "1"]
    runs = gpu_check.run_all(args, ["jax", "torch"], smi_ok=False)
    assert seen == [100 - 3 * 30, 100 - 2 * 30, 100 - 30, 100]  # a skipped step leaves its time to the later ones
    assert runs["jax"]["main"]["status"] == "skipped" and runs["torch"]["bench"]["status"] == "ok"
    assert runs["torch"]["main"]["results"] is None and runs["torch"]["bench"]["bench"] is None


@pytest.mark.slow
@pytest.mark.skipif(not gpu_check.host.is_installed("torch"), reason="needs torch")
def test_tiny_real_run_on_torch(cifar_dir, tmp_path):
    """A real (CPU) main job through the script: smoke config on a small real CIFAR-10 folder, no bench."""
    out = tmp_path / "check"
    cmd = [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--backends", "torch", "--skip-bench",
           "--output", str(out), "--budget", "170", "--run-timeout", "150", "--",
           "--config", str(ROOT / "configs" / "smoke.yaml"), "--data.source", "folder", "--data.root", str(cifar_dir),
           "--data.max_train_per_class", "3", "--data.max_test_per_class", "2", "--recipe.epochs", "1",
           "--trainer.inference_batches", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=200)
    s = json.loads((out / "summary.json").read_text())
    main = s["backends"]["torch"]["main"]
    assert done.returncode == 0, (done.stdout[-2000:], main.get("error"))
    assert main["status"] == "ok" and main["wall_s"] > 0 and s["missing"] == []
    res = main["results"]
    assert res["status"] == "completed" and 0 <= res["test_accuracy"] <= 1 and res["total_time_s"] > 0
    assert res["head"]["phase"] == "scratch" and res["block5"] is None  # the smoke recipe has one phase
    assert "| torch | ok |" in (out / "summary.md").read_text()
