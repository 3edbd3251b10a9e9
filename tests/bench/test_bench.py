"""Throughput bench and FLOPs/peak numbers (kbench.bench, kbench.perf) on the current backend."""

from __future__ import annotations

import json
import os
import sys

import keras
import pytest

from kbench import host, perf
from kbench.bench import cli as bench
from kbench.bench import measure as bench_measure
from kbench.bench import report as bench_report

# VGG16 (Simonyan & Zisserman 2015) at 224x224: ~15.5 G multiply-accumulates (the usual
# figure, e.g. torchvision's model table: 15.47 "GFLOPS" = GMACs for the full network with
# its fully connected classifier). kbench's model drops that classifier (123.6 M MACs) and
# adds a 512 -> 10 gap head.
VGG16_REFERENCE_MACS = 15.5e9
# Convolutions of VGG16 (configuration D): (output side at 224 input, in channels, out channels), 3x3 kernels.
VGG16_CONVS = ([(224, 3, 64), (224, 64, 64), (112, 64, 128), (112, 128, 128)]
               + [(56, 128, 256), (56, 256, 256), (56, 256, 256)]
               + [(28, 256, 512), (28, 512, 512), (28, 512, 512)] + [(14, 512, 512)] * 3)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    """Keep the FLOPs / peak stores of the tests out of the user's ~/.cache."""
    monkeypatch.setenv("KBENCH_CACHE_DIR", str(tmp_path / "cache"))


def test_vgg16_flops_at_224_match_the_reference():
    flops = perf.model_flops_per_image("vgg16", 224, training=False)
    assert abs(flops / 2 - VGG16_REFERENCE_MACS) / VGG16_REFERENCE_MACS < 0.02
    exact_macs = sum(s * s * 9 * cin * cout for s, cin, cout in VGG16_CONVS) + 512 * 10
    assert flops == 2 * exact_macs
    assert perf.model_flops_per_image("vgg16", 224, training=True) == 3 * flops
    assert os.path.isfile(os.path.join(os.environ["KBENCH_CACHE_DIR"], "flops.json"))


def test_flops_scale_with_image_area():
    head = 2 * 512 * 10  # the gap head's Dense does not depend on the image size
    f32, f64 = (perf.model_flops_per_image("vgg16", s, training=False) for s in (32, 64))
    assert (f64 - head) == pytest.approx(4 * (f32 - head), rel=1e-9)


def test_count_flops_of_each_layer_kind():
    inp = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(6, 3, padding="same", name="conv")(inp)  # 8*8*6 * 9*4
    x = keras.layers.Conv2D(6, 1, groups=2, name="grouped")(x)  # 8*8*6 * 1*6/2
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same", name="dw")(x)  # 4*4*6 * 9
    x = keras.layers.SeparableConv2D(8, 3, padding="valid", name="sep")(x)  # 2*2*6*9 + 2*2*6*8
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(5, name="dense")(x)  # 8*5
    c = perf.count_flops(keras.Model(inp, out))
    assert c["by_layer"] == {"conv": 8 * 8 * 6 * 9 * 4, "grouped": 8 * 8 * 6 * 3, "dw": 4 * 4 * 6 * 9,
                             "sep": 2 * 2 * 6 * 9 + 2 * 2 * 6 * 8, "dense": 40}
    assert c["flops"] == 2 * sum(c["by_layer"].values())


@pytest.mark.slow
def test_mobilenetv2_flops_at_224_match_the_paper():
    # Sandler et al. 2018 (MobileNetV2), table 4: 300 M multiply-adds at 224x224 (with its 1.28 M MAC classifier).
    macs = perf.model_flops_per_image("mobilenetv2", 224, training=False) / 2
    assert abs(macs - 300e6) / 300e6 < 0.02


