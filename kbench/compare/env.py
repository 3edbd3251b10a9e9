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
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence

from kbench import cpu_name
from kbench.compare.run import _error_line, log_tail

# Distributions whose versions go into the environment fingerprint (first installed name wins).
PACKAGES = {
    "keras": ["keras"],
    "jax": ["jax"],
    "jaxlib": ["jaxlib"],
    "tensorflow": ["tensorflow", "tensorflow-cpu"],
    "torch": ["torch"],
    "numpy": ["numpy"],
    "opencv": ["opencv-python-headless", "opencv-python", "opencv-contrib-python-headless",
               "opencv-contrib-python"],
    "matplotlib": ["matplotlib"],
    "kbench": ["kbench"],
}


# ------------------------------------------------------------------ environment
def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except (OSError, ValueError):
        pass
    return None


def _gpus() -> list[str]:
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in r.stdout.splitlines() if line.strip()] if r.returncode == 0 else []


def package_versions() -> dict[str, str | None]:
    """Installed versions (``importlib.metadata``, nothing imported) of keras, jax,
    jaxlib, tensorflow, torch, numpy, opencv, matplotlib and kbench; ``None`` where
    not installed."""
    out: dict[str, str | None] = {}
    for key, dists in PACKAGES.items():
        out[key] = None
        for d in dists:
            try:
                out[key] = importlib.metadata.version(d)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return out


def environment() -> dict:
    """The machine fingerprint of this process: CPU model, logical cores, memory
    (GiB), GPUs (``nvidia-smi``), OS, python and :func:`package_versions`."""
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "memory_gib": _memory_gib(), "gpus": _gpus(),
            "os": platform.platform(), "python": platform.python_version(), "packages": package_versions()}


# ------------------------------------------------------------------ FLOPs and peak
PROBE_MARK = "KBENCH_PROBE_JSON "
DTYPES = {"float32": "float32", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}
PROBE_SCRIPT = "import sys; from kbench.compare.env import probe_main; probe_main(sys.argv[1])"


def probe_main(jobs_json: str) -> None:
    """Body of a probe subprocess (the backend is this process's ``KERAS_BACKEND``):
    for ``{"dtypes": [...], "models": {key: [backbone, image_size, head, num_classes]}}``
    print one line ``KBENCH_PROBE_JSON {"peaks": {dtype: kbench.perf.machine_peak(dtype)},
    "flops": {key: {"inference_per_image", "train_per_image"}}, "errors": {...}}``.
    Failures are reported in ``errors``, never raised."""
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
    print(PROBE_MARK + json.dumps(out, default=str), flush=True)


def run_probe(backend: str, dtypes: Sequence[str], models: dict, log: str, timeout_s: float = 900) -> dict:
    """Run :func:`probe_main` in a subprocess with ``KERAS_BACKEND=backend`` (output
    logged to ``log``) and return its result; on failure ``{"errors": {"probe": ...}}``."""
    env = {**os.environ, "KERAS_BACKEND": backend, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    jobs = json.dumps({"dtypes": list(dtypes), "models": models})
    try:
        r = subprocess.run([sys.executable, "-c", PROBE_SCRIPT, jobs], capture_output=True, text=True, env=env,
                           timeout=timeout_s, errors="replace")
        text, code = r.stdout + r.stderr, r.returncode
    except subprocess.TimeoutExpired as e:
        text, code = f"{e.stdout or ''}{e.stderr or ''}\nprobe timed out after {timeout_s:g} s", None
    with open(log, "w") as f:
        f.write(f"$ KERAS_BACKEND={backend} python -c {PROBE_SCRIPT!r} {jobs}\n{text}")
    for line in reversed(text.splitlines()):
        if line.startswith(PROBE_MARK):
            return json.loads(line[len(PROBE_MARK):])
    return {"peaks": {}, "flops": {}, "errors": {"probe": f"exit code {code}: {_error_line(log_tail(log))}"}}


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
    (the machine's best measured matmul rate). Probe output goes to
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
        dtypes.setdefault(r["backend"], set()).add(DTYPES.get((r["results"] or {}).get("precision"), "float32"))
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
        dtype = DTYPES.get((r["results"] or {}).get("precision"), "float32")
        by_backend = {b: (p.get("peaks", {}).get(dtype) or {}).get("gflops") for b, p in probes.items()}
        known = {b: g for b, g in by_backend.items() if g}
        best = max(known, key=known.get) if known else None
        errors = {b: p.get("errors", {}).get(f"peak {dtype}") or p.get("errors", {}).get("import")
                  or p.get("errors", {}).get("probe") for b, p in probes.items() if not by_backend.get(b)}
        own = probes.get(r["backend"], {}).get("peaks", {}).get(dtype) or {}
        r["peak"] = {"flops_per_s": known[best] * 1e9 if best else None, "dtype": dtype, "backend": best,
                     "gflops_by_backend": by_backend, "measured_at": own.get("measured_at"),
                     "method": own.get("method"),
                     "source": "kbench.perf.machine_peak: highest keras.ops.matmul rate over the compared backends",
                     "error": "; ".join(f"{b}: {e}" for b, e in errors.items() if e) or None}
