"""Vendor GPU peaks (kbench.gpu_peaks) and the MFU peak on a (faked) GPU (kbench.perf.machine_peak)."""

from __future__ import annotations

import json

import keras
import pytest

from kbench import backend, gpu_peaks, perf
from kbench.bench import measure as bench_measure
from kbench.compare import env as compare_env


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    """Keep the FLOPs / peak stores of the tests out of the user's ~/.cache."""
    monkeypatch.setenv("KBENCH_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize("name, chip", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA H100 SXM5 80GB", "H100 SXM"), ("NVIDIA H100 PCIe", "H100 PCIe"),
    ("NVIDIA H100 NVL", "H100 NVL"), ("NVIDIA H200", "H200 SXM"), ("NVIDIA H200 NVL", "H200 NVL"),
    ("NVIDIA A100-SXM4-80GB", "A100"), ("NVIDIA A100-PCIE-40GB", "A100"), ("NVIDIA A100 80GB PCIe", "A100"),
    ("NVIDIA L4", "L4"), ("NVIDIA L40S", "L40S"), ("nvidia l4", "L4"), ("NVIDIA H200, NVIDIA H200", "H200 SXM"),
    ("NVIDIA L40", None), ("NVIDIA GH200 480GB", None), ("NVIDIA H100", None), ("NVIDIA GeForce RTX 4090", None),
    ("Tesla V100-SXM2-16GB", None), ("cuda:0", None), ("", None), (None, None)])
def test_chip_lookup_by_device_name(name, chip):
    assert gpu_peaks.chip_of(name) == chip


def test_vendor_peak_columns():
    assert gpu_peaks.vendor_peak("NVIDIA L4", "bfloat16")["gflops"] == pytest.approx(121_000.0)
    assert gpu_peaks.vendor_peak("NVIDIA L40S", "bfloat16")["gflops"] == pytest.approx(366_000.0)
    p = gpu_peaks.vendor_peak("NVIDIA H100 PCIe", "float16")
    assert (p["tflops"], p["chip"], p["column"]) == (756.5, "H100 PCIe", "fp16") and "datasheet" in p["source"]
    assert gpu_peaks.vendor_peak("NVIDIA A100-SXM4-80GB", "float32", tf32=True)["tflops"] == 156.0
    assert gpu_peaks.vendor_peak("NVIDIA A100-SXM4-80GB", "float32", tf32=False)["tflops"] == 19.5
    assert gpu_peaks.vendor_peak("NVIDIA H200", "float64") is None
    assert gpu_peaks.vendor_peak("NVIDIA GeForce RTX 4090", "bfloat16") is None


def _fake_gpu(monkeypatch, name, tf32=True):
    monkeypatch.setattr(backend, "gpu_devices", lambda: [name])
    monkeypatch.setattr(backend, "float32_uses_tf32", lambda: tf32)
    calls = []

    def fake_probe(dtype="float32", n=None, repeats=5, **kw):
        calls.append(n or perf.probe_n())
        return {"gflops": 400_000.0, "gflops_min": 390_000.0, "gflops_max": 410_000.0, "repeats": [400_000.0],
                "n": calls[-1], "inner": 1, "dtype": dtype, "backend": keras.backend.backend(), "warmup_s": 0.1}

    monkeypatch.setattr(perf, "measure_peak_gflops", fake_probe)
    return calls


def test_known_gpu_uses_the_vendor_peak_and_keeps_the_probe(tmp_path, monkeypatch):
    calls = _fake_gpu(monkeypatch, "NVIDIA H100 80GB HBM3")
    path = str(tmp_path / "peak.json")
    first = perf.machine_peak(path, "bfloat16")
    assert calls == [perf.GPU_PROBE_N] == [8192]
    assert first["peak_source"] == "vendor" and first["gflops"] == pytest.approx(989_400.0)
    assert first["measured_gflops"] == 400_000.0 and first["vendor"]["chip"] == "H100 SXM"
    stored = json.load(open(path))[perf.machine_key("bfloat16")]
    assert stored["peak_source"] == "vendor" and stored["format"] == perf.PEAK_FORMAT == 2
    assert stored["gflops"] == pytest.approx(989_400.0) and stored["measured_gflops"] == 400_000.0
    again = perf.machine_peak(path, "bfloat16")
    assert again["cached"] and len(calls) == 1 and again["gflops"] == pytest.approx(989_400.0)
    fp32 = perf.machine_peak(path, "float32")
    assert fp32["gflops"] == pytest.approx(494_700.0) and fp32["vendor"]["column"] == "tf32"


