"""Where the time goes: the ``trainer.profile`` option (``--trainer.profile true|trace``).

With ``trainer.profile: true`` a run measures, on the host clock
(``time.perf_counter``), where its wall time went and writes it to ``results.json``;
the end of the run prints it as a table. Nothing that is trained changes: the
measurement is two extra Keras callbacks (one first, one last in each phase's list),
a timed ``__getitem__`` on the phase's training sequence and timed checkpoint saves.

Run level, ``results.json`` ``profile``: parts in seconds that add up to ``wall_s``
(:data:`RUN_PARTS`, ``other_s`` is the rest):

* ``data_s``: reading, decoding and splitting the data (``DataModule.setup``; under
  ``kbench.run`` only: a library user's data is set up before ``Trainer.fit``).
* ``model_s``: building the model and loading its weights (``kbench.run`` only).
* ``setup_s``: checks, the run folder, the phase plan (before the first phase).
* ``cache_s``: frozen-prefix feature computation (for the phases and the test).
* ``phases_s``: the phases, their feature caching excluded.
* ``test_s``: the best epoch's (or SWA's) weights restored, the test evaluation and
  the inference timing, feature caching excluded.
* ``save_s``: writing ``model.keras``.
* ``wall_s``: from the start of data set-up (``kbench.run``) or of ``Trainer.fit``
  until ``results.json`` is assembled.

Per phase, ``phases[i].profile``: parts that add up to the phase's ``wall_time_s``
(:data:`PHASE_PARTS`):

* ``setup_s``: trainable layers set, data picked, optimizer compiled (and a
  ``learning_rate: auto`` phase's LR finder), the frozen-variable audit after the fit.
* ``cache_s``: the phase's frozen-prefix features (the row's ``cache_time_s``).
* ``data_wait_s``: time the training loop's thread spent in the training
  sequence's ``__getitem__`` (slicing, resizing, augmenting a batch).
* ``step_s``: training steps, ``on_train_batch_begin`` to ``on_train_batch_end``
  with all callbacks and data waits excluded: host-to-device copies, the
  compiled step and the wait for its loss (first-step tracing included).
* ``callbacks_s``: every callback of the phase (progress, metrics, EMA, trackers,
  yours) outside validation, checkpoint saves and trace start/stop excluded.
* ``validation_s``: each epoch's validation pass, its data and callbacks included.
* ``checkpoint_s``: epoch and step checkpoint saves.
* ``trace_s``: starting and stopping the backend's profiler (``trace`` mode).
* ``other_s``: the rest of ``Model.fit`` (Keras's loop, iterator and adapter set-up).

Not parts: ``data_background_s`` (``__getitem__`` in other threads, such as
tf.data's on TensorFlow, overlapped with the steps), ``steps`` and ``step_ms_mean``.

``trainer.profile: trace`` also records the backend's own profiler
(:func:`kbench.backend.start_trace`) for :data:`TRACE_STEPS` training steps of the
first phase, after :data:`TRACE_SKIP` warm-up steps, into ``<run_dir>/profile/``;
``profile.trace`` names the files (or the error: a profiler that cannot start is
one warning line, the run goes on). The traced steps are slower than the others.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from time import perf_counter

import keras
from rich.table import Table

from kbench import PROFILE_MODES, KbenchError, backend

TRACE_SKIP, TRACE_STEPS = 2, 5
RUN_PARTS = ("data_s", "model_s", "setup_s", "cache_s", "phases_s", "test_s", "save_s")
PHASE_PARTS = ("setup_s", "cache_s", "data_wait_s", "step_s", "callbacks_s", "validation_s", "checkpoint_s",
               "trace_s", "other_s")
_BRACKETED = ("train_begin", "epoch_begin", "train_batch_begin", "train_batch_end", "epoch_end", "train_end")
_VIEWERS = {"jax": "*.trace.json.gz opens in Perfetto (ui.perfetto.dev); *.xplane.pb in XProf / TensorBoard's "
                   "profile plugin",
            "tensorflow": "*.xplane.pb opens in XProf / TensorBoard's profile plugin (pip install "
                          "tensorboard-plugin-profile)",
            "torch": "torch_trace.json opens in Perfetto (ui.perfetto.dev) or chrome://tracing"}


def check_profile(mode) -> bool | str:
    """``mode`` if it is one of :data:`PROFILE_MODES` (``False``, ``True``, ``"trace"``).

    Raises:
        KbenchError: any other value.
    """
    if any(mode is m if isinstance(m, bool) else mode == m for m in PROFILE_MODES):
        return mode
    raise KbenchError(f"trainer.profile={mode!r} is not one of false, true, trace")


class RunProfile:
    """Run-level lap timer; makes a :class:`PhaseProfile` per phase when enabled.

    Laps are contiguous: :meth:`lap` gives the time since the previous lap (or
    :meth:`start`) to one part of :data:`RUN_PARTS`, less the feature-cache seconds
    spent meanwhile, which go to ``cache_s``. The clock always runs (it is cheap);
    only an enabled profile adds callbacks and a ``profile`` entry to results.

    Args:
        mode: ``False``, ``True`` or ``"trace"`` (see the module docstring).
        log: where the trace's warning and note lines go (rich markup).

    Raises:
        KbenchError: a bad ``mode``.
    """

    def __init__(self, mode: bool | str = False, log=print):
        self.mode, self.log = check_profile(mode), log
        self.enabled = bool(mode)
        self.t0: float | None = None
        self.trace: dict | None = None
        self._reset()

    def _reset(self) -> None:
        self.parts = dict.fromkeys(RUN_PARTS, 0.0)
        self.t0 = self._last = None
        self._cache_seen, self._done, self.traced = 0.0, False, False

    def start(self) -> None:
        """Start the clock (no-op when running: ``kbench.run`` starts it before the data)."""
        if self._done:
            self._reset()
        if self.t0 is None:
            self.t0 = self._last = perf_counter()
            self._cache_seen = 0.0

    def lap(self, part: str, cache=None) -> None:
        """Add the seconds since the last lap to ``part``; those ``cache`` (a
        :class:`~kbench.trainer.cache.FeatureCache`) spent meanwhile go to ``cache_s``."""
        self.start()
        now = perf_counter()
        dt, self._last = now - self._last, now
        if cache is not None:
            dc = min(max(cache.seconds - self._cache_seen, 0.0), dt)
            self._cache_seen = cache.seconds
            self.parts["cache_s"] += dc
            dt -= dc
        self.parts[part] += dt

    def phase(self, pr) -> PhaseProfile | None:
        """A :class:`PhaseProfile` for :class:`~kbench.trainer.phase.PhaseRun` ``pr``
        (after its callbacks are made), or None when profiling is off."""
        if not self.enabled:
            return None
        trace_dir = None
        if self.mode == "trace" and not self.traced:
            trace_dir = os.path.join(pr.run.run_dir, "profile")
        return PhaseProfile(pr.train_seq, [(pr.saver, "on_epoch_end"), (pr.stepper, "on_train_batch_end")],
                            self, trace_dir, pr.plan.phase.name)

    def print_table(self, results: dict, console) -> None:
        """Print :func:`profile_table` of ``results`` on ``console`` when profiling is on."""
        if self.enabled and "profile" in results:
            console.print(profile_table(results))

    def results(self, last_part: str = "save_s") -> dict:
        """``{"profile": {...}}`` for ``results.json`` (``{}`` when off), the time since
        the last lap in ``last_part``; ends the run's clock."""
        if not self.enabled:
            return {}
        self.lap(last_part)
        wall = perf_counter() - self.t0
        self._done = True
        parts = {k: round(v, 4) for k, v in self.parts.items()}
        return {"profile": {"mode": self.mode, "wall_s": round(wall, 4), **parts,
                            "other_s": round(wall - sum(self.parts.values()), 4), "trace": self.trace}}


