"""Throughput bench: images/s, step times and MFU per model, size, batch, precision and backend.

    python -m kbench.bench --models vgg16,resnet50,mobilenetv2 --image-size 64 --batch-size 32 \\
        --backends jax,tensorflow,torch --precision float32,mixed_bfloat16 \\
        [--steps 20 --warmup 3 --repeats 3] [--modes train,inference] [--output DIR]
    python -m kbench.bench --report-only DIR     # rebuild the report from DIR/bench.json

The parent process starts one worker subprocess per backend (``KERAS_BACKEND``
set, ``XLA_PYTHON_CLIENT_PREALLOCATE=false``), one after the other so they do
not compete for the machine. Each worker measures every requested
model / image size / batch size / precision / mode on its backend and appends
one JSON row per measurement to a rows file; a worker that cannot start,
crashes or times out is recorded as failed with its error text, its missing
measurements become failed rows, and the other backends still report.

What one measurement does (:func:`measure_model`):

* a synthetic fixed batch: seeded random pixels in [0, 255] as float32
  ``(batch, size, size, 3)`` and integer labels in ``[0, num_classes)``;
* the model of ``kbench.models.build_model`` with ``weights="none"`` (random
  initialisation: speed does not depend on the weight values, and nothing is
  downloaded) and the ``gap`` head, built after setting the Keras dtype policy
  of the precision;
* training: ``model.compile(Adam, sparse categorical cross-entropy, accuracy,
  jit_compile)`` and ``model.train_on_batch``; inference: ``model.predict_on_batch``.
  Each step ends with its results on the host (the loss as a Python float and the
  logits bias fetched, or the predictions as NumPy), so asynchronous backends are
  timed to completion;
* ``--warmup`` steps first (tracing / compilation; their time is reported as
  ``compile_s``, not counted), then ``--repeats`` timed blocks of ``--steps``
  steps. images/s is reported as the median over repeats with min and max; step
  times (ms) as p50 and p95 over all timed steps;
* MFU from :mod:`kbench.perf`: FLOPs per image counted from the model's layers
  (training = 3 x forward) over the machine's matmul peak on the same backend and
  compute dtype (float32, or bfloat16 / float16 for the mixed policies).

The report (terminal table, ``bench.json``, ``bench.csv``, ``bench.md``) is a pure
function of the stored rows (:func:`build_report`). It shows every backend's
images/s relative to the fastest backend for the same model / size / batch /
mode / precision and lists under "Findings" every gap larger than 3x, a mixed
precision that is more than 3x slower than float32 on the same backend, and every
failure.

Exit status: 0 all measurements succeeded, 1 some failed (report still written),
2 bad command-line input (one message listing the valid values, no traceback).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from importlib import metadata

from kbench import KbenchError, __version__

BACKENDS = ("jax", "tensorflow", "torch")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
MODES = ("train", "inference")
#: A backend this many times slower than the fastest one is named under "Findings".
GAP_FACTOR = 3.0
BENCH_FORMAT = 1
#: Compute dtype of each precision, used to pick the matmul peak for MFU.
PEAK_DTYPE = {"float32": "float32", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}
ROW_KEYS = ("backend", "model", "image_size", "batch_size", "precision", "mode")
CSV_COLUMNS = ("backend", "model", "image_size", "batch_size", "precision", "mode", "status", "images_per_s",
               "images_per_s_min", "images_per_s_max", "relative_to_fastest", "fastest_backend", "step_ms_p50",
               "step_ms_p95", "compile_s", "first_step_s", "warmup_steps", "measured_steps", "repeats",
               "flops_per_image", "achieved_gflops", "peak_gflops", "mfu", "params", "jit_compile", "error")


def _log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


# --------------------------------------------------------------------------- timing core


def time_steps(step, *, warmup: int, steps: int, repeats: int, clock=time.perf_counter) -> dict:
    """Call ``step()`` ``warmup`` times untimed-for-throughput, then ``repeats`` x ``steps`` timed times.

    ``step`` must return only once its work is finished (results on the host).

    Returns:
        ``{"warmup_times_s": [s] * warmup, "step_times_s": [[s] * steps] * repeats}`` (seconds).
    """
    warm = []
    for _ in range(warmup):
        t0 = clock()
        step()
        warm.append(clock() - t0)
    blocks = []
    for _ in range(repeats):
        times = []
        for _ in range(steps):
            t0 = clock()
            step()
            times.append(clock() - t0)
        blocks.append(times)
    return {"warmup_times_s": warm, "step_times_s": blocks}


def _percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (NumPy's default method), ``q`` in [0, 100]."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(timing: dict, batch_size: int) -> dict:
    """Throughput figures from :func:`time_steps` output.

    Returns:
        ``images_per_s`` (median over repeats of ``steps x batch / block time``),
        ``images_per_s_min`` / ``_max`` / ``_repeats`` (per repeat, images/s),
        ``step_ms_p50`` / ``step_ms_p95`` (over every timed step, ms),
        ``compile_s`` (total warm-up time, s; includes tracing and compilation),
        ``first_step_s``, ``warmup_steps``, ``measured_steps`` (steps per repeat), ``repeats``.
    """
    blocks = timing["step_times_s"]
    rates = [len(b) * batch_size / sum(b) for b in blocks if b and sum(b) > 0]
    flat = [t for b in blocks for t in b]
    warm = timing["warmup_times_s"]
    return {
        "images_per_s": statistics.median(rates) if rates else None,
        "images_per_s_min": min(rates) if rates else None,
        "images_per_s_max": max(rates) if rates else None,
        "images_per_s_repeats": rates,
        "step_ms_p50": _percentile(flat, 50) * 1e3 if flat else None,
        "step_ms_p95": _percentile(flat, 95) * 1e3 if flat else None,
        "compile_s": sum(warm),
        "first_step_s": warm[0] if warm else None,
        "warmup_steps": len(warm),
        "measured_steps": len(blocks[0]) if blocks else 0,
        "repeats": len(blocks),
    }


# --------------------------------------------------------------------------- worker


def synthetic_batch(batch_size: int, image_size: int, num_classes: int, seed: int = 0):
    """Seeded fixed batch: float32 pixels ``(batch, size, size, 3)`` with integer values in [0, 255]
    and int32 labels ``(batch,)`` in ``[0, num_classes)``, as NumPy arrays."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (batch_size, image_size, image_size, 3)).astype(np.float32)
    y = rng.integers(0, num_classes, (batch_size,)).astype(np.int32)
    return x, y


