"""One run of ``python -m kbench.compare``: ``kbench.run`` in a subprocess, and its row.

:func:`run_one` runs one backend/seed (``KERAS_BACKEND`` set, output logged to
``DIR/logs/<backend>-seed<S>.log``, a completed earlier run reused) and
:func:`make_row` turns what it left (``results.json``, ``metrics.csv``, the exit
code and the end of its log) into one row of ``rows.json``. No backend is imported
here.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from rich.console import Console

LOG_TAIL_LINES = 15

console = Console() if Console().is_terminal else Console(width=120)


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
