"""Dispatching a sweep's trials through Ray (keras-free: the driver imports no backend).

Each trial is one Ray task (:func:`_trial_task`) that declares ``num_cpus`` /
``num_gpus``, so Ray packs as many trials on each machine as its resources allow and
queues the rest; the task runs :func:`kbench.sweep.trial.execute_trial` (a
``kbench.run`` subprocess with ``KERAS_BACKEND`` set). ``ray.init()`` starts a local
Ray instance, or attaches to a running cluster with ``address`` (``--address`` or the
``RAY_ADDRESS`` environment variable, read by Ray itself). Ray is the scheduler:
nothing here queues or places work.

Ray's own retries (``max_retries``) cover a worker or node that dies under a task; a
run that fails is a ``failed`` row with its error (Ray sees a normal return), kept and
run again only on request (``retry_failed``). The driver stores each row as soon as it
arrives (:mod:`kbench.sweep.store`), so killing the driver loses at most the trials
that were running (their ``kbench.run`` processes are killed with their Ray workers;
the next run of the sweep resumes them from their last checkpoint).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable

from kbench.sweep import store
from kbench.sweep.spec import Sweep, SweepError, Trial
from kbench.sweep.trial import STOP_GRACE_S, execute_trial


def _trial_task(trial: Trial, out_dir: str, config_text: str, overrides: list[str], attempt: int,
                timeout_s: float | None, cwd: str, keep_checkpoints: bool) -> dict | None:
    """The body of one Ray task: the trial's row (``interrupted`` when it was cancelled)."""
    try:
        return execute_trial(trial, out_dir, config_text, overrides, attempt=attempt, timeout_s=timeout_s, cwd=cwd,
                             keep_checkpoints=keep_checkpoints)
    except KeyboardInterrupt as e:  # ray.cancel: the run has checkpointed; the next sweep resumes it
        return getattr(e, "row", None)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise SweepError("Ray is not installed; install it with pip install 'kbench[sweep]' "
                         "(or pip install ray==2.60.0)") from None
    return ray


def check_address(address: str | None, timeout_s: float = 10.0) -> None:
    """Refuse a ``host:port`` (or ``ray://host:port``) nobody listens on, before Ray
    spends minutes retrying it (``auto``, ``local`` and no address are left to Ray).

    Raises:
        SweepError: names the address and what to do.
    """
    target = (address or os.environ.get("RAY_ADDRESS") or "").removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise SweepError(f"no Ray cluster answers at {address or os.environ.get('RAY_ADDRESS')!r} ({e.strerror or e}); "
                         "start one with `ray start --head` there, fix --address / RAY_ADDRESS, or drop them for a "
                         "local instance") from None


def start_ray(address: str | None, num_cpus: int | None):
    """``ray.init`` a local instance (``num_cpus``: its CPU count, default all) or
    attach to ``address`` / ``RAY_ADDRESS``; returns the ``ray`` module.

    Raises:
        SweepError: Ray is not installed, or the cluster cannot be reached.
    """
    ray = _import_ray()
    check_address(address)
    kwargs = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if not (address or os.environ.get("RAY_ADDRESS")):
        kwargs["num_cpus"] = num_cpus
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise SweepError(f"cannot start or reach Ray at {address or os.environ.get('RAY_ADDRESS') or 'local'} "
                         f"({str(e).splitlines()[0]}); start a cluster with `ray start --head` or drop --address") \
            from None
    return ray


def check_resources(ray, cpus: float, gpus: float) -> None:
    """Refuse a per-trial request no machine of the cluster can meet (Ray would wait forever).

    Raises:
        SweepError: names the request and what the cluster has.
    """
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if not any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in nodes):
        have = ", ".join(f"{n.get('CPU', 0):g} CPU / {n.get('GPU', 0):g} GPU" for n in nodes) or "no live node"
        raise SweepError(f"each trial asks for {cpus:g} CPU and {gpus:g} GPU but no machine has that ({have}); "
                         "lower --cpus-per-trial / --gpus-per-trial")


def _ray_error_row(trial: Trial, attempt: int, error: Exception) -> dict:
    """A ``failed`` row for a task Ray could not complete (worker or node lost)."""
    row = store.pending_row(trial)
    row.update(status="failed", attempt=attempt, error=f"Ray: {type(error).__name__}: {str(error).splitlines()[0]}")
    return row


