"""Running one command on one Keras backend in a subprocess, and what the tools read back.

The tools (``kbench.bench``, ``kbench.compare``, ``kbench.parity``) run every
backend in its own process, because the backend is fixed per process by
``KERAS_BACKEND`` at the first ``import keras``. This module holds what they share:
the child's environment (:func:`backend_env`), starting it with its output in a log
file, a time limit and a clean stop on Ctrl-C (:func:`run_logged`), the most telling
error line of a log (:func:`error_line`, :func:`log_tail`) and JSON files written
atomically (:func:`write_json`, :func:`read_json`). Keras-free: nothing here
imports keras or a backend.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

#: A line that states an error: ``error: ...`` (kbench's CLI message), ``kbench...: ...``
#: (a tool's own message) or an exception line such as ``ValueError: ...``.
ERROR_LINE = re.compile(r"^(error:|kbench[\w.]*:|[\w.]+(Error|Exception|Interrupt|Exit)\b)")


def backend_env(backend: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a child that runs on ``backend``: this process's environment,
    then ``extra``, then ``KERAS_BACKEND=backend``, ``XLA_PYTHON_CLIENT_PREALLOCATE=false``
    (JAX takes GPU memory as needed) and ``PYTHONUNBUFFERED=1`` (output reaches the log
    as it is printed); ``TF_CPP_MIN_LOG_LEVEL`` defaults to ``2`` (TensorFlow's info
    and warning lines off)."""
    env = {**os.environ, **(extra or {}), "KERAS_BACKEND": backend, "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
           "PYTHONUNBUFFERED": "1"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


@dataclass
class Finished:
    """How a child run by :func:`run_logged` ended.

    Attributes:
        returncode: the exit status (negative: killed by that signal); ``None`` when
            it could not be started.
        wall_s: seconds from the start to the end (or the kill), wall clock.
        timed_out: it ran past the time limit and was stopped.
        error: why it could not be started (the ``OSError`` text; ``None`` when it was).
    """

    returncode: int | None
    wall_s: float
    timed_out: bool = False
    error: str | None = None


def _stop(proc: subprocess.Popen, group: bool, grace_s: float | None, terminate: bool) -> None:
    """Stop ``proc``: with ``grace_s``, optionally SIGTERM and wait that long first;
    then SIGKILL (its whole process group when ``group``) and reap it."""
    if grace_s is not None:
        if terminate:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
            return
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            pass
    if group:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    else:
        proc.kill()
    proc.wait()


def _pump(proc: subprocess.Popen, f, on_line: Callable[[str], None] | None) -> None:
    """Copy the child's output lines to the open file ``f`` (and to ``on_line``) as they come."""
    for line in proc.stdout:
        f.write(line)
        f.flush()
        if on_line:
            on_line(line.rstrip("\n"))


def _wait(proc: subprocess.Popen, timeout: float | None) -> None:
    """``proc.wait(timeout)`` in slices of 0.5 s, so that an exception raised in this
    thread from outside (``_thread.interrupt_main``, Ray's task cancellation) is seen
    within half a second rather than when the child ends.

    Raises:
        subprocess.TimeoutExpired: ``timeout`` seconds passed.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        try:
            proc.wait(timeout=0.5 if left is None else max(0.0, min(0.5, left)))
            return
        except subprocess.TimeoutExpired:
            if left is not None and left <= 0.5:
                raise


def _die_with_parent() -> None:
    """In the child before ``exec``: ask Linux for SIGKILL when the parent dies
    (``prctl(PR_SET_PDEATHSIG, SIGKILL)``; nothing on other systems), and give SIGINT its
    default action and unblock it and SIGTERM (a parent such as a Ray worker may ignore
    or block them, and both survive ``exec``: the child would not stop on Ctrl-C)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def run_logged(cmd: Sequence[str], log: str, *, env: dict[str, str] | None = None, timeout: float | None = None,
               header: str = "", on_line: Callable[[str], None] | None = None, grace_s: float | None = None,
               timeout_note: str | None = None, new_session: bool = False, cwd: str | None = None,
               die_with_parent: bool = False, interrupt_child: bool = False) -> Finished:
    """Run ``cmd``, writing ``header`` and then its stdout and stderr (merged, as they
    come) to the file ``log``; ``on_line(line)`` sees every output line too.

    Args:
        timeout: seconds before the child is stopped (``None``: no limit);
            ``timeout_note`` is then written to the log.
        grace_s: how it is stopped, after the timeout or Ctrl-C. ``None``: SIGKILL at
            once. A number: SIGTERM after the timeout (after Ctrl-C the child has had
            the terminal's SIGINT already), then SIGKILL if it still runs ``grace_s``
            seconds later.
        new_session: start the child in its own session (it does not get the
            terminal's Ctrl-C; SIGKILL goes to its whole process group).
        cwd: the child's working directory (``None``: this process's).
        die_with_parent: on Linux the child gets SIGKILL when this process dies (no orphan).
        interrupt_child: on an exception while waiting (Ctrl-C, Ray's cancel), send the
            child SIGINT first (it did not get the terminal's: new session, or cancelled).

    Returns:
        :class:`Finished`; a child that cannot be started is ``returncode None`` with
        ``error`` (nothing raised).

    Raises:
        KeyboardInterrupt (or any exception while waiting): re-raised once the child is
            stopped, with the :class:`Finished` so far as its ``finished`` attribute.
    """
    t0 = time.perf_counter()
    with open(log, "w") as f:
        f.write(header)
        f.flush()
        try:
            proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                                    errors="replace", bufsize=1, start_new_session=new_session, cwd=cwd,
                                    preexec_fn=_die_with_parent if die_with_parent else None)
        except OSError as e:
            return Finished(None, time.perf_counter() - t0, error=str(e))

        reader = threading.Thread(target=_pump, args=(proc, f, on_line), daemon=True)
        reader.start()
        timed_out = False
        try:
            _wait(proc, timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            if timeout_note:
                f.write(timeout_note)
                f.flush()
            _stop(proc, new_session, grace_s, terminate=True)
        except BaseException as e:
            if interrupt_child and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            _stop(proc, new_session, grace_s, terminate=False)
            reader.join(timeout=10)
            e.finished = Finished(proc.returncode, time.perf_counter() - t0)
            raise
        reader.join(timeout=10)
    return Finished(proc.returncode, time.perf_counter() - t0, timed_out)


def log_tail(path: str, n: int = 15) -> str:
    """The last ``n`` non-empty lines of a text file, joined by newlines ('' when it
    cannot be read)."""
    try:
        with open(path, errors="replace") as f:
            lines = [line.rstrip() for line in f if line.strip()]
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def error_line(text: str, limit: int = 500) -> str:
    """The most telling line of a failed child's output: the last line that states an
    error (:data:`ERROR_LINE`: ``error: ...``, ``kbench...: ...``, ``ValueError: ...``),
    else the last non-empty line, else ``"no output"``; at most ``limit`` characters."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "no output"
    return next((line for line in reversed(lines) if ERROR_LINE.match(line)), lines[-1])[:limit]


def write_json(path: str, data, *, indent: int = 1) -> None:
    """Write ``data`` as JSON to ``path`` atomically (a temporary file, synced, then
    ``os.replace``): a reader sees the old file or the new one, never half of it.
    Values JSON cannot hold are written as ``str(value)``."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=indent, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: str):
    """The JSON value stored in ``path``, or ``None`` when it is missing, unreadable or
    not JSON (e.g. cut short by a crash)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def arg_value(argv: list[str], flag: str) -> str | None:
    """The value of ``flag VALUE`` or ``flag=VALUE`` in the command line ``argv`` (None if absent)."""
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None