def test_warmup_is_excluded_from_the_timing():
    clock = {"t": 0.0, "calls": 0}

    def step():  # first call "compiles" for 5 s, later calls take 0.1 s
        clock["t"] += 5.0 if clock["calls"] == 0 else 0.1
        clock["calls"] += 1

    timing = bench_measure.time_steps(step, warmup=2, steps=4, repeats=3, clock=lambda: clock["t"])
    s = bench_measure.summarize(timing, batch_size=8)
    assert clock["calls"] == 2 + 4 * 3
    assert (s["warmup_steps"], s["measured_steps"], s["repeats"]) == (2, 4, 3)
    assert s["compile_s"] == pytest.approx(5.1) and s["first_step_s"] == pytest.approx(5.0)
    assert s["images_per_s"] == pytest.approx(80.0) and s["step_ms_p95"] == pytest.approx(100.0)


def test_short_bench_in_process_tiny_model():
    rows = bench_measure.measure_model("mobilenetv3small", 32, 4, "float32", ("inference",), steps=2, warmup=1,
                                       repeats=2, peak_gflops={"float32": 50.0})
    (r,) = rows
    assert r["backend"] == keras.backend.backend() and r["status"] == "ok"
    assert r["images_per_s"] > 0 and r["images_per_s_min"] <= r["images_per_s"] <= r["images_per_s_max"]
    assert (r["warmup_steps"], r["measured_steps"], r["repeats"]) == (1, 2, 2)
    assert [len(b) for b in r["step_times_ms"]] == [2, 2] and len(r["warmup_times_s"]) == 1
    assert r["step_ms_p95"] >= r["step_ms_p50"] > 0 and r["compile_s"] > 0
    assert r["flops_per_image"] == perf.model_flops_per_image("mobilenetv3small", 32, training=False)
    assert r["mfu"] == pytest.approx(r["images_per_s"] * r["flops_per_image"] / 50e9)
    assert keras.config.dtype_policy().name == "float32"


@pytest.mark.slow
def test_short_bench_training_mixed_precision():
    (r,) = bench_measure.measure_model("mobilenetv3small", 32, 4, "mixed_bfloat16", ("train",), steps=2, warmup=1,
                                       repeats=1)
    assert r["images_per_s"] > 0 and r["measured_steps"] == 2 and r["mfu"] is None
    assert r["flops_per_image"] == perf.model_flops_per_image("mobilenetv3small", 32, training=True)
    assert keras.config.dtype_policy().name == "float32"


def test_peak_probe_and_store(tmp_path, monkeypatch):
    r = perf.measure_peak_gflops("float32", n=128, repeats=2, min_time_s=0.01)
    assert r["gflops"] > 0 and len(r["repeats"]) == 2 and r["n"] == 128
    calls = []
    real = perf.measure_peak_gflops
    monkeypatch.setattr(perf, "measure_peak_gflops", lambda *a, **k: calls.append(1) or real("float32", n=64,
                                                                                               repeats=1))
    path = str(tmp_path / "peak.json")
    first = perf.machine_peak(path)
    second = perf.machine_peak(path)
    assert len(calls) == 1 and not first["cached"] and second["cached"]
    assert second["gflops"] == first["gflops"] > 0
    stored = json.load(open(path))
    (key,) = stored
    assert key == perf.machine_key("float32") and keras.backend.backend() in key
    assert stored[key]["measured_at"] and stored[key]["device"]["name"]


def _row(backend, ips, model="vgg16", mode="inference", size=32, precision="float32", **kw):
    return {"backend": backend, "model": model, "image_size": size, "batch_size": 32, "precision": precision,
            "mode": mode, "status": "ok", "error": None, "images_per_s": ips, "images_per_s_min": ips * 0.9,
            "images_per_s_max": ips * 1.1, "step_ms_p50": 32e3 / ips, "step_ms_p95": 36e3 / ips, "compile_s": 2.0,
            "flops_per_image": 6.3e8, "achieved_gflops": ips * 6.3e8 / 1e9, "mfu": None, **kw}


