"""A sweep folder's records (keras-free): one JSON row per finished trial and the
rows file every report reads.

- ``OUT/trials/<trial id>.json``: the row of a trial that ended (completed, failed or
  interrupted), written atomically by the sweep driver as soon as Ray returns it; a
  rerun of the sweep skips the trials whose row says ``completed`` (and, unless
  ``--retry-failed``, those that ``failed``).
- ``OUT/rows.json``: ``{"format", "kbench", "sweep", "rows"}``: every trial of the
  current sweep in trial order, a trial not run yet as a ``pending`` row. Rewritten
  after every trial, so it is whole even when the driver is killed.
"""

from __future__ import annotations

import os

from kbench import __version__, subproc
from kbench.sweep.spec import Sweep, SweepError, Trial

ROWS_FORMAT = 1
ROWS_FILE = "rows.json"
TRIALS_DIR = "trials"
#: Trial statuses a rerun does not run again (``failed`` too unless --retry-failed).
FINISHED = ("completed",)


def stored_rows(out_dir: str) -> dict[str, dict]:
    """Trial id -> its stored row (rows that cannot be read are left out: rerun)."""
    folder = os.path.join(out_dir, TRIALS_DIR)
    rows = {}
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        row = subproc.read_json(os.path.join(folder, name)) if name.endswith(".json") else None
        if isinstance(row, dict) and row.get("trial"):
            rows[row["trial"]] = row
    return rows


def save_row(out_dir: str, row: dict) -> None:
    """Store a trial's row as ``OUT/trials/<id>.json`` (atomic)."""
    os.makedirs(os.path.join(out_dir, TRIALS_DIR), exist_ok=True)
    subproc.write_json(os.path.join(out_dir, TRIALS_DIR, f"{row['trial']}.json"), row, indent=1)


def pending_row(trial: Trial) -> dict:
    """The row of a trial that has not run (yet)."""
    return {"trial": trial.id, "point": dict(trial.point), "backend": trial.backend, "seed": trial.seed,
            "status": "pending", "error": None, "results": None, "metrics": []}


def plan(trials: list[Trial], stored: dict[str, dict], retry_failed: bool) -> list[tuple[Trial, int]]:
    """The trials to run now, each with its attempt number: those without a row,
    interrupted ones, and failed ones when ``retry_failed``."""
    todo = []
    for t in trials:
        row = stored.get(t.id)
        status = (row or {}).get("status")
        if status in FINISHED or (status == "failed" and not retry_failed):
            continue
        todo.append((t, int((row or {}).get("attempt") or 0) + 1))
    return todo


def write_rows(out_dir: str, sweep: Sweep, stored: dict[str, dict]) -> str:
    """Write ``OUT/rows.json`` for ``sweep`` from the stored rows; returns its path."""
    rows = [stored.get(t.id) or pending_row(t) for t in sweep.trials()]
    path = os.path.join(out_dir, ROWS_FILE)
    subproc.write_json(path, {"format": ROWS_FORMAT, "kbench": __version__, "sweep": sweep.describe(),
                              "rows": rows}, indent=1)
    return path


def load_rows(out_dir: str) -> dict:
    """``OUT/rows.json`` as written by :func:`write_rows`.

    Raises:
        SweepError: missing, unreadable, or of another format.
    """
    data = subproc.read_json(os.path.join(out_dir, ROWS_FILE))
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise SweepError(f"{os.path.join(out_dir, ROWS_FILE)!r} is missing or not a sweep rows file; "
                         "run the sweep first (python -m kbench.sweep ... --output DIR)")
    if data.get("format") != ROWS_FORMAT:
        raise SweepError(f"{out_dir!r}: rows format {data.get('format')!r}, this kbench reads {ROWS_FORMAT}")
    return data
