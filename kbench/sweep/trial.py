"""One trial of a sweep: ``kbench.run`` in a subprocess, and its row (keras-free).

:func:`execute_trial` is what a Ray task runs (:mod:`kbench.sweep.engine`); it is a
plain function, so it also runs without Ray. The trial's files, under the sweep
folder ``OUT`` on the machine that runs it:

- ``OUT/runs/<trial id>/``: ``--trainer.default_root_dir`` of the run (its timestamped
  run folder with ``results.json``, ``metrics.csv`` and checkpoints) and
  ``sweep-config.yaml``, the sweep's config text written there (a trial on another
  machine of a Ray cluster needs no copy of the config file);
- ``OUT/logs/<trial id>.log``: the run's output (attempt ``k`` > 1: ``<id>.attempt<k>.log``).

A trial whose earlier attempt was stopped (sweep driver killed, Ctrl-C, time limit)
continues from that run's last checkpoint with ``kbench.run --resume`` (exact resume,
same weights as an uninterrupted run); one that completed but whose row was not
written is reused. The row is :func:`kbench.compare.run.make_row`'s plus the trial's
``trial``, ``point``, ``attempt``, ``resumed_from``, ``node`` and start/end times.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import time

from kbench import subproc
from kbench.compare import run as compare_run
from kbench.sweep.spec import Trial

#: Seconds a stopped trial has to write its checkpoint and results after SIGINT/SIGTERM.
STOP_GRACE_S = compare_run.STOP_GRACE_S
CONFIG_NAME = "sweep-config.yaml"


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def resumable_run(root: str) -> str | None:
    """The newest run folder under ``root`` that has a checkpoint
    (``checkpoints/<tag>/state.json``) and no ``completed`` results.json (``None`` if none)."""
    found = []
    for d in os.listdir(root) if os.path.isdir(root) else []:
        run_dir, ckpts = os.path.join(root, d), os.path.join(root, d, "checkpoints")
        if not os.path.isdir(ckpts):
            continue
        states = [os.path.join(ckpts, c, "state.json") for c in os.listdir(ckpts)]
        states = [s for s in states if os.path.isfile(s)]
        done = (subproc.read_json(os.path.join(run_dir, "results.json")) or {}).get("status") == "completed"
        if states and not done:
            found.append((max(os.path.getmtime(s) for s in states), run_dir))
    return max(found)[1] if found else None


def whole_error(error: str | None, log: str) -> str | None:
    """``error`` (:func:`kbench.compare.run.make_row`'s: "why: <error line>" + log tail) with
    the error line completed by the lines the log wrapped it onto (up to 4 in all)."""
    if not error:
        return error
    lines = [x.strip() for x in subproc.log_tail(log, 40).splitlines()]
    last = subproc.error_line("\n".join(lines))
    first, sep, rest = error.partition("\n")
    if last not in lines or not first.endswith(last):
        return error
    i = lines.index(last)
    more = []
    for line in lines[i + 1:i + 4]:
        if subproc.ERROR_LINE.match(line) or line.startswith(("Traceback", "---", "[kbench")):
            break
        more.append(line)
    return " ".join([first, *more]) + sep + rest


def trial_row(trial: Trial, row: dict, attempt: int, resumed_from: str | None, started: str, out_dir: str) -> dict:
    """``row`` (:func:`kbench.compare.run.make_row`) with the trial's fields added."""
    row["error"] = whole_error(row.get("error"), os.path.join(out_dir, row["log"])) if row.get("log") else \
        row.get("error")
    return {"trial": trial.id, "point": dict(trial.point), **row, "attempt": attempt,
            "resumed_from": os.path.relpath(resumed_from, out_dir) if resumed_from else None,
            "node": socket.gethostname(), "started": started, "finished": _stamp()}


def drop_checkpoints(row: dict, out_dir: str) -> None:
    """Delete the ``checkpoints/`` folder of a completed trial's run (they only serve
    ``--resume``; ``model.keras``, ``results.json`` and ``metrics.csv`` stay): a VGG16 trial
    keeps 100-250 MB of them otherwise. The row records it (``checkpoints_dropped``)."""
    if row.get("status") == "completed" and row.get("run_dir"):
        folder = os.path.join(out_dir, row["run_dir"], "checkpoints")
        shutil.rmtree(folder, ignore_errors=True)
        row["checkpoints_dropped"] = not os.path.isdir(folder)


def timed_out(row: dict, timeout_s: float) -> None:
    """Mark a run stopped by ``--timeout`` as ``failed`` with the reason in front."""
    row.update(status="failed", error=f"timed out after --timeout {timeout_s:g} s (checkpointed; --retry-failed "
                                      f"resumes it, with a larger --timeout)\n{row.get('error') or ''}")


def execute_trial(trial: Trial, out_dir: str, config_text: str, overrides: list[str], *, attempt: int = 1,
                  timeout_s: float | None = None, cwd: str | None = None, keep_checkpoints: bool = False) -> dict:
    """Run ``trial`` as ``python -m kbench.run`` and return its row (never raises for
    a failed run: the row says ``failed`` with the error and the end of the log).

    Args:
        out_dir: the sweep folder (absolute, or relative to ``cwd``).
        config_text: the config file's text (written to ``runs/<id>/sweep-config.yaml``).
        overrides: ``kbench.run`` options of the whole sweep, before the trial's own.
        attempt: 1 for the first run of this trial, 2 after one retry, ...
        timeout_s: seconds before the run gets SIGTERM (it checkpoints and stops).
        cwd: working directory of the run (relative paths); ignored if not on this machine.
        keep_checkpoints: keep a completed run's checkpoints (default: :func:`drop_checkpoints`).

    Raises:
        KeyboardInterrupt: the task was cancelled (Ctrl-C of the sweep): the run got
            SIGINT, wrote its checkpoint and ``interrupted`` results; ``e.row`` holds the row.
    """
    cwd = cwd if cwd and os.path.isdir(cwd) else None
    out_dir = os.path.join(cwd or os.getcwd(), out_dir)
    root, started = os.path.join(out_dir, "runs", trial.id), _stamp()
    os.makedirs(root, exist_ok=True)
    os.makedirs(os.path.join(out_dir, "logs"), exist_ok=True)
    log = os.path.join(out_dir, "logs", trial.id + (f".attempt{attempt}" if attempt > 1 else "") + ".log")
    done = compare_run.completed_run(root)
    if done:
        row = trial_row(trial, compare_run.make_row(trial.backend, trial.seed, out_dir, done, 0, log, None,
                                                    reused=True), attempt, None, started, out_dir)
        if not keep_checkpoints:
            drop_checkpoints(row, out_dir)
        return row
    config = os.path.join(root, CONFIG_NAME)
    with open(config, "w") as f:
        f.write(config_text)
    resume = resumable_run(root)
    cmd = compare_run.run_command(config, trial.seed, root, [*overrides, *trial.overrides()])
    cmd += ["--resume", resume] if resume else []
    before = compare_run.run_dirs(root)
    interrupted = None
    try:
        finished = subproc.run_logged(
            cmd, log, env=subproc.backend_env(trial.backend), timeout=timeout_s,
            header=f"$ KERAS_BACKEND={trial.backend} {shlex.join(cmd)}\n", grace_s=STOP_GRACE_S, cwd=cwd,
            timeout_note=f"\n[kbench.sweep] trial exceeded --timeout {timeout_s} s: SIGTERM\n" if timeout_s else None,
            new_session=True, die_with_parent=True, interrupt_child=True)
    except KeyboardInterrupt as e:
        interrupted, finished = e, getattr(e, "finished", None) or subproc.Finished(None, 0.0)
    new = {d: t for d, t in compare_run.run_dirs(root).items() if before.get(d) != t}
    run_dir = max(new, key=new.get) if new else None
    row = compare_run.make_row(trial.backend, trial.seed, out_dir, run_dir, finished.returncode, log, finished.wall_s)
    row = trial_row(trial, row, attempt, resume, started, out_dir)
    if finished.timed_out and row["status"] != "completed":  # kept as failed: not resumed into the limit again
        timed_out(row, timeout_s)
    if not keep_checkpoints:
        drop_checkpoints(row, out_dir)
    if interrupted is not None:
        row["status"] = "interrupted"
        interrupted.row = row
        raise interrupted
    return row