def measure_model(model_name: str, image_size: int, batch_size: int, precision: str, modes=MODES, *,
                  steps: int = 20, warmup: int = 3, repeats: int = 3, num_classes: int = 10, seed: int = 0,
                  jit_compile: bool | str = "auto", peak_gflops: dict | None = None) -> list[dict]:
    """Measure one model on the ACTIVE backend, in this process: one row per mode.

    ``peak_gflops`` maps a compute dtype (``"float32"``, ``"bfloat16"``...) to the
    machine's matmul peak in GFLOP/s (:func:`kbench.perf.machine_peak`); without
    it ``mfu`` is ``None``. The process-wide dtype policy is set to ``precision``
    for the build and put back to ``float32`` afterwards.

    Returns:
        rows (dicts) with :data:`ROW_KEYS`, ``status`` ``"ok"``, the fields of
        :func:`summarize` (images/s, ms, s), ``flops_per_image`` (FLOPs),
        ``achieved_gflops`` (GFLOP/s), ``peak_gflops``, ``mfu`` (fraction), ``params``.

    Raises:
        KbenchError: unknown model, size below its minimum, bad precision or mode.
        Anything the backend raises while building, compiling or running.
    """
    import gc

    import keras

    from kbench import backend, perf
    from kbench.models import build_model

    if precision not in PRECISIONS:
        raise KbenchError(f"unknown precision {precision!r}; choose from: {', '.join(PRECISIONS)}")
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise KbenchError(f"unknown mode {bad[0]!r}; choose from: {', '.join(MODES)}")
    keras.utils.set_random_seed(seed)
    keras.config.set_dtype_policy(precision)
    try:
        tm = build_model(model_name, "none", image_size, "gap", 0.5, "auto", num_classes)
        model = tm.keras_model
        forward_flops = perf.count_flops(model)["flops"]
        x_np, y_np = synthetic_batch(batch_size, image_size, num_classes, seed)
        x, y = keras.ops.convert_to_tensor(x_np), keras.ops.convert_to_tensor(y_np)
        model.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"], jit_compile=jit_compile)
        last_var = model.trainable_variables[-1]

        def train_step():
            model.train_on_batch(x, y)  # returns the loss/metrics as Python floats
            keras.ops.convert_to_numpy(last_var)  # the optimizer update finished too

        def infer_step():
            keras.ops.convert_to_numpy(model.predict_on_batch(x))

        rows = []
        for mode in modes:
            step = train_step if mode == "train" else infer_step
            timing = time_steps(step, warmup=warmup, steps=steps, repeats=repeats)
            s = summarize(timing, batch_size)
            flops = forward_flops * (perf.TRAIN_FLOPS_FACTOR if mode == "train" else 1.0)
            peak = (peak_gflops or {}).get(PEAK_DTYPE[precision])
            ips = s["images_per_s"]
            rows.append({
                "backend": backend.name(), "model": model_name, "image_size": image_size, "batch_size": batch_size,
                "precision": precision, "mode": mode, "status": "ok", "error": None, **s,
                "step_times_ms": [[round(t * 1e3, 4) for t in b] for b in timing["step_times_s"]],
                "warmup_times_s": timing["warmup_times_s"],
                "flops_per_image": flops, "achieved_gflops": ips * flops / 1e9 if ips else None,
                "peak_gflops": peak, "peak_dtype": PEAK_DTYPE[precision], "mfu": perf.mfu(ips, flops, peak),
                "params": int(model.count_params()), "jit_compile": jit_compile, "num_classes": num_classes,
                "head": "gap", "weights": "none", "seed": seed,
                "peak_host_memory_mb": backend.peak_host_memory_mb(),
                "peak_device_memory_mb": backend.peak_device_memory_mb(),
            })
        return rows
    finally:
        keras.config.set_dtype_policy("float32")
        tm = model = None
        keras.backend.clear_session()
        gc.collect()