def test_unknown_gpu_and_stale_entries_use_the_measured_peak(tmp_path, monkeypatch):
    calls = _fake_gpu(monkeypatch, "NVIDIA GeForce RTX 4090")
    path = str(tmp_path / "peak.json")
    key = perf.machine_key("bfloat16")
    with open(path, "w") as f:
        json.dump({key: {"gflops": 1.0, "format": 1}}, f)  # a 2048^2 entry from before PEAK_FORMAT 2
    entry = perf.machine_peak(path, "bfloat16")
    assert len(calls) == 1 and not entry["cached"]
    assert entry["peak_source"] == "measured" and entry["gflops"] == entry["measured_gflops"] == 400_000.0
    assert entry["vendor"] is None


def test_cpu_probe_size_and_measured_peak(tmp_path, monkeypatch):
    monkeypatch.setattr(backend, "gpu_devices", lambda: [])
    assert perf.probe_n() == perf.CPU_PROBE_N == 2048
    assert backend.float32_uses_tf32() is False
    real = perf.measure_peak_gflops
    monkeypatch.setattr(perf, "measure_peak_gflops", lambda *a, **k: real("float32", n=64, repeats=1))
    entry = perf.machine_peak(str(tmp_path / "peak.json"))
    assert entry["peak_source"] == "measured" and entry["gflops"] == entry["measured_gflops"] > 0


def test_mfu_against_the_vendor_peak(tmp_path, monkeypatch):
    _fake_gpu(monkeypatch, "NVIDIA L4", tf32=False)
    peak = perf.machine_peak(str(tmp_path / "peak.json"), "float32")
    assert peak["gflops"] == pytest.approx(30_300.0) and peak["peak_source"] == "vendor"
    monkeypatch.undo()  # measure on the real (CPU) device, against the L4's fp32 peak
    (r,) = bench_measure.measure_model("mobilenetv3small", 32, 4, "float32", ("inference",), steps=2, warmup=1,
                                       repeats=1, peak_gflops={"float32": peak["gflops"]},
                                       peak_sources={"float32": peak["peak_source"]})
    assert r["peak_source"] == "vendor" and r["peak_gflops"] == pytest.approx(30_300.0)
    assert r["mfu"] == pytest.approx(r["images_per_s"] * r["flops_per_image"] / 30_300e9)


def test_gpu_devices_reports_chip_names(monkeypatch):
    """JAX gives the chip name (``device_kind``), not ``cuda:0``; torch ``get_device_name``."""
    from types import SimpleNamespace

    b = keras.backend.backend()
    if b == "jax":
        devs = [SimpleNamespace(platform="gpu", device_kind="NVIDIA H200"), SimpleNamespace(platform="cpu")]
        monkeypatch.setattr("jax.devices", lambda *a: devs)
    elif b == "torch":
        monkeypatch.setattr("torch.cuda.is_available", lambda: True)
        monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
        monkeypatch.setattr("torch.cuda.get_device_name", lambda i: "NVIDIA H200")
    else:
        pytest.skip("no GPU fake for tensorflow's physical devices")
    assert backend.gpu_devices() == ["NVIDIA H200"]
    assert backend.device()["name"] == "NVIDIA H200" and backend.float32_uses_tf32() is True
    assert perf.probe_n() == 8192


def test_compare_rows_name_the_vendor_peak(tmp_path, monkeypatch):
    vendor = gpu_peaks.vendor_peak("NVIDIA H200", "bfloat16")

    def fake_probe(backend, dtypes, models, log, timeout_s=900):
        peak = {"gflops": vendor["gflops"], "measured_gflops": 700e3 if backend == "jax" else 760e3,
                "peak_source": "vendor", "vendor": vendor}
        return {"peaks": {d: peak for d in dtypes}, "flops": {}, "errors": {}}

    monkeypatch.setattr(compare_env, "run_probe", fake_probe)
    rows = [{"status": "completed", "backend": b, "run_dir": b, "results": {"precision": "mixed_bfloat16"}}
            for b in ("jax", "torch")]
    compare_env.annotate_compute(rows, str(tmp_path))
    for r in rows:
        assert r["peak"]["flops_per_s"] == pytest.approx(989.4e12) and r["peak"]["dtype"] == "bfloat16"
        assert r["peak"]["peak_source"] == "vendor" and r["peak"]["vendor"]["chip"] == "H200 SXM"
        assert "H200 Tensor Core GPU datasheet" in r["peak"]["source"]
        assert r["peak"]["measured_gflops_by_backend"] == {"jax": 700e3, "torch": 760e3}