GOLDEN_ROWS = [
    _row("jax", 50.0), _row("tensorflow", 580.0), _row("torch", 340.0),
    _row("jax", 40.0, mode="train"), _row("tensorflow", 45.0, mode="train"),
    _row("tensorflow", 12.0, mode="train", precision="mixed_bfloat16", mfu=1.09, peak_gflops=208.0),
    {"backend": "torch", "model": "vgg16", "image_size": 32, "batch_size": 32, "precision": "float32",
     "mode": "train", "status": "failed", "error": "RuntimeError: boom", "images_per_s": None},
]


def test_report_golden_values(tmp_path, capsys):
    rel = {(r["backend"], r["mode"], r["precision"]): r["relative_text"] for r in bench_report.annotate(GOLDEN_ROWS)}
    assert rel[("jax", "inference", "float32")] == "0.09x of tensorflow"
    assert rel[("torch", "inference", "float32")] == "0.59x of tensorflow"
    assert rel[("tensorflow", "inference", "float32")] == "fastest"
    assert rel[("torch", "train", "float32")] == "failed"
    assert bench_report.findings(GOLDEN_ROWS) == [
        "vgg16 inference at 32x32 (batch 32, float32): jax 50 images/s vs tensorflow 580 (11.6x slower)",
        "vgg16 train at 32x32 (batch 32): tensorflow mixed_bfloat16 12 images/s vs float32 45 (3.8x slower)",
        "tensorflow mixed_bfloat16: MFU above 100 % in 1 measurement (up to 109.0%, vgg16 train): its matmul peak "
        "probe (208 GFLOP/s) underestimates what its convolutions reach; read MFU across backends with that in mind",
        "torch failed (1 measurement: vgg16 train 32px b32 float32): RuntimeError: boom",
    ]
    data = {"format": 1, "environment": {"cpu": "Test CPU", "cores": 2, "versions": {"keras": "3"}},
            "backends": {"torch": {"status": "failed", "error": "RuntimeError: boom"}}, "rows": GOLDEN_ROWS}
    md = bench_report.render_markdown(data)
    assert "| vgg16 | 32 | 32 | inference | float32 | jax | 50 | 45-55 | 0.09x of tensorflow | 640.0 | 720.0 |" in md
    assert "- vgg16 inference at 32x32 (batch 32, float32): jax 50 images/s vs tensorflow 580 (11.6x slower)" in md
    csv_lines = bench_report.render_csv(GOLDEN_ROWS).splitlines()
    assert csv_lines[0].startswith("backend,model,image_size,batch_size,precision,mode,status,images_per_s")
    assert len(csv_lines) == 1 + len(GOLDEN_ROWS)
    # --report-only rebuilds the same report from the stored rows alone
    paths = bench_report.build_report(data, str(tmp_path))
    first = open(paths["md"]).read()
    os.remove(paths["md"])
    assert bench.main(["--report-only", str(tmp_path)]) == 1  # a failed row in it
    assert open(paths["md"]).read() == first == md
    assert "11.6x slower" in capsys.readouterr().out


@pytest.mark.parametrize("argv, expected", [
    (["--models", "vgg16,nosuchnet"], "unknown model 'nosuchnet'; choose from: vgg16, vgg19, resnet50"),
    (["--backends", "jax,mxnet"], "unknown backend 'mxnet'; choose from: jax, tensorflow, torch"),
    (["--precision", "float64"], "unknown precision 'float64'; choose from: float32, mixed_bfloat16, mixed_float16"),
    (["--modes", "eval"], "unknown mode 'eval'; choose from: train, inference"),
    (["--image-size", "16"], "input size 16 is below the minimum of 32 px"),
    (["--batch-size", "0"], "--batch-size must be positive integers"),
    (["--report-only", "/nonexistent/dir"], "cannot read '/nonexistent/dir/bench.json'"),
])
def test_bad_cli_input_exits_2_with_one_message(argv, expected, capsys):
    assert bench.main(argv) == 2
    out = capsys.readouterr()
    text = " ".join((out.out + out.err).split())
    assert expected in text and "Traceback" not in text


