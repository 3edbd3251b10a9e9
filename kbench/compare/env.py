"""The machine side of ``python -m kbench.compare``: environment fingerprint, FLOPs and peak probe.

:func:`environment` fingerprints the parent process (CPU, cores, memory, GPUs, OS,
installed package versions through ``importlib.metadata``: no backend imported).
:func:`annotate_compute` runs one short probe subprocess per backend
(:func:`run_probe`, whose body is :func:`probe_main`) for the FLOPs per image
(``kbench.perf.model_flops_per_image``) and the measured matmul peak
(``kbench.perf.machine_peak``) and stores both in every completed row, so the
report needs nothing but the rows.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
from collections.abc import Sequence

from kbench import PRECISION_DTYPES, host, subproc


def environment() -> dict:
    """The machine fingerprint of this process (from :func:`kbench.host.environment`, no
    backend imported): CPU model, logical cores, memory (GiB), GPUs (``nvidia-smi``),
    OS, python and the installed versions of :data:`kbench.host.PACKAGES`."""
    env = host.environment()
    return {k: env[k] for k in ("cpu", "cores", "memory_gib", "gpus", "os", "python", "packages")}


# ------------------------------------------------------------------ FLOPs and peak
PROBE_SCRIPT = "import sys; from kbench.compare.env import probe_main; probe_main(sys.argv[1], sys.argv[2])"


def probe_main(jobs_json: str, out_path: str) -> None:
    """Body of a probe subprocess (the backend is this process's ``KERAS_BACKEND``):
    for ``{"dtypes": [...], "models": {key: [backbone, image_size, head, num_classes]}}``
    write ``{"peaks": {dtype: kbench.perf.machine_peak(dtype)}, "flops": {key:
    {"inference_per_image", "train_per_image"}}, "errors": {...}}`` as JSON to
    ``out_path``. Failures are reported in ``errors``, never raised."""
    jobs = json.loads(jobs_json)
    out: dict = {"peaks": {}, "flops": {}, "errors": {}}
    try:
        perf = importlib.import_module("kbench.perf")
    except Exception as e:  # noqa: BLE001 - reported to the parent
        out["errors"]["import"] = f"{type(e).__name__}: {e}"
        perf = None
    for dtype in jobs.get("dtypes", []) if perf else []:
        try:
            out["peaks"][dtype] = perf.machine_peak(dtype=dtype)
        except Exception as e:  # noqa: BLE001
            out["errors"][f"peak {dtype}"] = f"{type(e).__name__}: {e}"
    for key, (backbone, size, head, classes) in (jobs.get("models") or {}).items() if perf else []:
        try:
            kw = {"head": head or "gap", "num_classes": int(classes or 10)}
            out["flops"][key] = {
                "inference_per_image": float(perf.model_flops_per_image(backbone, int(size), False, **kw)),
                "train_per_image": float(perf.model_flops_per_image(backbone, int(size), True, **kw))}
        except Exception as e:  # noqa: BLE001
            out["errors"][f"flops {key}"] = f"{type(e).__name__}: {e}"
    subproc.write_json(out_path, out)


def run_probe(backend: str, dtypes: Sequence[str], models: dict, log: str, timeout_s: float = 900) -> dict:
    """Run :func:`probe_main` in a subprocess on ``backend`` (:func:`kbench.subproc.run_logged`,
    output logged to ``log``) and return its result; on failure ``{"errors": {"probe": ...}}``."""
    jobs = json.dumps({"dtypes": list(dtypes), "models": models})
    with tempfile.TemporaryDirectory(prefix="kbench-probe-") as tmp:
        result = os.path.join(tmp, "probe.json")
        done = subproc.run_logged([sys.executable, "-c", PROBE_SCRIPT, jobs, result], log,
                                  env=subproc.backend_env(backend), timeout=timeout_s,
                                  header=f"$ KERAS_BACKEND={backend} python -c {PROBE_SCRIPT!r} {jobs}\n",
                                  timeout_note=f"\nprobe timed out after {timeout_s:g} s\n")
        out = subproc.read_json(result)
    if isinstance(out, dict):
        return out
    code = None if done.timed_out else done.returncode
    why = subproc.error_line(subproc.log_tail(log))
    return {"peaks": {}, "flops": {}, "errors": {"probe": f"exit code {code}: {why}"}}


def _dtype_of(row: dict) -> str:
    """The compute dtype of a row's precision (``float32`` when unknown)."""
    return PRECISION_DTYPES.get((row["results"] or {}).get("precision"), "float32")


def _model_of(row: dict, out_dir: str) -> list | None:
    """``[backbone, image_size, head, num_classes]`` of a completed row (head from the run's config.yaml)."""
    res = row.get("results") or {}
    if not (res.get("backbone") and res.get("image_size")):
        return None
    head = "gap"
    try:
        import yaml

        with open(os.path.join(out_dir, row["run_dir"], "config.yaml")) as f:
            head = ((yaml.safe_load(f) or {}).get("model") or {}).get("head") or "gap"
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    return [res["backbone"], int(res["image_size"]), head, len(res.get("class_names") or []) or 10]


def _row_peak(r: dict, probes: dict) -> dict:
    """The ``peak`` entry of one completed row (see :func:`annotate_compute`)."""
    dtype = _dtype_of(r)
    by_backend = {b: (p.get("peaks", {}).get(dtype) or {}).get("gflops") for b, p in probes.items()}
    known = {b: g for b, g in by_backend.items() if g}
    best = max(known, key=known.get) if known else None
    errors = {b: p.get("errors", {}).get(f"peak {dtype}") or p.get("errors", {}).get("import")
              or p.get("errors", {}).get("probe") for b, p in probes.items() if not by_backend.get(b)}
    own = probes.get(r["backend"], {}).get("peaks", {}).get(dtype) or {}
    src = (probes.get(best, {}).get("peaks", {}).get(dtype) or {}) if best else {}
    vendor = src.get("vendor") if src.get("peak_source") == "vendor" else None
    return {"flops_per_s": known[best] * 1e9 if best else None, "dtype": dtype, "backend": best,
            "peak_source": src.get("peak_source"), "vendor": vendor,
            "measured_gflops_by_backend": {b: (p.get("peaks", {}).get(dtype) or {}).get("measured_gflops")
                                           for b, p in probes.items()},
            "gflops_by_backend": by_backend, "measured_at": own.get("measured_at"),
            "method": own.get("method"),
            "source": f"kbench.perf.machine_peak: vendor dense peak, {vendor['source']}" if vendor else
            "kbench.perf.machine_peak: highest keras.ops.matmul rate over the compared backends",
            "error": "; ".join(f"{b}: {e}" for b, e in errors.items() if e) or None}


def annotate_compute(rows: list[dict], out_dir: str, timeout_s: float = 900) -> None:
    """Store ``flops`` and ``peak`` in every completed row, in place, so the report
    needs nothing else.

    FLOPs per image: ``kbench.perf.model_flops_per_image(backbone, image_size,
    training, head=, num_classes=)`` (an analytic count, the same on every backend).
    Peak: ``kbench.perf.machine_peak(dtype)`` (a ``keras.ops.matmul`` probe, measured
    once per machine/backend/dtype and cached by kbench.perf) run in one subprocess
    per backend, for the compute dtype of the runs (float32, or bfloat16 / float16
    for mixed precision); a row's ``peak.flops_per_s`` is the highest of the
    backends' peaks for its dtype, so every backend's MFU has the same denominator
    (the machine's best measured matmul rate, or on a GPU in :mod:`kbench.gpu_peaks`
    the vendor's dense peak: ``peak_source`` ``"vendor"`` or ``"measured"``). Probe output goes to
    ``out_dir/logs/probe-<backend>.log``. Never raises: what cannot be measured is
    ``None`` with the reason in ``error``.
    """
    todo = [r for r in rows if r.get("status") == "completed"]
    if not todo:
        return
    models = {}
    for r in todo:
        m = _model_of(r, out_dir)
        if m:
            models["|".join(map(str, m))] = m
    dtypes: dict[str, set] = {}
    for r in todo:
        dtypes.setdefault(r["backend"], set()).add(_dtype_of(r))
    probes = {}
    for i, (b, ds) in enumerate(dtypes.items()):
        log = os.path.join(out_dir, "logs", f"probe-{b}.log")
        os.makedirs(os.path.dirname(log), exist_ok=True)
        probes[b] = run_probe(b, sorted(ds), models if i == 0 else {}, log, timeout_s)
    flops = next(iter(probes.values())).get("flops", {})
    ferrs = next(iter(probes.values())).get("errors", {})
    for r in todo:
        m = _model_of(r, out_dir)
        key = "|".join(map(str, m)) if m else None
        f = flops.get(key) or {}
        err = ferrs.get(f"flops {key}") or ferrs.get("import") or ferrs.get("probe") if not f else None
        r["flops"] = {"train_per_image": f.get("train_per_image"), "inference_per_image": f.get("inference_per_image"),
                      "model": dict(zip(("backbone", "image_size", "head", "num_classes"), m or [])),
                      "source": "kbench.perf.model_flops_per_image (analytic count; training = 3 x forward)",
                      "error": err}
        r["peak"] = _row_peak(r, probes)
