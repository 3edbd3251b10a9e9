"""Reading a sweep's rows: values per trial, groups over seeds, the ``sweep.md`` table
(keras-free; a pure function of ``rows.json``, also used by :mod:`kbench.studies`)."""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Callable, Sequence

from kbench.compare.tables import fmt


def value(row: dict, path: str):
    """The value at the dotted ``path`` of a row: ``point.<key>`` (the trial's setting;
    the key itself is dotted, e.g. ``point.recipe.name``), ``results.test_accuracy``,
    ``wall_time_s``, ... (``None`` when absent)."""
    if path.startswith("point."):
        return (row.get("point") or {}).get(path[len("point."):])
    cur = row
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def stats(values: Sequence[float | None]) -> dict:
    """Mean, sample standard deviation (0 for one value), min, max and count of the
    finite values (mean/std/min/max ``None`` when there are none)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "min": min(xs), "max": max(xs), "n": len(xs)}


def group(rows: Sequence[dict], keys: Sequence[str], metrics: dict[str, Callable[[dict], float | None]]) -> list[dict]:
    """Rows grouped by the values at ``keys`` (first-seen order), each group with
    ``completed``/``total`` trial counts, the failed trials' ids and errors, and
    :func:`stats` over its completed rows of every ``metrics[name](row)``."""
    groups: dict[str, dict] = {}
    for r in rows:
        ident = [value(r, k) for k in keys]
        g = groups.setdefault(json.dumps(ident, default=str),
                              {**dict(zip(keys, ident)), "rows": [], "total": 0, "failed": []})
        g["total"] += 1
        if r.get("status") == "completed":
            g["rows"].append(r)
        elif r.get("status") != "pending":
            g["failed"].append((r.get("trial"), r.get("status"), (r.get("error") or "").splitlines()[:1]))
    out = []
    for g in groups.values():
        done = g.pop("rows")
        g["completed"] = len(done)
        g.update({name: stats([f(r) for r in done]) for name, f in metrics.items()})
        out.append(g)
    return out


def pm(stat: dict, spec: str = ".4f") -> str:
    """``mean ± std (n=k)`` of a :func:`stats` dict (``mean (n=1)`` for one value, "-" when empty)."""
    if not stat or stat.get("mean") is None:
        return "-"
    if stat["n"] == 1:  # no spread to show: one value is not "± 0"
        return f"{fmt(stat['mean'], spec)} (n=1)"
    return f"{fmt(stat['mean'], spec)} ± {fmt(stat['std'], spec)} (n={stat['n']})"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table's lines."""
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header),
            *("| " + " | ".join(str(c) for c in r) + " |" for r in rows)]


SWEEP_METRICS = {"top1": lambda r: value(r, "results.test_accuracy"),
                 "wall": lambda r: r.get("wall_time_s") or value(r, "results.total_time_s")}


def failures(rows: Sequence[dict]) -> list[str]:
    """Markdown lines naming each trial that did not complete, with its first error line."""
    bad = [r for r in rows if r.get("status") not in ("completed", "pending")]
    lines = [f"- **{r['trial']}: {r['status']}** (attempt {r.get('attempt', 1)}): "
             f"{((r.get('error') or '').splitlines() or [''])[0]} (log: {r.get('log')})" for r in bad]
    return (["", "## Trials that did not complete", "", *lines]) if lines else []


def write_sweep_report(data: dict, out_dir: str) -> str:
    """``OUT/sweep.md``: per point and backend, trials completed, test top-1 and wall
    time (mean ± std over seeds), then every trial that failed with its error."""
    rows, sweep = data["rows"], data.get("sweep") or {}
    keys = [f"point.{k}" for k in dict.fromkeys(k for p in sweep.get("points") or [{}] for k in p)] + ["backend"]
    groups = group(rows, keys, SWEEP_METRICS)
    table = [[*(str(g[k]) for k in keys), f"{g['completed']}/{g['total']}", pm(g["top1"]), pm(g["wall"], ".1f")]
             for g in groups]
    header = [k.removeprefix("point.") for k in keys] + ["trials", "test top-1", "wall s"]
    pending = sum(r.get("status") == "pending" for r in rows)
    lines = [f"# Sweep: {sweep.get('name', 'sweep')}", "", f"Config `{sweep.get('config')}`, seeds "
             f"{sweep.get('seeds')}, backends {', '.join(sweep.get('backends') or [])}, overrides "
             f"`{' '.join(sweep.get('overrides') or []) or '(none)'}`; {len(rows)} trials"
             + (f", {pending} not run yet" if pending else "") + ".", "", *md_table(header, table), *failures(rows)]
    path = os.path.join(out_dir, "sweep.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path