def _failed_row(backend_name: str, key: dict, error: str) -> dict:
    return {"backend": backend_name, **key, "status": "failed", "error": error, "images_per_s": None}


def _combos(args) -> list[dict]:
    return [{"model": m, "image_size": s, "batch_size": b, "precision": p, "mode": mode}
            for m in args.models for s in args.image_size for b in args.batch_size for p in args.precision
            for mode in args.modes]


def run_worker(args) -> int:
    """Worker entry point: measure every combination on the active backend, appending JSON lines
    (``{"record": "env", ...}`` once, then ``{"record": "row", ...}`` per measurement) to ``args.rows_file``."""
    from kbench import backend, perf

    backend.prepare_environment()
    out = open(args.rows_file, "a")  # noqa: SIM115 - kept open for the whole worker

    def emit(rec: dict) -> None:
        out.write(json.dumps(rec, default=str) + "\n")
        out.flush()

    peaks, peak_info = {}, {}
    if not args.no_peak:
        for dtype in sorted({PEAK_DTYPE[p] for p in args.precision}):
            try:
                info = perf.machine_peak(args.peak_file, dtype)
                peaks[dtype] = info["gflops"]
                peak_info[dtype] = {k: info.get(k) for k in ("gflops", "gflops_min", "gflops_max", "n", "cached",
                                                                "measured_at", "path")}
                _log(f"{backend.name()} matmul peak {dtype}: {info['gflops']:.1f} GFLOP/s "
                     f"({'stored' if info['cached'] else 'measured now'})")
            except Exception as e:  # noqa: BLE001 - MFU is optional; the bench goes on
                peak_info[dtype] = {"error": f"{type(e).__name__}: {e}"}
    emit({"record": "env", "backend": backend.name(), "device": backend.device(), "versions": backend.versions(),
          "peaks": peak_info})
    failed = 0
    for m in args.models:
        for s in args.image_size:
            for b in args.batch_size:
                for p in args.precision:
                    key = {"model": m, "image_size": s, "batch_size": b, "precision": p}
                    _log(f"{backend.name()} {m} {s}px batch {b} {p}: measuring {', '.join(args.modes)}")
                    try:
                        rows = measure_model(m, s, b, p, args.modes, steps=args.steps, warmup=args.warmup,
                                             repeats=args.repeats, num_classes=args.num_classes, seed=args.seed,
                                             jit_compile=args.jit_compile, peak_gflops=peaks)
                    except Exception as e:  # noqa: BLE001 - one failing combination must not stop the rest
                        failed += 1
                        err = f"{type(e).__name__}: {str(e)[:500]}"
                        _log(f"{backend.name()} {m} {p} failed: {err}")
                        for mode in args.modes:
                            emit({"record": "row", **_failed_row(backend.name(), {**key, "mode": mode}, err)})
                        continue
                    for r in rows:
                        emit({"record": "row", **r})
                        _log(f"{backend.name()} {m} {s}px b{b} {p} {r['mode']}: {r['images_per_s']:.1f} images/s "
                             f"(min {r['images_per_s_min']:.1f}, max {r['images_per_s_max']:.1f}), "
                             f"p50 {r['step_ms_p50']:.1f} ms, warm-up {r['compile_s']:.1f} s")
    out.close()
    return 1 if failed else 0