def run_sweep(sweep: Sweep, out_dir: str, *, address: str | None = None, num_cpus: int | None = None,
              cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0, retry_failed: bool = False,
              timeout_s: float | None = None, max_retries: int = 1, keep_checkpoints: bool = False,
              on_row: Callable[[dict, int, int], None] | None = None) -> dict:
    """Run the trials of ``sweep`` that are not finished in ``out_dir``, and return
    the rows file's data (:func:`kbench.sweep.store.write_rows`).

    Args:
        address: Ray cluster to attach to (``None``: ``RAY_ADDRESS`` or a local instance).
        num_cpus: CPUs of a local instance (``None``: all of this machine's).
        cpus_per_trial, gpus_per_trial: what each trial declares to Ray.
        retry_failed: run ``failed`` trials again (their attempt number goes up).
        timeout_s: seconds a run may take before it is stopped (SIGTERM, checkpoint).
        max_retries: Ray's retries of a task whose worker or node died.
        keep_checkpoints: keep completed trials' checkpoints (default: deleted, see
            :func:`kbench.sweep.trial.drop_checkpoints`).
        on_row: called with (row, trials done, trials to do) as each trial ends.

    Raises:
        SweepError: Ray missing or unreachable, or a resource request no node meets.
        KeyboardInterrupt: Ctrl-C; running trials are cancelled (they checkpoint) and
            every row that arrived is stored.
    """
    out_dir = os.path.abspath(out_dir)
    stored = store.stored_rows(out_dir)
    todo = store.plan(sweep.trials(), stored, retry_failed)
    if todo:
        ray = start_ray(address, num_cpus)
        try:
            check_resources(ray, cpus_per_trial, gpus_per_trial)
            os.makedirs(out_dir, exist_ok=True)
            store.write_rows(out_dir, sweep, stored)
            task = ray.remote(_trial_task).options(num_cpus=cpus_per_trial, num_gpus=gpus_per_trial,
                                                   max_retries=max_retries)
            refs = {task.remote(t, out_dir, sweep.config_text, sweep.overrides, a, timeout_s, os.getcwd(),
                                keep_checkpoints): (t, a) for t, a in todo}
            _collect(ray, refs, out_dir, sweep, stored, on_row)
        finally:
            ray.shutdown()
    os.makedirs(out_dir, exist_ok=True)
    store.write_rows(out_dir, sweep, stored)
    return store.load_rows(out_dir)


def _wait_one(ray, refs: dict) -> list:
    """``ray.wait`` for one finished task, in 0.5 s slices: ``ray.wait`` blocks in C++
    and would hold a Ctrl-C back until a trial ends."""
    while True:
        ready, _ = ray.wait(list(refs), num_returns=1, timeout=0.5)
        if ready:
            return ready


def _store(ray, ref, refs: dict, out_dir: str, sweep: Sweep, stored: dict) -> dict | None:
    """The row of a finished task (a failed row when Ray could not run it; ``None`` when
    it was cancelled), stored at once."""
    trial, attempt = refs.pop(ref)
    try:
        row = ray.get(ref)
    except ray.exceptions.TaskCancelledError:
        row = None
    except ray.exceptions.RayError as e:
        row = _ray_error_row(trial, attempt, e)
    if row is not None:
        stored[row["trial"]] = row
        store.save_row(out_dir, row)
        store.write_rows(out_dir, sweep, stored)
    return row


def _collect(ray, refs: dict, out_dir: str, sweep: Sweep, stored: dict, on_row) -> None:
    """Store each trial's row as its task ends; on Ctrl-C cancel the rest (their runs get
    SIGINT and checkpoint), store what still arrives within the stop grace, re-raise."""
    total, done = len(refs), 0
    try:
        while refs:
            row = _store(ray, _wait_one(ray, refs)[0], refs, out_dir, sweep, stored)
            done += 1
            if on_row and row is not None:
                on_row(row, done, total)
    except KeyboardInterrupt:
        print(f"kbench.sweep: Ctrl-C: stopping {len(refs)} running or queued trial(s); each running one writes a "
              f"checkpoint (up to {STOP_GRACE_S} s; Ctrl-C again to stop at once)", flush=True)
        for ref in refs:
            ray.cancel(ref)
        deadline = time.monotonic() + STOP_GRACE_S + 10
        while refs and time.monotonic() < deadline:
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=0.5)
            for ref in ready:
                _store(ray, ref, refs, out_dir, sweep, stored)
        raise
