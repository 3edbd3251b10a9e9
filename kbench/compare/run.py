"""One run of ``python -m kbench.compare``: ``kbench.run`` in a subprocess, and its row.

:func:`run_one` runs one backend/seed (``KERAS_BACKEND`` set, output logged to
``DIR/logs/<backend>-seed<S>.log``, a completed earlier run reused) and
:func:`make_row` turns what it left (``results.json``, ``metrics.csv``, the exit
code and the end of its log) into one row of ``rows.json``. No backend is imported
here.
"""

from __future__ import annotations

import csv
import os
import shlex
import sys
from collections.abc import Sequence

from rich.console import Console

from kbench import subproc

#: Seconds a run has to write its checkpoint and results after SIGTERM (timeout) or Ctrl-C.
STOP_GRACE_S = 120

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


def run_dirs(root: str) -> dict[str, float]:
    """Sub-folders of ``root`` holding a ``results.json`` -> its modification time."""
    out = {}
    if os.path.isdir(root):
        for d in os.listdir(root):
            p = os.path.join(root, d, "results.json")
            if os.path.isfile(p):
                out[os.path.join(root, d)] = os.path.getmtime(p)
    return out


def make_row(backend: str, seed: int, out_dir: str, run_dir: str | None, exit_code: int | None, log: str,
             wall_time_s: float | None, reused: bool = False) -> dict:
    """One row of ``rows.json`` from a finished run: status, error text, the whole
    ``results.json`` and the ``metrics.csv`` epochs. Paths are stored relative to
    ``out_dir``. Status: the ``results.json`` status when there is one and the exit
    code is 0 (or the run says interrupted / failed), else ``failed``."""
    results = subproc.read_json(os.path.join(run_dir, "results.json")) if run_dir else None
    metrics_path = os.path.join(run_dir, "metrics.csv") if run_dir else None
    metrics = read_metrics(metrics_path) if metrics_path and os.path.isfile(metrics_path) else []
    status, error = "completed", None
    tail = subproc.log_tail(log)
    if results is None:
        status = "failed"
        why = f"exit code {exit_code}" if exit_code not in (0, None) else "no results.json written"
        last = subproc.error_line(tail)
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


def completed_run(root: str) -> str | None:
    """The newest run folder under ``root`` whose ``results.json`` says ``completed`` (``None`` if none)."""
    done = [d for d, _ in sorted(run_dirs(root).items(), key=lambda kv: kv[1])
            if (subproc.read_json(os.path.join(d, "results.json")) or {}).get("status") == "completed"]
    return done[-1] if done else None


def run_one(config: str, backend: str, seed: int, out_dir: str, overrides: Sequence[str] = (), *,
            echo: bool = False, timeout_s: float | None = None, force: bool = False,
            env: dict | None = None) -> dict:
    """Run one backend/seed in a subprocess and return its row (see :func:`make_row`).

    The child gets ``KERAS_BACKEND=backend`` and the rest of
    :func:`kbench.subproc.backend_env` (``env`` added to this process's environment);
    stdout and stderr go to ``out_dir/logs/<backend>-seed<seed>.log`` (and to this
    terminal with ``echo``). A completed earlier run in the same root is reused unless
    ``force``. After ``timeout_s`` seconds the child gets SIGTERM (it checkpoints and
    writes an ``interrupted`` results.json), then SIGKILL :data:`STOP_GRACE_S` s later.

    Raises:
        KeyboardInterrupt: Ctrl-C; the child (same process group) is interrupted too
            and waited for, and the row is attached as ``e.row``.
    """
    tag = f"{backend}-seed{seed}"
    root = os.path.join(out_dir, "runs", tag)
    log = os.path.join(out_dir, "logs", f"{tag}.log")
    os.makedirs(os.path.dirname(log), exist_ok=True)
    done = None if force else completed_run(root)
    if done:
        return make_row(backend, seed, out_dir, done, 0, log, None, reused=True)
    before = run_dirs(root)
    cmd = run_command(config, seed, root, overrides)
    note = (f"\n[kbench.compare] run exceeded --timeout {timeout_s:g} s: sending SIGTERM\n"
            if timeout_s is not None else None)
    show = (lambda line: console.print(f"[dim]{tag}[/] {line.rstrip()}", markup=False, highlight=False)) \
        if echo else None
    interrupted = None
    try:
        finished = subproc.run_logged(cmd, log, env=subproc.backend_env(backend, env), timeout=timeout_s,
                                      header=f"$ KERAS_BACKEND={backend} {shlex.join(cmd)}\n", on_line=show,
                                      grace_s=STOP_GRACE_S, timeout_note=note)
    except KeyboardInterrupt as e:  # the child got the same SIGINT from the terminal
        interrupted, finished = e, getattr(e, "finished", None) or subproc.Finished(None, 0.0)
    new = {d: t for d, t in run_dirs(root).items() if before.get(d) != t}
    run_dir = max(new, key=new.get) if new else None
    row = make_row(backend, seed, out_dir, run_dir, finished.returncode, log, finished.wall_s)
    if interrupted is not None:
        row["status"] = "interrupted"
        interrupted.row = row
        raise interrupted
    return row