def test_failed_backend_is_recorded_and_reported(tmp_path):
    out = tmp_path / "out"
    code = bench.main(["--models", "mobilenetv3small", "--image-size", "32", "--batch-size", "2", "--modes",
                       "inference", "--backends", keras.backend.backend(), "--timeout", "0.2", "--no-peak",
                       "--output", str(out)])
    assert code == 1
    data = json.load(open(out / "bench.json"))
    (row,) = data["rows"]
    assert row["status"] == "failed" and "timed out after 0.2 s" in row["error"]
    assert data["backends"][keras.backend.backend()]["status"] == "failed"
    assert data["environment"]["versions"]["keras"] == keras.__version__
    assert "failed" in (out / "bench.md").read_text() and (out / "bench.csv").exists()


def test_crashed_worker_error_is_its_exception_line(tmp_path, monkeypatch):
    """A worker that dies: its last exception line is the error of the backend and of every row."""
    crash = "import sys; print('[bench] starting'); print('Traceback ...\\nRuntimeError: boom', file=sys.stderr); " \
            "sys.exit(3)"
    monkeypatch.setattr(bench, "_worker_argv", lambda *a: [sys.executable, "-c", crash])
    echoed = []
    args = bench.parse_args(["--models", "mobilenetv3small", "--image-size", "32", "--modes", "inference,train",
                             "--backends", "torch"])
    rows, info = bench.run_backend(args, "torch", str(tmp_path), echo=echoed.append)
    assert info["status"] == "failed" and info["returncode"] == 3
    assert info["error"] == "worker exited with status 3: RuntimeError: boom"
    assert [(r["mode"], r["status"], r["error"]) for r in rows] == [("inference", "failed", info["error"]),
                                                                     ("train", "failed", info["error"])]
    assert echoed == ["[bench] starting"] and (tmp_path / "logs" / "torch.log").read_text().count("boom") == 1


def test_environment_keeps_the_bench_json_keys():
    env = bench.environment()
    assert list(env) == ["cpu", "cores", "load_average_at_start", "platform", "kbench", "versions"]
    assert list(env["versions"]) == ["python", "keras", "jax", "jaxlib", "tensorflow", "torch", "numpy", "opencv"]
    assert env["versions"]["keras"] == keras.__version__ and env["cpu"] == host.cpu_name()


@pytest.mark.slow
def test_bench_cli_one_backend_subprocess(tmp_path):
    out = tmp_path / "out"
    b = keras.backend.backend()
    code = bench.main(["--models", "mobilenetv3small", "--image-size", "32", "--batch-size", "4", "--modes",
                       "inference", "--backends", b, "--steps", "2", "--warmup", "1", "--repeats", "2",
                       "--no-peak", "--output", str(out)])
    data = json.load(open(out / "bench.json"))
    assert code == 0, data["backends"]
    (row,) = data["rows"]
    assert row["backend"] == b and row["images_per_s"] > 0 and row["measured_steps"] == 2
    assert data["backends"][b]["versions"]["keras"] == keras.__version__
    assert {"bench.json", "bench.csv", "bench.md"} <= set(os.listdir(out))


def test_worker_env_record_keeps_xla_flags(tmp_path):
    """The worker's environment record reaches bench.json's ``backends`` with its ``xla_flags``."""
    flags = {"XLA_FLAGS": "--xla_disable_hlo_passes=algsimp", "set_by_kbench": ["--xla_disable_hlo_passes=algsimp"],
             "kernels": [], "setting": None}
    f = tmp_path / "jax.rows.jsonl"
    f.write_text(json.dumps({"record": "env", "device": {"type": "cpu"}, "versions": {"jax": "0.10.2"}, "peaks": {},
                             "xla_flags": flags}) + "\n" + json.dumps({"record": "row", "mode": "train"}) + "\n{cut")
    rows, env = bench._read_rows(str(f))
    assert rows == [{"mode": "train"}]
    assert env == {"device": {"type": "cpu"}, "versions": {"jax": "0.10.2"}, "peaks": {}, "xla_flags": flags}