class _Mark(keras.callbacks.Callback):
    """Reports the host clock at each hook to a :class:`PhaseProfile` (``head``: first
    in the callback list, ``tail``: last)."""

    def __init__(self, owner: PhaseProfile, role: str):
        super().__init__()
        self.owner, self.role = owner, role

    def on_train_begin(self, logs=None):
        self.owner.mark(self.role, "train_begin")

    def on_train_end(self, logs=None):
        self.owner.mark(self.role, "train_end")

    def on_epoch_begin(self, epoch, logs=None):
        self.owner.mark(self.role, "epoch_begin")

    def on_epoch_end(self, epoch, logs=None):
        self.owner.mark(self.role, "epoch_end")

    def on_train_batch_begin(self, batch, logs=None):
        self.owner.mark(self.role, "train_batch_begin")

    def on_train_batch_end(self, batch, logs=None):
        self.owner.mark(self.role, "train_batch_end")

    def on_test_begin(self, logs=None):
        self.owner.mark(self.role, "test_begin")

    def on_test_end(self, logs=None):
        self.owner.mark(self.role, "test_end")


class PhaseProfile:
    """One phase's time breakdown (see the module docstring for the parts).

    Args:
        train_seq: the phase's training ``PyDataset``; its class is swapped for a
            subclass with a timed ``__getitem__`` until :meth:`row` (same batches).
        timed: ``(callback, method name)`` pairs timed as checkpoint saves.
        run: the :class:`RunProfile` (gets the trace's outcome).
        trace_dir: folder for the backend's trace (None: no trace).
        name: the phase's name (for the trace's record).
    """

    def __init__(self, train_seq, timed: list, run: RunProfile, trace_dir: str | None, name: str):
        self.seq, self.cls, self.timed, self.run = train_seq, type(train_seq), timed, run
        self.trace_dir, self.name, self.thread = trace_dir, name, threading.get_ident()
        self.t = dict.fromkeys(("data_wait_s", "data_background_s", "step_s", "callbacks_s", "validation_s",
                                "checkpoint_s", "trace_s"), 0.0)
        self.steps, self._head, self._begun, self._val0 = 0, 0.0, 0.0, 0.0
        self._in_step, self._step_data, self._trace, self._trace_first = False, 0.0, None, 0
        self.seq.__class__ = self._timed_class()
        for cb, method in timed:
            setattr(cb, method, self._timed_method(getattr(cb, method)))

    def _timed_class(self):
        base, owner = self.cls, self

        def __getitem__(seq, i):
            t0 = perf_counter()
            try:
                return base.__getitem__(seq, i)
            finally:
                owner.data_time(perf_counter() - t0)

        return type(base.__name__, (base,), {"__getitem__": __getitem__, "__module__": base.__module__})

    def _timed_method(self, fn):
        def timed(*args, **kwargs):
            t0 = perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.t["checkpoint_s"] += perf_counter() - t0
        return timed

    def data_time(self, dt: float) -> None:
        """Book ``dt`` seconds of ``__getitem__``: a wait when on the loop's thread (and
        out of the step when inside one), background time on any other thread."""
        if threading.get_ident() != self.thread:
            self.t["data_background_s"] += dt
            return
        self.t["data_wait_s"] += dt
        if self._in_step:
            self._step_data += dt

    def wrap(self, callbacks: list) -> list:
        """``callbacks`` with the head and tail markers around them."""
        return [_Mark(self, "head"), *callbacks, _Mark(self, "tail")]

    def mark(self, role: str, hook: str) -> None:
        """The clock at ``hook``: the head's mark opens the hook's callbacks, the tail's closes them."""
        now = perf_counter()
        if role == "head":
            self._head = now
            if hook == "train_batch_end":
                self.t["step_s"] += now - self._begun - self._step_data
                self._in_step, self.steps = False, self.steps + 1
                if self.steps == TRACE_SKIP + TRACE_STEPS:
                    self._trace_hook(start=False)
            elif hook == "train_batch_begin" and self.steps == TRACE_SKIP:
                self._trace_hook(start=True)
            elif hook == "train_end":
                self._trace_hook(start=False)
            elif hook == "test_begin":
                self._val0 = now
            return
        if hook in _BRACKETED:
            self.t["callbacks_s"] += now - self._head
        if hook == "train_batch_begin":
            self._begun, self._in_step, self._step_data = now, True, 0.0
        elif hook == "test_end":
            self.t["validation_s"] += now - self._val0

    def _trace_hook(self, start: bool) -> None:
        """Start the backend trace (before step ``TRACE_SKIP + 1``) or stop a running one."""
        if self.trace_dir is None or start != (self._trace is None):
            return
        t0 = perf_counter()
        if start:
            self._trace = start_trace(self.trace_dir, self.run)
            self.run.traced, self._trace_first = True, self.steps + 1
            self.trace_dir = self.trace_dir if self._trace is not None else None
        else:
            stop_trace(self._trace, self.trace_dir, self.run, self.name, (self._trace_first, self.steps))
            self._trace, self.trace_dir = None, None
        self.t["trace_s"] += perf_counter() - t0

    def row(self, row: dict) -> dict:
        """``row`` (a phase's ``results.json`` row) with ``profile`` added; undoes the
        timing wrappers."""
        self.seq.__class__ = self.cls
        for cb, method in self.timed:
            cb.__dict__.pop(method, None)
        t = self.t
        fit = row["fit_time_s"]
        parts = {"setup_s": row["wall_time_s"] - fit - row["cache_time_s"], "cache_s": row["cache_time_s"],
                 "data_wait_s": t["data_wait_s"], "step_s": t["step_s"],
                 "callbacks_s": t["callbacks_s"] - t["checkpoint_s"] - t["trace_s"],
                 "validation_s": t["validation_s"], "checkpoint_s": t["checkpoint_s"], "trace_s": t["trace_s"]}
        parts["other_s"] = fit - sum(v for k, v in parts.items() if k not in ("setup_s", "cache_s"))
        prof = {k: round(v, 4) for k, v in parts.items()}
        prof.update(data_background_s=round(t["data_background_s"], 4), steps=self.steps,
                    step_ms_mean=round(1e3 * t["step_s"] / self.steps, 3) if self.steps else None)
        return {**row, "profile": prof}


