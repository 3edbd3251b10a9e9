"""The measuring side of ``python -m kbench.bench``: timing, one measurement, the worker loop.

Everything here runs on the ACTIVE backend, in the worker subprocess that
:mod:`kbench.bench` starts per backend (``python -m kbench.bench --worker``):
:func:`time_steps` and :func:`summarize` turn step timings into images/s and step
times, :func:`measure_model` measures one model / size / batch / precision on every
requested mode, and :func:`run_worker` measures every combination and appends one
JSON line per measurement to the rows file. Keras and the backend are imported
inside the functions, so the parent can import this module without a backend.
"""

from __future__ import annotations

import json
import math
import statistics
import time

from kbench import PRECISION_DTYPES, KbenchError

#: The precisions the bench measures: those with a fixed compute dtype (``auto`` is not one).
PRECISIONS = tuple(PRECISION_DTYPES)
MODES = ("train", "inference")
ROW_KEYS = ("backend", "model", "image_size", "batch_size", "precision", "mode")


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


def _check_precision_and_modes(precision: str, modes) -> None:
    if precision not in PRECISIONS:
        raise KbenchError(f"unknown precision {precision!r}; choose from: {', '.join(PRECISIONS)}")
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise KbenchError(f"unknown mode {bad[0]!r}; choose from: {', '.join(MODES)}")


def _step_functions(model, x, y) -> dict:
    """``{"train": step, "inference": step}``: one synchronous step each (results on the host)."""
    import keras

    last_var = model.trainable_variables[-1]

    def train_step():
        model.train_on_batch(x, y)  # returns the loss/metrics as Python floats
        keras.ops.convert_to_numpy(last_var)  # the optimizer update finished too

    def infer_step():
        keras.ops.convert_to_numpy(model.predict_on_batch(x))

    return {"train": train_step, "inference": infer_step}


def _mode_row(step, mode: str, model, forward_flops: float, key: dict, settings: dict, peak_gflops: dict | None):
    """Time ``step`` (:func:`time_steps`) and return the row of one measurement (see :func:`measure_model`)."""
    from kbench import backend, perf

    timing = time_steps(step, warmup=settings["warmup"], steps=settings["steps"], repeats=settings["repeats"])
    s = summarize(timing, key["batch_size"])
    flops = forward_flops * (perf.TRAIN_FLOPS_FACTOR if mode == "train" else 1.0)
    dtype = PRECISION_DTYPES[key["precision"]]
    peak = (peak_gflops or {}).get(dtype)
    source = (settings.get("peak_sources") or {}).get(dtype) if peak else None
    ips = s["images_per_s"]
    return {
        "backend": backend.name(), **key, "mode": mode, "status": "ok", "error": None, **s,
        "step_times_ms": [[round(t * 1e3, 4) for t in b] for b in timing["step_times_s"]],
        "warmup_times_s": timing["warmup_times_s"],
        "flops_per_image": flops, "achieved_gflops": ips * flops / 1e9 if ips else None,
        "peak_gflops": peak, "peak_dtype": dtype, "peak_source": source, "mfu": perf.mfu(ips, flops, peak),
        "params": int(model.count_params()), "jit_compile": settings["jit_compile"],
        "num_classes": settings["num_classes"], "head": "gap", "weights": "none", "seed": settings["seed"],
        "peak_host_memory_mb": backend.peak_host_memory_mb(),
        "peak_device_memory_mb": backend.peak_device_memory_mb(),
    }


