"""The cross-backend comparison report: a pure function of the rows that
:mod:`kbench.compare` stores in ``rows.json``.

:func:`write_report` writes all of it. :func:`kbench.compare.summary.summarize` turns
the rows into one summary dict (written as ``compare.json``); everything else
renders that summary: :func:`kbench.compare.tables.rich_table` (terminal),
:func:`kbench.compare.tables.render_markdown` (``compare.md``),
:func:`kbench.compare.tables.write_csv` (``compare.csv``, one row per backend) and
:func:`kbench.compare.plots.write_plots` (``curves.png``, ``throughput.png``,
``accuracy.png``, drawn with matplotlib's Agg backend). Nothing here runs a model,
imports a backend or reads the clock, so the same rows always give the same files.

Units: accuracy as a fraction (0.61 = 61 %), throughput in images/s, step times in
ms, warm-up in s, memory in MiB, compute in GFLOP/s, MFU as a fraction of the peak.
"""

from __future__ import annotations

import json
import os

from rich.console import Console

from kbench.compare.plots import write_plots
from kbench.compare.summary import PLOTS, summarize
from kbench.compare.tables import render_markdown, rich_table, write_csv


def write_report(data: dict, out_dir: str, console: Console | None = None) -> dict:
    """Summarize ``data`` (a ``rows.json`` dict) and write ``compare.json``,
    ``compare.md``, ``compare.csv`` and the PNG plots into ``out_dir``; print the
    rich table to ``console`` when given. Returns the summary.

    Without matplotlib the plots are skipped with a message (the other files are
    still written).
    """
    os.makedirs(out_dir, exist_ok=True)
    summary = summarize(data)
    with open(os.path.join(out_dir, "compare.json"), "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    with open(os.path.join(out_dir, "compare.md"), "w") as f:
        f.write(render_markdown(summary))
    write_csv(summary, os.path.join(out_dir, "compare.csv"))
    try:
        write_plots(summary, out_dir)
    except ImportError:
        if console:
            console.print("[yellow]matplotlib not installed: plots skipped (pip install 'kbench[report]')")
    if console:
        console.print(rich_table(summary))
        console.print(f"report: {os.path.join(out_dir, 'compare.md')} (+ compare.csv, compare.json, "
                      f"{', '.join(PLOTS.values())})")
    return summary
