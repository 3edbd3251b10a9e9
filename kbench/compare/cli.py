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
(:mod:`kbench.compare.report`) is a pure function of ``rows.json``.

The parent process never imports a backend: library versions come from
``importlib.metadata``. After the runs, one short probe subprocess per backend
looks up the FLOPs per image (``kbench.perf.model_flops_per_image``) and the
peak (``kbench.perf.machine_peak``: vendor's on a known GPU, else measured; cached by
kbench.perf); both are stored in every row (see
:func:`kbench.compare.env.annotate_compute`), so the report needs nothing but the
rows. One run and its row: :mod:`kbench.compare.run`.

Exit status: 0 when every run completed, 1 when at least one failed (the report is
still written), 2 on bad command-line input (one message, no traceback), 130 on
Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence

from kbench import BACKENDS, __version__, subproc
from kbench.compare.env import annotate_compute, environment
from kbench.compare.run import console, run_one

ROWS_FORMAT = 1
ROWS_FILE = "rows.json"


class UsageError(Exception):
    """Bad command-line input: :func:`main` prints the message and exits with status 2."""


# ------------------------------------------------------------------ inputs
def parse_backends(text: str) -> list[str]:
    """``"jax,tensorflow"`` -> ``["jax", "tensorflow"]`` (order kept, duplicates dropped).

    Raises:
        UsageError: empty list or a name not in :data:`kbench.BACKENDS`.
    """
    names = list(dict.fromkeys(b.strip().lower() for b in text.split(",") if b.strip()))
    if not names:
        raise UsageError(f"--backends is empty; give a comma-separated list of {', '.join(BACKENDS)}")
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


# ------------------------------------------------------------------ the whole comparison
def write_rows(out_dir: str, data: dict) -> str:
    """Write ``data`` to ``out_dir/rows.json`` atomically; returns the path."""
    path = os.path.join(out_dir, ROWS_FILE)
    subproc.write_json(path, data, indent=1)
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
    data = subproc.read_json(path)
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
    p.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated: {','.join(BACKENDS)} (default all)")
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
        parity = importlib.import_module("kbench.parity.cli")
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
    from kbench.compare import report

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