def measure_model(model_name: str, image_size: int, batch_size: int, precision: str, modes=MODES, *,
                  steps: int = 20, warmup: int = 3, repeats: int = 3, num_classes: int = 10, seed: int = 0,
                  jit_compile: bool | str = "auto", peak_gflops: dict | None = None,
                  peak_sources: dict | None = None) -> list[dict]:
    """Measure one model on the ACTIVE backend, in this process: one row per mode.

    ``peak_gflops`` maps a compute dtype (``"float32"``, ``"bfloat16"``...) to the
    machine's matmul peak in GFLOP/s (:func:`kbench.perf.machine_peak`); without
    it ``mfu`` is ``None``; ``peak_sources`` maps the same dtypes to ``"vendor"`` or
    ``"measured"`` (stored as the rows' ``peak_source``). The process-wide dtype policy is set to ``precision``
    for the build and put back to ``float32`` afterwards.

    Returns:
        rows (dicts) with :data:`ROW_KEYS`, ``status`` ``"ok"``, the fields of
        :func:`summarize` (images/s, ms, s), ``flops_per_image`` (FLOPs),
        ``achieved_gflops`` (GFLOP/s), ``peak_gflops``, ``peak_source``, ``mfu`` (fraction), ``params``.

    Raises:
        KbenchError: unknown model, size below its minimum, bad precision or mode.
        Anything the backend raises while building, compiling or running.
    """
    import gc

    import keras

    from kbench import perf
    from kbench.models.transfer import build_model

    _check_precision_and_modes(precision, modes)
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
        step_fns = _step_functions(model, x, y)
        key = {"model": model_name, "image_size": image_size, "batch_size": batch_size, "precision": precision}
        settings = {"steps": steps, "warmup": warmup, "repeats": repeats, "jit_compile": jit_compile,
                    "num_classes": num_classes, "seed": seed, "peak_sources": peak_sources}
        return [_mode_row(step_fns[mode], mode, model, forward_flops, key, settings, peak_gflops) for mode in modes]
    finally:
        keras.config.set_dtype_policy("float32")
        tm = model = step_fns = None
        keras.backend.clear_session()
        gc.collect()


def failed_row(backend_name: str, key: dict, error: str) -> dict:
    """The row of a measurement that failed: ``backend``, the ``key`` fields
    (:data:`ROW_KEYS` but backend), ``status "failed"``, ``error`` and ``images_per_s None``."""
    return {"backend": backend_name, **key, "status": "failed", "error": error, "images_per_s": None}


def combos(args) -> list[dict]:
    """Every requested measurement of parsed bench arguments, as ``{model, image_size,
    batch_size, precision, mode}`` dicts, in the order the worker measures them."""
    return [{"model": m, "image_size": s, "batch_size": b, "precision": p, "mode": mode}
            for m in args.models for s in args.image_size for b in args.batch_size for p in args.precision
            for mode in args.modes]


def run_worker(args) -> int:
    """Worker entry point: measure every combination on the active backend, appending JSON lines
    (``{"record": "env", ...}`` once, then ``{"record": "row", ...}`` per measurement) to ``args.rows_file``."""
    from kbench import backend, perf, xla

    backend.prepare_environment()
    out = open(args.rows_file, "a")  # noqa: SIM115 - kept open for the whole worker

    def emit(rec: dict) -> None:
        out.write(json.dumps(rec, default=str) + "\n")
        out.flush()

    peaks, sources, peak_info = {}, {}, {}
    if not args.no_peak:
        for dtype in sorted({PRECISION_DTYPES[p] for p in args.precision}):
            try:
                info = perf.machine_peak(args.peak_file, dtype)
                peaks[dtype], sources[dtype] = info["gflops"], info.get("peak_source")
                peak_info[dtype] = {k: info.get(k) for k in ("gflops", "peak_source", "measured_gflops", "vendor",
                                                                "gflops_min", "gflops_max", "n", "cached",
                                                                "measured_at", "path")}
                _log(f"{backend.name()} peak {dtype}: {info['gflops']:.1f} GFLOP/s ({info.get('peak_source')}; "
                     f"matmul probe {info.get('measured_gflops') or 0:.1f} GFLOP/s, "
                     f"{'stored' if info['cached'] else 'measured now'})")
            except Exception as e:  # noqa: BLE001 - MFU is optional; the bench goes on
                peak_info[dtype] = {"error": f"{type(e).__name__}: {e}"}
    emit({"record": "env", "backend": backend.name(), "device": backend.device(), "versions": backend.versions(),
          "peaks": peak_info, "xla_flags": xla.record()})
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
                                             jit_compile=args.jit_compile, peak_gflops=peaks,
                                             peak_sources=sources)
                    except Exception as e:  # noqa: BLE001 - one failing combination must not stop the rest
                        failed += 1
                        err = f"{type(e).__name__}: {str(e)[:500]}"
                        _log(f"{backend.name()} {m} {p} failed: {err}")
                        for mode in args.modes:
                            emit({"record": "row", **failed_row(backend.name(), {**key, "mode": mode}, err)})
                        continue
                    for r in rows:
                        emit({"record": "row", **r})
                        _log(f"{backend.name()} {m} {s}px b{b} {p} {r['mode']}: {r['images_per_s']:.1f} images/s "
                             f"(min {r['images_per_s_min']:.1f}, max {r['images_per_s_max']:.1f}), "
                             f"p50 {r['step_ms_p50']:.1f} ms, warm-up {r['compile_s']:.1f} s")
    out.close()
    return 1 if failed else 0