# --------------------------------------------------------------------------- parent


def _worker_argv(args, backend_name: str, rows_file: str) -> list[str]:
    argv = [sys.executable, "-m", "kbench.bench", "--worker", "--rows-file", rows_file,
            "--backends", backend_name, "--models", ",".join(args.models),
            "--image-size", ",".join(map(str, args.image_size)), "--batch-size", ",".join(map(str, args.batch_size)),
            "--precision", ",".join(args.precision), "--modes", ",".join(args.modes), "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--repeats", str(args.repeats), "--num-classes", str(args.num_classes),
            "--seed", str(args.seed), "--jit-compile", str(args.jit_compile).lower()]
    if args.no_peak:
        argv.append("--no-peak")
    if args.peak_file:
        argv += ["--peak-file", args.peak_file]
    return argv


def _error_from_log(text: str) -> str:
    """The most telling line of a failed worker's output: its last exception line, else its last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        head = ln.split(":", 1)[0]
        if head.endswith(("Error", "Exception", "Interrupt", "Exit")) and " " not in head:
            return ln[:500]
    return lines[-1][:500] if lines else "no output"


def run_backend(args, backend_name: str, out_dir: str, echo=print) -> tuple[list[dict], dict]:
    """Run one backend's worker subprocess; returns ``(rows, info)``.

    ``info``: ``status`` (``ok`` / ``failed``), ``returncode``, ``error``, ``wall_s``,
    ``log`` (file name), and the worker's ``device``, ``versions`` and ``peaks``.
    Measurements the worker did not report come back as failed rows with its error.
    """
    logs = os.path.join(out_dir, "logs")
    os.makedirs(logs, exist_ok=True)
    rows_file = os.path.join(logs, f"{backend_name}.rows.jsonl")
    log_file = os.path.join(logs, f"{backend_name}.log")
    for p in (rows_file,):
        if os.path.exists(p):
            os.remove(p)
    env = {**os.environ, "KERAS_BACKEND": backend_name, "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
           "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    info: dict = {"status": "ok", "returncode": None, "error": None, "log": os.path.relpath(log_file, out_dir)}
    t0 = time.perf_counter()
    with open(log_file, "w") as log:
        try:
            proc = subprocess.Popen(_worker_argv(args, backend_name, rows_file), env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, start_new_session=True)
        except OSError as e:
            proc, info["error"] = None, f"cannot start the worker: {e}"

        def pump():
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if line.startswith("[bench]"):
                    echo(line.rstrip())

        if proc is not None:
            reader = threading.Thread(target=pump, daemon=True)
            reader.start()
            try:
                proc.wait(timeout=args.timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                info["error"] = f"timed out after {args.timeout:g} s (worker killed)"
            except BaseException:  # Ctrl-C in the parent: the worker runs in its own session, stop it too
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise
            reader.join(timeout=10)
            info["returncode"] = proc.returncode
    info["wall_s"] = time.perf_counter() - t0
    rows = []
    try:
        with open(rows_file) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a crash
                if rec.pop("record", None) == "env":
                    info.update({k: rec.get(k) for k in ("device", "versions", "peaks")})
                else:
                    rows.append(rec)
    except OSError:
        pass
    if info["error"] is None and info["returncode"] not in (0, 1):
        with open(log_file) as f:
            info["error"] = f"worker exited with status {info['returncode']}: {_error_from_log(f.read())}"
    done = {tuple(r.get(k) for k in ROW_KEYS[1:]) for r in rows}
    missing = [c for c in _combos(args) if tuple(c[k] for k in ROW_KEYS[1:]) not in done]
    if missing:
        info["error"] = info["error"] or f"worker exited with status {info['returncode']} before reporting"
        rows += [_failed_row(backend_name, c, info["error"]) for c in missing]
    if info["error"] or any(r["status"] != "ok" for r in rows):
        info["status"] = "failed"
    return rows, info


def _dist_version(*names: str) -> str | None:
    for n in names:
        try:
            return metadata.version(n)
        except metadata.PackageNotFoundError:
            continue
    return None


def _cpu_name() -> str:
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """The parent's environment fingerprint, without importing any backend: CPU model and cores,
    load average, platform and installed versions of python, keras, jax, jaxlib, tensorflow,
    torch, numpy and opencv (``None`` when not installed). Per-backend device and imported
    versions come from the workers (``bench.json`` ``backends``)."""
    import platform

    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {
        "cpu": _cpu_name(), "cores": os.cpu_count(), "load_average_at_start": load,
        "platform": platform.platform(), "kbench": __version__,
        "versions": {"python": platform.python_version(), "keras": _dist_version("keras"),
                     "jax": _dist_version("jax"), "jaxlib": _dist_version("jaxlib"),
                     "tensorflow": _dist_version("tensorflow", "tensorflow-cpu"), "torch": _dist_version("torch"),
                     "numpy": _dist_version("numpy"),
                     "opencv": _dist_version("opencv-python-headless", "opencv-python", "opencv-contrib-python")},
    }


# --------------------------------------------------------------------------- report (pure)


def _fmt_ips(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" if v < 10 else f"{v:.0f}"


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _group_key(r: dict) -> tuple:
    return (r["model"], r["image_size"], r["batch_size"], r["mode"], r["precision"])


def _where(r: dict, precision: bool = True) -> str:
    s = f"{r['model']} {r['mode']} at {r['image_size']}x{r['image_size']} (batch {r['batch_size']}"
    return s + (f", {r['precision']})" if precision else ")")


def annotate(rows: list[dict]) -> list[dict]:
    """Copies of ``rows`` with ``relative_to_fastest`` (images/s / fastest backend's images/s for
    the same model, size, batch, mode and precision), ``fastest_backend`` and ``relative_text``
    (e.g. ``"0.09x of tensorflow"``, ``"fastest"``, ``"failed"``)."""
    best: dict[tuple, dict] = {}
    for r in rows:
        if r.get("status") == "ok" and r.get("images_per_s"):
            k = _group_key(r)
            if k not in best or r["images_per_s"] > best[k]["images_per_s"]:
                best[k] = r
    out = []
    for r in rows:
        r = dict(r)
        b = best.get(_group_key(r))
        if r.get("status") != "ok" or not r.get("images_per_s") or b is None:
            r.update(relative_to_fastest=None, fastest_backend=b["backend"] if b else None,
                     relative_text="failed" if r.get("status") != "ok" else "-")
        else:
            rel = r["images_per_s"] / b["images_per_s"]
            r.update(relative_to_fastest=rel, fastest_backend=b["backend"],
                     relative_text="fastest" if b["backend"] == r["backend"] else f"{rel:.2f}x of {b['backend']}")
        out.append(r)
    return out


def findings(rows: list[dict], factor: float = GAP_FACTOR) -> list[str]:
    """Plain-text findings from the rows, in a stable order:

    * every backend more than ``factor`` x slower than the fastest backend for the same
      model / size / batch / mode / precision, e.g. ``"vgg16 inference at 32x32 (batch 32,
      float32): jax 50 images/s vs tensorflow 580 (11.6x slower)"``;
    * every mixed precision more than ``factor`` x slower than float32 on the same backend;
    * every failed measurement (grouped by backend and error).
    """
    rows = annotate(rows)
    out = []
    for r in sorted(rows, key=lambda r: (_group_key(r), r["backend"])):
        rel = r.get("relative_to_fastest")
        if rel and 1.0 / rel > factor:
            fast = next(x for x in rows if _group_key(x) == _group_key(r) and x["backend"] == r["fastest_backend"])
            out.append(f"{_where(r)}: {r['backend']} {_fmt_ips(r['images_per_s'])} images/s vs "
                       f"{fast['backend']} {_fmt_ips(fast['images_per_s'])} ({1.0 / rel:.1f}x slower)")
    ok = {(r["backend"], r["model"], r["image_size"], r["batch_size"], r["mode"], r["precision"]): r
          for r in rows if r.get("status") == "ok" and r.get("images_per_s")}
    for (b, m, s, bs, mode, p), r in sorted(ok.items()):
        ref = ok.get((b, m, s, bs, mode, "float32"))
        if p != "float32" and ref and ref["images_per_s"] / r["images_per_s"] > factor:
            out.append(f"{_where(r, precision=False)}: {b} {p} {_fmt_ips(r['images_per_s'])} images/s vs float32 "
                       f"{_fmt_ips(ref['images_per_s'])} ({ref['images_per_s'] / r['images_per_s']:.1f}x slower)")
    failures: dict[tuple, list[str]] = {}
    for r in rows:
        if r.get("status") != "ok":
            failures.setdefault((r["backend"], r.get("error") or "unknown error"), []).append(
                f"{r['model']} {r['mode']} {r['image_size']}px b{r['batch_size']} {r['precision']}")
    for (b, err), what in sorted(failures.items()):
        out.append(f"{b} failed ({len(what)} measurement{'s' if len(what) != 1 else ''}: "
                   f"{', '.join(what[:4])}{', ...' if len(what) > 4 else ''}): {err}")
    return out


def _sorted_rows(rows: list[dict]) -> list[dict]:
    order = {b: i for i, b in enumerate(BACKENDS)}
    return sorted(annotate(rows), key=lambda r: (_group_key(r), order.get(r["backend"], 99), r["backend"]))


RESULT_HEADERS = ("model", "size", "batch", "mode", "precision", "backend", "images/s (median)", "min-max",
                  "vs fastest", "step p50 ms", "step p95 ms", "warm-up s", "GFLOP/s", "MFU")


def _result_cells(r: dict) -> list[str]:
    ok = r.get("status") == "ok"
    spread = f"{_fmt_ips(r.get('images_per_s_min'))}-{_fmt_ips(r.get('images_per_s_max'))}" if ok else "-"
    mfu = r.get("mfu")
    return [r["model"], str(r["image_size"]), str(r["batch_size"]), r["mode"], r["precision"], r["backend"],
            _fmt_ips(r.get("images_per_s")) if ok else "FAILED", spread, r["relative_text"],
            _fmt(r.get("step_ms_p50"), ".1f"), _fmt(r.get("step_ms_p95"), ".1f"), _fmt(r.get("compile_s"), ".1f"),
            _fmt(r.get("achieved_gflops"), ".1f"), "-" if mfu is None else f"{100 * mfu:.1f}%"]


def render_table(data: dict):
    """The rich terminal table of ``data["rows"]``: one line per measurement, compact columns."""
    from rich.table import Table

    t = Table(title=f"kbench bench · {data.get('environment', {}).get('cpu', '?')}")
    for h in ("model@size/batch", "mode", "precision", "backend", "images/s [min-max]", "vs fastest",
              "step p50/p95 ms", "warm-up s", "MFU"):
        t.add_column(h, justify="right" if h in ("warm-up s", "MFU", "step p50/p95 ms") else "left")
    for r in _sorted_rows(data["rows"]):
        c = dict(zip(RESULT_HEADERS, _result_cells(r)))
        style = "red" if r.get("status") != "ok" or (r.get("relative_to_fastest") or 1) < 1 / GAP_FACTOR else None
        t.add_row(f"{r['model']}@{r['image_size']}/{r['batch_size']}", r["mode"], r["precision"], r["backend"],
                  f"{c['images/s (median)']} [{c['min-max']}]", c["vs fastest"],
                  f"{c['step p50 ms']}/{c['step p95 ms']}", c["warm-up s"], c["MFU"], style=style)
    return t


def render_markdown(data: dict) -> str:
    """``bench.md``: settings, environment, the results table, findings and method notes."""
    env = data.get("environment", {})
    st = data.get("settings", {})
    lines = ["# kbench throughput bench", ""]
    if data.get("created_at"):
        lines.append(f"Measured {data['created_at']}" + (f" with `{data['command']}`" if data.get("command") else "")
                     + ".")
        lines.append("")
    if st:
        lines.append(f"Settings: {st.get('steps')} timed steps x {st.get('repeats')} repeats after "
                     f"{st.get('warmup')} warm-up step(s); synthetic fixed batch, weights `none`, `gap` head "
                     f"({st.get('num_classes')} classes), jit_compile `{st.get('jit_compile')}`.")
        lines.append("")
    lines += ["## Environment", ""]
    if env:
        ld = env.get("load_average_at_start")
        lines.append(f"- CPU: {env.get('cpu')} ({env.get('cores')} cores)"
                     + (f"; load average at start {ld[0]:.2f}" if ld else ""))
        lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items() if v))
    for b, info in sorted(data.get("backends", {}).items()):
        dev = info.get("device") or {}
        peaks = ", ".join(f"{d} {p['gflops']:.1f} GFLOP/s" for d, p in sorted((info.get("peaks") or {}).items())
                          if p.get("gflops"))
        lines.append(f"- {b}: {info.get('status')}"
                     + (f", {dev.get('type')} {dev.get('name')}" if dev else "")
                     + (f", matmul peak {peaks}" if peaks else "")
                     + (f", wall {info['wall_s']:.0f} s" if info.get("wall_s") is not None else "")
                     + (f"; error: {info['error']}" if info.get("error") else ""))
    lines += ["", "## Results", "", "| " + " | ".join(RESULT_HEADERS) + " |",
              "| " + " | ".join("---" for _ in RESULT_HEADERS) + " |"]
    for r in _sorted_rows(data["rows"]):
        lines.append("| " + " | ".join(c.replace("|", "/") for c in _result_cells(r)) + " |")
    lines += ["", f"## Findings (gaps over {GAP_FACTOR:g}x, failures)", ""]
    found = findings(data["rows"])
    lines += [f"- {f}" for f in found] if found else [f"- none: no backend or precision more than {GAP_FACTOR:g}x "
                                                       "slower than the fastest, and no failures"]
    lines += ["", "## Method", "",
              "images/s: median over repeats of (steps x batch) / time of the repeat's steps; min-max over repeats. "
              "Warm-up steps (tracing and compilation) are excluded and reported as warm-up s. Every step ends with "
              "its results on the host. GFLOP/s = images/s x model FLOPs per image, counted from the model's "
              "conv/dense layers (2 x multiply-accumulates; training = 3 x forward, Kaplan et al. 2020); MFU = "
              "GFLOP/s / the machine's measured matmul peak on the same backend and compute dtype "
              "(`kbench.perf`).", ""]
    return "\n".join(lines)


def render_csv(rows: list[dict]) -> str:
    """``bench.csv``: one line per measurement, columns :data:`CSV_COLUMNS`."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in _sorted_rows(rows):
        w.writerow({k: r.get(k) for k in CSV_COLUMNS})
    return buf.getvalue()


