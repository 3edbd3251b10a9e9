"""``python -m kbench.compare``: run one config on several Keras backends and seeds
and report how they differ in accuracy, speed, memory and compute efficiency.

    python -m kbench.compare --config configs/<name>.yaml --backends jax,tensorflow,torch --seeds 3 \\
        [--output DIR] [-- --trainer.max_epochs 1 --data.root data/cifar10]
    python -m kbench.compare --report-only DIR        # rebuild the report from DIR/rows.json
    python -m kbench.compare --parity --models vgg16,resnet50 --backends jax,tensorflow,torch

Every run is ``python -m kbench.run --config FILE --trainer.seed S
--trainer.default_root_dir DIR/runs/<backend>-seed<S> [overrides]`` in its own
subprocess with ``KERAS_BACKEND`` set and ``XLA_PYTHON_CLIENT_PREALLOCATE=false``;
its output goes to ``DIR/logs/<backend>-seed<S>.log``. Runs go seed by seed, all
backends per seed, so slow drifts of a shared machine fall on every backend alike.
After each run its ``results.json`` and ``metrics.csv`` are collected into one row
of ``DIR/rows.json``; a run that fails is kept as a ``failed`` row with its exit code
and the end of its log, and the other runs still report. The report
(:mod:`kbench.report`) is a pure function of ``rows.json``.

The parent process never imports a backend: library versions come from
``importlib.metadata``. After the runs, one short probe subprocess per backend
looks up the FLOPs per image (``kbench.perf.model_flops_per_image``) and the
measured matmul peak (``kbench.perf.machine_peak``, cached per machine by
kbench.perf); both are stored in every row (see :func:`annotate_compute`), so the
report needs nothing but the rows.

Exit status: 0 when every run completed, 1 when at least one failed (the report is
still written), 2 on bad command-line input (one message, no traceback), 130 on
Ctrl-C.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import importlib.metadata
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

from rich.console import Console

from kbench import __version__

BACKENDS = ("jax", "tensorflow", "torch")
ROWS_FORMAT = 1
ROWS_FILE = "rows.json"
LOG_TAIL_LINES = 15
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

console = Console() if Console().is_terminal else Console(width=120)


class UsageError(Exception):
    """Bad command-line input: :func:`main` prints the message and exits with status 2."""


# ------------------------------------------------------------------ inputs
def parse_backends(text: str) -> list[str]:
    """``"jax,tensorflow"`` -> ``["jax", "tensorflow"]`` (order kept, duplicates dropped).

    Raises:
        UsageError: empty list or a name other than jax, tensorflow, torch.
    """
    names = list(dict.fromkeys(b.strip().lower() for b in text.split(",") if b.strip()))
    if not names:
        raise UsageError("--backends is empty; give a comma-separated list of jax, tensorflow, torch")
    bad = [b for b in names if b not in BACKENDS]
    if bad:
        raise UsageError(f"unknown backend(s) {', '.join(map(repr, bad))} in --backends; "
                         f"choose from {', '.join(BACKENDS)}")
    return names


def parse_seeds(text: str) -> list[int]:
    """``"3"`` -> ``[0, 1, 2]`` (a count); ``"0,5,7"`` or ``"42,"`` -> that explicit list.

    Raises:
        UsageError: not an integer count >= 1 or a comma-separated list of integers.
    """
    text = text.strip()
    try:
        if "," in text:
            seeds = list(dict.fromkeys(int(s) for s in text.split(",") if s.strip()))
            if seeds:
                return seeds
        else:
            n = int(text)
            if n >= 1:
                return list(range(n))
    except ValueError:
        pass
    raise UsageError(f"--seeds {text!r}: give a count >= 1 (3 = seeds 0,1,2) or a list such as 0,5,7 "
                     "(a single explicit seed: 42,)")


def check_config(config: str, overrides: Sequence[str]) -> None:
    """Parse ``--config FILE`` plus the overrides exactly as ``kbench.run`` will,
    in this process (no backend is imported), so a typo fails before any run starts.

    Raises:
        UsageError: the file does not exist or the config / overrides are invalid
            (``kbench.config`` has printed the reason to stderr).
    """
    if not os.path.isfile(config):
        raise UsageError(f"config file {config!r} not found")
    from kbench.config import parse

    try:
        parse(["--config", config, *overrides])
    except SystemExit as e:
        if e.code not in (0, None):
            raise UsageError(f"config {config!r} with overrides {' '.join(overrides) or '(none)'} is invalid "
                             "(see the message above)") from None


# ------------------------------------------------------------------ environment
def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
    return {"cpu": _cpu_name(), "cores": os.cpu_count(), "memory_gib": _memory_gib(), "gpus": _gpus(),
            "os": platform.platform(), "python": platform.python_version(), "packages": package_versions()}


# ------------------------------------------------------------------ FLOPs and peak
PROBE_MARK = "KBENCH_PROBE_JSON "
DTYPES = {"float32": "float32", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}
PROBE_SCRIPT = "import sys; from kbench.compare import probe_main; probe_main(sys.argv[1])"


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


# ------------------------------------------------------------------ one run
def read_metrics(path: str) -> list[dict]:
    """Rows of a ``metrics.csv`` with numbers converted (empty cells -> ``None``)."""
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            row = {}
            for k, v in r.items():
                if k == "phase":
                    row[k] = v
                elif v in ("", None):
                    row[k] = None
                elif k in ("epoch", "step"):
                    row[k] = int(float(v))
                else:
                    row[k] = float(v)
            rows.append(row)
    return rows


def log_tail(path: str, n: int = LOG_TAIL_LINES) -> str:
    """The last ``n`` non-empty lines of a text file ('' when it cannot be read)."""
    try:
        with open(path, errors="replace") as f:
            lines = [line.rstrip() for line in f if line.strip()]
    except OSError:
        return ""
    return "\n".join(lines[-n:])


ERROR_LINE = re.compile(r"^(error:|[\w.]+(Error|Exception|Interrupt|Exit)\b)")


def _error_line(tail: str) -> str:
    """The most telling line of a log tail: the last ``error: ...`` line or exception
    line (``ValueError: ...``), else the last line."""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    if not lines:
        return "(empty log)"
    return next((line for line in reversed(lines) if ERROR_LINE.match(line)), lines[-1])


def _run_dirs(root: str) -> dict[str, float]:
    """Sub-folders of ``root`` holding a ``results.json`` -> its modification time."""
    out = {}
    if os.path.isdir(root):
        for d in os.listdir(root):
            p = os.path.join(root, d, "results.json")
            if os.path.isfile(p):
                out[os.path.join(root, d)] = os.path.getmtime(p)
    return out


def _load_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def make_row(backend: str, seed: int, out_dir: str, run_dir: str | None, exit_code: int | None, log: str,
             wall_time_s: float | None, reused: bool = False) -> dict:
    """One row of ``rows.json`` from a finished run: status, error text, the whole
    ``results.json`` and the ``metrics.csv`` epochs. Paths are stored relative to
    ``out_dir``. Status: the ``results.json`` status when there is one and the exit
    code is 0 (or the run says interrupted / failed), else ``failed``."""
    results = _load_json(os.path.join(run_dir, "results.json")) if run_dir else None
    metrics_path = os.path.join(run_dir, "metrics.csv") if run_dir else None
    metrics = read_metrics(metrics_path) if metrics_path and os.path.isfile(metrics_path) else []
    status, error = "completed", None
    tail = log_tail(log)
    if results is None:
        status = "failed"
        why = f"exit code {exit_code}" if exit_code not in (0, None) else "no results.json written"
        last = _error_line(tail)
        error = f"{why}: {last}\n--- last lines of {os.path.relpath(log, out_dir)}:\n{tail}"
    elif results.get("status") != "completed" or exit_code not in (0, None):
        status = results.get("status") if results.get("status") in ("failed", "interrupted") else "failed"
        msg = results.get("error") or (f"signal {results['signal']}" if results.get("signal") else None)
        error = "; ".join(x for x in (f"exit code {exit_code}" if exit_code not in (0, None) else None, msg) if x)
        error = f"{error or status}\n--- last lines of {os.path.relpath(log, out_dir)}:\n{tail}"
    if status != "completed":
        results = {k: v for k, v in (results or {}).items() if k != "history"} or None
    return {"backend": backend, "seed": seed, "status": status, "error": error, "exit_code": exit_code,
            "reused": reused, "wall_time_s": wall_time_s, "log": os.path.relpath(log, out_dir),
            "run_dir": os.path.relpath(run_dir, out_dir) if run_dir else None,
            "results": results, "metrics": metrics, "flops": None, "peak": None}


def run_command(config: str, seed: int, root: str, overrides: Sequence[str]) -> list[str]:
    """The ``kbench.run`` command line of one run."""
    return [sys.executable, "-m", "kbench.run", "--config", config, "--trainer.seed", str(seed),
            "--trainer.default_root_dir", root, *overrides]


def run_one(config: str, backend: str, seed: int, out_dir: str, overrides: Sequence[str] = (), *,
            echo: bool = False, timeout_s: float | None = None, force: bool = False,
            env: dict | None = None) -> dict:
    """Run one backend/seed in a subprocess and return its row (see :func:`make_row`).

    The child gets ``KERAS_BACKEND=backend`` and ``XLA_PYTHON_CLIENT_PREALLOCATE=false``;
    stdout and stderr go to ``out_dir/logs/<backend>-seed<seed>.log`` (and to this
    terminal with ``echo``). A completed earlier run in the same root is reused unless
    ``force``. After ``timeout_s`` seconds the child gets SIGTERM (it checkpoints and
    writes an ``interrupted`` results.json), then SIGKILL 120 s later.

    Raises:
        KeyboardInterrupt: Ctrl-C; the child (same process group) is interrupted too
            and waited for, and the row is attached as ``e.row``.
    """
    tag = f"{backend}-seed{seed}"
    root = os.path.join(out_dir, "runs", tag)
    log = os.path.join(out_dir, "logs", f"{tag}.log")
    os.makedirs(os.path.dirname(log), exist_ok=True)
    before = _run_dirs(root)
    if not force:
        done = [d for d, _ in sorted(before.items(), key=lambda kv: kv[1])
                if (_load_json(os.path.join(d, "results.json")) or {}).get("status") == "completed"]
        if done:
            return make_row(backend, seed, out_dir, done[-1], 0, log, None, reused=True)
    child_env = {**os.environ, **(env or {}), "KERAS_BACKEND": backend, "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
                 "PYTHONUNBUFFERED": "1"}
    cmd = run_command(config, seed, root, overrides)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        f.write(f"$ KERAS_BACKEND={backend} {shlex.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env, text=True,
                                errors="replace", bufsize=1)

        def pump():
            for line in proc.stdout:
                f.write(line)
                f.flush()
                if echo:
                    console.print(f"[dim]{tag}[/] {line.rstrip()}", markup=False, highlight=False)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        interrupted = None
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            f.write(f"\n[kbench.compare] run exceeded --timeout {timeout_s:g} s: sending SIGTERM\n")
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        except KeyboardInterrupt as e:  # the child got the same SIGINT from the terminal
            interrupted = e
            try:
                proc.wait(timeout=120)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                proc.kill()
                proc.wait()
        reader.join(timeout=10)
    new = {d: t for d, t in _run_dirs(root).items() if before.get(d) != t}
    run_dir = max(new, key=new.get) if new else None
    row = make_row(backend, seed, out_dir, run_dir, proc.returncode, log, time.perf_counter() - t0)
    if interrupted is not None:
        row["status"] = "interrupted"
        interrupted.row = row
        raise interrupted
    return row


# ------------------------------------------------------------------ the whole comparison
def write_rows(out_dir: str, data: dict) -> str:
    """Write ``data`` to ``out_dir/rows.json`` atomically; returns the path."""
    path = os.path.join(out_dir, ROWS_FILE)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, default=str)
    os.replace(tmp, path)
    return path


def run_compare(config: str, backends: Sequence[str], seeds: Sequence[int], out_dir: str,
                overrides: Sequence[str] = (), *, echo: bool = False, timeout_s: float | None = None,
                force: bool = False, compute: bool = True, command: str | None = None,
                on_row: Callable[[dict], None] | None = None) -> dict:
    """Run every backend for every seed (seed-major order) and write ``out_dir/rows.json``
    after each run; then (with ``compute``) store FLOPs and peak in the completed
    rows (:func:`annotate_compute`) and write it again. Backend names are not checked
    here (an unknown one simply fails in its subprocess and is reported as failed).

    Returns:
        The ``rows.json`` dict: ``format, kbench_version, created, command, config
        (path), config_text, overrides, backends, seeds, environment, rows``.

    Raises:
        KeyboardInterrupt: after Ctrl-C, once the rows so far are written.
    """
    os.makedirs(out_dir, exist_ok=True)
    try:
        with open(config) as f:
            config_text = f.read()
    except OSError:
        config_text = None
    data = {"format": ROWS_FORMAT, "kbench_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": command, "config": config, "config_text": config_text, "overrides": list(overrides),
            "backends": list(backends), "seeds": list(seeds), "environment": environment(), "rows": []}
    write_rows(out_dir, data)
    for seed in seeds:
        for b in backends:
            try:
                row = run_one(config, b, seed, out_dir, overrides, echo=echo, timeout_s=timeout_s, force=force)
            except KeyboardInterrupt as e:
                if getattr(e, "row", None):
                    data["rows"].append(e.row)
                write_rows(out_dir, data)
                raise
            data["rows"].append(row)
            write_rows(out_dir, data)
            if on_row:
                on_row(row)
    if compute:
        annotate_compute(data["rows"], out_dir)
        write_rows(out_dir, data)
    return data


def load_rows(folder: str) -> dict:
    """Read ``folder/rows.json``.

    Raises:
        UsageError: the folder or its rows.json is missing or not a kbench rows file.
    """
    path = os.path.join(folder, ROWS_FILE)
    if not os.path.isdir(folder):
        raise UsageError(f"--report-only {folder!r}: no such folder")
    if not os.path.isfile(path):
        raise UsageError(f"--report-only {folder!r}: no {ROWS_FILE} there (is it a kbench.compare output folder?)")
    data = _load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise UsageError(f"{path!r} is not a kbench.compare rows file")
    if data.get("format", 0) > ROWS_FORMAT:
        raise UsageError(f"{path!r} has format {data['format']}, newer than this kbench ({ROWS_FORMAT})")
    return data


# ------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    """The ``python -m kbench.compare`` argument parser (``kbench.run`` overrides go after ``--``)."""
    p = argparse.ArgumentParser(
        prog="python -m kbench.compare",
        description="Run one kbench config on several Keras backends and seeds, each run in its own subprocess, "
                    "and write a comparison report (compare.md/.csv/.json and PNG plots).",
        epilog="Everything after `--` is passed to every `python -m kbench.run`, e.g. "
               "`-- --trainer.max_epochs 1 --data.root data/cifar10`. "
               "`--parity [ARGS]` hands ARGS to `kbench.parity` instead.")
    p.add_argument("--config", help="kbench YAML config run on every backend")
    p.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated: jax,tensorflow,torch (default all)")
    p.add_argument("--seeds", default="3", help="a count N (seeds 0..N-1) or an explicit list 0,5,7 (default 3)")
    p.add_argument("--output", help="output folder (default runs/compare-<config>-<timestamp>); "
                                    "with --report-only, where the rebuilt report goes")
    p.add_argument("--report-only", metavar="DIR", help="rebuild the report from DIR/rows.json; runs nothing")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="per-run limit in seconds: SIGTERM (checkpoint + interrupted results.json), then SIGKILL")
    p.add_argument("--force", action="store_true",
                   help="rerun runs that already completed in --output (default: reuse them)")
    p.add_argument("--echo", action="store_true", help="also stream every run's output to the terminal")
    p.add_argument("--no-compute", action="store_true",
                   help="skip the FLOPs / machine-peak probe after the runs (no GFLOP/s or MFU in the report)")
    return p


def _run_parity(args: list[str]) -> int:
    try:
        parity = importlib.import_module("kbench.parity")
    except ModuleNotFoundError as e:
        if e.name not in ("kbench.parity",):
            raise
        console.print("[bold red]error:[/] --parity needs kbench.parity (kbench/parity.py), which this "
                      "installation does not have yet")
        return 2
    return int(parity.main(args) or 0)


def _status_line(row: dict) -> str:
    res = row.get("results") or {}
    what = f"{row['backend']} seed {row['seed']}"
    if row["status"] == "completed":
        extra = " (reused)" if row.get("reused") else (f" in {row['wall_time_s']:.0f} s" if row["wall_time_s"] else "")
        return f"[green]ok[/] {what}: test top-1 {res.get('test_accuracy', float('nan')):.4f}{extra}"
    first = (row.get("error") or "").splitlines()[0] if row.get("error") else ""
    return f"[red]{row['status']}[/] {what}: {first} (log {row['log']})"


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    given = list(argv)
    if "--parity" in argv:
        return _run_parity([a for a in argv if a != "--parity"])
    overrides: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, overrides = argv[:i], argv[i + 1:]
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse: usage message and exit 2 on bad flags
    from kbench import report

    try:
        if args.report_only:
            if args.config or overrides:
                raise UsageError("--report-only rebuilds a stored report; it takes no --config or overrides")
            data = load_rows(args.report_only)
            out = args.output or args.report_only
            report.write_report(data, out, console=console)
            return 0
        if not args.config:
            raise UsageError("--config FILE is required (or --report-only DIR, or --parity)")
        backends = parse_backends(args.backends)
        seeds = parse_seeds(args.seeds)
        check_config(args.config, overrides)
        if args.timeout is not None and args.timeout <= 0:
            raise UsageError("--timeout must be a positive number of seconds")
        stem = os.path.splitext(os.path.basename(args.config))[0]
        out = args.output or os.path.join("runs", f"compare-{stem}-{time.strftime('%Y%m%d-%H%M%S')}")
        if os.path.exists(out) and not os.path.isdir(out):
            raise UsageError(f"--output {out!r} exists and is not a folder")
    except UsageError as e:
        print(f"error: {e}\n(run `python -m kbench.compare --help` for all options)", file=sys.stderr)
        return 2
    n = len(backends) * len(seeds)
    console.print(f"[bold]kbench.compare[/] {args.config}: {n} run(s) ({', '.join(backends)} x seeds "
                  f"{', '.join(map(str, seeds))}), output {out}")
    command = shlex.join(["python", "-m", "kbench.compare", *given])
    try:
        data = run_compare(args.config, backends, seeds, out, overrides, echo=args.echo, timeout_s=args.timeout,
                           force=args.force, compute=not args.no_compute, command=command,
                           on_row=lambda r: console.print(_status_line(r)))
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]: writing the report of the runs so far")
        try:
            report.write_report(load_rows(out), out, console=console)
        except Exception as e:  # noqa: BLE001 - best effort after Ctrl-C
            console.print(f"[red]report not written: {e}")
        return 130
    report.write_report(data, out, console=console)
    return 0 if all(r["status"] == "completed" for r in data["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