def start_trace(logdir: str, run: RunProfile):
    """:func:`kbench.backend.start_trace`, or None after one warning line (recorded in
    ``run.trace``) when the backend's profiler cannot start."""
    try:
        return backend.start_trace(logdir)
    except Exception as e:  # noqa: BLE001 - an optional profiler must not end the run
        run.trace = {"error": f"{type(e).__name__}: {e}"}
        run.log(f"[yellow]profile trace: the {backend.name()} profiler did not start ({run.trace['error']}); "
                "the run goes on without a trace")
        return None


def stop_trace(handle, logdir: str, run: RunProfile, phase: str, steps: tuple[int, int]) -> None:
    """Stop the trace; record in ``run.trace`` where it went (paths relative to the run
    folder) and log one line naming the files and their viewer."""
    try:
        files = backend.stop_trace(handle)
    except Exception as e:  # noqa: BLE001 - as start_trace
        run.trace = {"error": f"{type(e).__name__}: {e}"}
        run.log(f"[yellow]profile trace: stopping the {backend.name()} profiler failed ({run.trace['error']})")
        return
    root = os.path.dirname(logdir)
    viewer = _VIEWERS[backend.name()]
    if backend.name() == "tensorflow" and not any(importlib.util.find_spec(m) for m in
                                                   ("tensorboard_plugin_profile", "xprof")):
        viewer += "; not installed here"
    run.trace = {"dir": os.path.relpath(logdir, root), "files": [os.path.relpath(f, root) for f in files],
                 "phase": phase, "steps": list(steps), "viewer": viewer}
    run.log(f"profile trace of phase {phase} steps {steps[0]}-{steps[1]}: {len(files)} file(s) in {logdir} "
            f"({viewer})")


def _cell(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def profile_table(results: dict) -> Table:
    """A rich table of ``results["profile"]`` and every phase's ``profile``: seconds per part."""
    t = Table(title="where the time goes (s)")
    t.add_column("phase")
    for part in ("wall", *(p[:-2] for p in PHASE_PARTS)):
        t.add_column(part.replace("_", " "), justify="right")
    for p in results["phases"]:
        prof = p.get("profile") or {}
        t.add_row(p["phase"], _cell(p["wall_time_s"]), *(_cell(prof.get(k)) for k in PHASE_PARTS))
    run = results["profile"]
    t.caption = ("run: wall " + _cell(run["wall_s"]) + " = "
                 + ", ".join(f"{k[:-2]} {_cell(run[k])}" for k in (*RUN_PARTS, "other_s")))
    return t


__all__ = ["PHASE_PARTS", "RUN_PARTS", "TRACE_SKIP", "TRACE_STEPS", "PhaseProfile", "RunProfile",
           "check_profile", "profile_table", "start_trace", "stop_trace"]