def build_report(data: dict, out_dir: str) -> dict[str, str]:
    """Write ``bench.json``, ``bench.csv`` and ``bench.md`` for ``data`` into ``out_dir``; returns their paths.
    Everything in them is derived from ``data`` (rows, environment, backends, settings)."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, f"bench.{k}") for k in ("json", "csv", "md")}
    tmp = paths["json"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump({**data, "findings": findings(data["rows"])}, f, indent=2, default=str)
    os.replace(tmp, paths["json"])
    with open(paths["csv"], "w") as f:
        f.write(render_csv(data["rows"]))
    with open(paths["md"], "w") as f:
        f.write(render_markdown(data))
    return paths


def load_bench(out_dir: str) -> dict:
    """Read ``<out_dir>/bench.json``.

    Raises:
        KbenchError: missing or unreadable file, or no ``rows`` in it.
    """
    path = os.path.join(out_dir, "bench.json")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise KbenchError(f"cannot read {path!r} ({e}); pass a folder written by python -m kbench.bench") from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise KbenchError(f"{path!r} has no 'rows' list; pass a folder written by python -m kbench.bench")
    return data


# --------------------------------------------------------------------------- CLI


def _list(valid: tuple[str, ...] | None, what: str):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise KbenchError(f"empty {what} list")
        if valid is not None:
            for t in items:
                if t not in valid:
                    raise KbenchError(f"unknown {what} {t!r}; choose from: {', '.join(valid)}")
        return list(dict.fromkeys(items))
    return parse


def _ints(what: str):
    def parse(text: str) -> list[int]:
        try:
            vals = [int(t) for t in text.split(",") if t.strip()]
        except ValueError:
            raise KbenchError(f"{what} must be positive integers separated by commas, got {text!r}") from None
        if not vals or min(vals) < 1:
            raise KbenchError(f"{what} must be positive integers separated by commas, got {text!r}")
        return list(dict.fromkeys(vals))
    return parse


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kbench.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="vgg16,resnet50,mobilenetv2", help="comma-separated registry backbones")
    p.add_argument("--image-size", default="64", help="input side(s) in pixels, comma-separated")
    p.add_argument("--batch-size", default="32", help="batch size(s), comma-separated")
    p.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated, from {', '.join(BACKENDS)}")
    p.add_argument("--precision", default="float32", help=f"comma-separated, from {', '.join(PRECISIONS)}")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {', '.join(MODES)}")
    p.add_argument("--steps", type=int, default=20, help="timed steps per repeat (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps, compilation included (default 3)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (default 3)")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jit-compile", default="auto", choices=("auto", "true", "false"),
                   help="passed to keras Model.compile (default auto)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per backend worker (default 3600)")
    p.add_argument("--output", default=None, help="output folder (default bench-<timestamp>/)")
    p.add_argument("--no-peak", action="store_true", help="skip the matmul peak probe (no MFU)")
    p.add_argument("--peak-file", default=None, help="peak store (default $KBENCH_CACHE_DIR/peak.json)")
    p.add_argument("--report-only", metavar="DIR", default=None, help="rebuild the report from DIR/bench.json")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--rows-file", default=None, help=argparse.SUPPRESS)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and validate the command line.

    Raises:
        KbenchError: unknown model, backend, precision or mode, bad sizes or counts,
            or an image size below a model's minimum (the message lists the valid values).
    """
    args = _parser().parse_args(argv)
    if args.report_only:
        return args
    args.backends = _list(BACKENDS, "backend")(args.backends)
    args.precision = _list(PRECISIONS, "precision")(args.precision)
    args.modes = _list(MODES, "mode")(args.modes)
    args.image_size = _ints("--image-size")(args.image_size)
    args.batch_size = _ints("--batch-size")(args.batch_size)
    for name, v, lo in (("--steps", args.steps, 1), ("--repeats", args.repeats, 1), ("--warmup", args.warmup, 0),
                        ("--num-classes", args.num_classes, 2)):
        if v < lo:
            raise KbenchError(f"{name} must be at least {lo}, got {v}")
    if args.timeout <= 0:
        raise KbenchError(f"--timeout must be positive, got {args.timeout:g}")
    args.jit_compile = {"auto": "auto", "true": True, "false": False}[str(args.jit_compile).lower()]
    from kbench.models import BACKBONES, check_input_size

    args.models = _list(tuple(BACKBONES), "model")(args.models)
    for m in args.models:
        for s in args.image_size:
            check_input_size(BACKBONES[m], s)
    if args.worker and not args.rows_file:
        raise KbenchError("--worker needs --rows-file")
    return args


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status (0 ok, 1 some measurement failed, 2 bad input)."""
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 150)
    try:
        args = parse_args(argv)
        if args.worker:
            return run_worker(args)
        if args.report_only:
            data = load_bench(args.report_only)
            paths = build_report(data, args.report_only)
            console.print(render_table(data))
            for f in findings(data["rows"]):
                console.print(f"[bold]finding:[/] {f}")
            console.print(f"report rebuilt: {paths['md']}")
            return 0 if all(r.get("status") == "ok" for r in data["rows"]) else 1
    except KbenchError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False)
        return 2
    out_dir = args.output or f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        console.print(f"[bold red]error:[/] cannot create output folder {out_dir!r} ({e.strerror})")
        return 2
    data = {"format": BENCH_FORMAT, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": "python -m kbench.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
            "settings": {k: getattr(args, k) for k in ("models", "image_size", "batch_size", "backends", "precision",
                                                        "modes", "steps", "warmup", "repeats", "num_classes", "seed",
                                                        "jit_compile", "timeout")},
            "environment": environment(), "backends": {}, "rows": []}
    for b in args.backends:
        console.print(f"[bold]{b}[/]: starting worker")
        rows, info = run_backend(args, b, out_dir, echo=lambda s: console.print(s, highlight=False, markup=False))
        data["rows"] += rows
        data["backends"][b] = info
        if info["error"]:
            console.print(f"[bold red]{b} failed:[/] {info['error']}", highlight=False)
        build_report(data, out_dir)  # partial report after every backend
    paths = build_report(data, out_dir)
    console.print(render_table(data))
    for f in findings(data["rows"]):
        console.print(f"[bold]finding:[/] {f}", highlight=False)
    console.print(f"wrote {paths['json']}, {paths['csv']}, {paths['md']}")
    return 0 if all(r.get("status") == "ok" for r in data["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
