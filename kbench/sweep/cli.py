"""``python -m kbench.sweep``: a grid of ``kbench.run`` trials on several backends and
seeds, dispatched through Ray, resumable, gathered into one rows file.

    python -m kbench.sweep --config configs/fine_tune.yaml \\
        --grid 'recipe.name=[feature_extraction,fine_tune,scratch]' \\
        --grid 'data.max_train_per_class=[10,50,250,1000]' --seeds 3 --backends jax,torch \\
        --output sweeps/data -- --data.root data/cifar10
    python -m kbench.sweep --sweep my_sweep.yaml            # the same as a YAML file
    python -m kbench.sweep --report-only sweeps/data        # sweep.md again from rows.json
    RAY_ADDRESS=ray://head:10001 python -m kbench.sweep ... # on a Ray cluster (or --address)

Every trial (point x backend x seed) is one ``python -m kbench.run --config FILE
--trainer.seed S --trainer.default_root_dir OUT/runs/<trial> --KEY VALUE ...`` process
with ``KERAS_BACKEND`` set (:mod:`kbench.sweep.trial`), one Ray task declaring
``--cpus-per-trial`` / ``--gpus-per-trial`` (:mod:`kbench.sweep.engine`). Every
trial's config is checked in this process before anything starts. Rerunning the same
command continues the sweep: completed trials are kept, interrupted ones resume from
their checkpoint, failed ones are kept with their error and run again only with
``--retry-failed``. Output: ``OUT/rows.json`` (every trial), ``OUT/sweep.md``,
``OUT/trials/<id>.json``, ``OUT/logs/``, ``OUT/runs/``.

A sweep file (``--sweep FILE``) holds ``config``, ``grid`` (key: [values]),
``points`` (a list of settings, each crossed with the grid), ``seeds``,
``backends``, ``overrides`` (list of options or a key: value mapping) and ``name``;
command-line options given as well take precedence (``--grid`` adds axes).

Exit status: 0 every trial completed, 1 a trial failed (the rest still ran and
report), 2 bad input (one message), 130 Ctrl-C (rows so far are kept; rerun to go on).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

from rich.console import Console
from rich.markup import escape

from kbench import BACKENDS
from kbench.sweep import engine, report, store
from kbench.sweep.spec import (
    Sweep,
    SweepError,
    Trial,
    combine_points,
    load_sweep_file,
    parse_backends,
    parse_grid,
    parse_seeds,
    read_config_text,
)

console = Console() if Console().is_terminal else Console(width=120)


def default_backend() -> str:
    """``KERAS_BACKEND`` if set, else the first of :data:`kbench.BACKENDS` installed here."""
    env = os.environ.get("KERAS_BACKEND")
    if env:
        return env
    return next((b for b in BACKENDS if importlib.util.find_spec(b)), BACKENDS[0])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kbench.sweep", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="kbench.run config file of every trial")
    p.add_argument("--sweep", help="YAML sweep file (config, grid, points, seeds, backends, overrides, name)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=[v1,v2]", help="one axis of the grid")
    p.add_argument("--seeds", help="count (3 -> 0,1,2) or list (0,5); default 1")
    p.add_argument("--backends", help=f"comma-separated, of {', '.join(BACKENDS)}; default KERAS_BACKEND")
    p.add_argument("--output", help="sweep folder (default sweeps/<config name>); rerun to continue")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray instance)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs each trial declares (default 1)")
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="GPUs each trial declares (default 0)")
    p.add_argument("--retry-failed", action="store_true", help="run failed trials again")
    p.add_argument("--max-retries", type=int, default=1, help="Ray retries of a trial whose worker died")
    p.add_argument("--timeout", type=float, help="seconds a trial may run before it is stopped (checkpointed)")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep completed trials' checkpoints (default: deleted once a trial completes; 100-250 MB each)")
    p.add_argument("--dry-run", action="store_true", help="list the trials and what would run, run nothing")
    p.add_argument("--report-only", metavar="DIR", help="rewrite DIR/sweep.md from DIR/rows.json")
    p.add_argument("overrides", nargs="*", help="after --: kbench.run options for every trial")
    return p


def sweep_from_args(args: argparse.Namespace) -> Sweep:
    """The :class:`~kbench.sweep.spec.Sweep` of the command line (and ``--sweep`` file).

    Raises:
        SweepError: no config, bad grid, seeds, backends or sweep file.
    """
    data = load_sweep_file(args.sweep) if args.sweep else {"grid": [], "points": [], "overrides": []}
    config = args.config or data.get("config")
    if not config:
        raise SweepError("no config: pass --config FILE (a kbench.run YAML config) or a --sweep file with config:")
    axes = [*data["grid"], *(parse_grid(g) for g in args.grid)]
    seeds = parse_seeds(args.seeds or data.get("seeds") or 1)
    backends = parse_backends(args.backends or data.get("backends") or default_backend())
    name = data.get("name") or os.path.splitext(os.path.basename(config))[0]
    return Sweep(config, read_config_text(config), combine_points(axes, data["points"]), seeds, backends,
                 [*data["overrides"], *args.overrides], name)


def check_trials(sweep: Sweep) -> None:
    """Parse every point's ``kbench.run`` options here (no backend imported), as the
    trials will, so a typo fails before any trial starts.

    Raises:
        SweepError: names the point whose options are invalid (the reason is printed above).
    """
    from kbench.config import parse

    for t in (Trial("", 0, p) for p in sweep.points):  # every point once (seed and backend do not matter here)
        try:
            parse(["--config", sweep.config, *sweep.overrides, *t.overrides()])
        except SystemExit as e:
            if e.code not in (0, None):
                raise SweepError(f"the options of point {t.point} are invalid with --config {sweep.config!r} "
                                 f"(see the message above); fix the grid or the overrides") from None


def show_row(row: dict, done: int, total: int) -> None:
    """Print one line for a finished trial: ``[k/n] <id>: <status> ...`` with its test
    top-1 and time, or the error (the log holds the rest)."""
    acc = (row.get("results") or {}).get("test_accuracy")
    wall = f" in {row['wall_time_s']:.1f} s" if row.get("wall_time_s") else (" (reused)" if row.get("reused") else "")
    if row["status"] == "completed" and acc is not None:
        what = f"test top-1 {acc:.4f}{wall}"
    else:
        error = (row.get("error") or "").split("\n--- last lines")[0].replace("\n", " ")
        what = f"after{wall.removeprefix(' in') or ' 0 s'}: {error} (log: {row.get('log')})"
    color = "green" if row["status"] == "completed" else "red"
    console.print(f"[{done}/{total}] {escape(row['trial'])}: [{color}]{row['status']}[/] {escape(what)}",
                  highlight=False)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.report_only:
            print(report.write_sweep_report(store.load_rows(args.report_only), args.report_only))
            return 0
        sweep = sweep_from_args(args)
        check_trials(sweep)
        out = args.output or os.path.join("sweeps", sweep.name)
        stored = store.stored_rows(out)
        todo = store.plan(sweep.trials(), stored, args.retry_failed)
        kept = sum((stored.get(t.id) or {}).get("status") == "failed" for t in sweep.trials())
        console.print(f"sweep {sweep.name}: {len(sweep.trials())} trials ({len(sweep.points)} points x "
                      f"{len(sweep.backends)} backends x {len(sweep.seeds)} seeds), {len(todo)} to run, into {out}"
                      + (f" ({kept} failed trial(s) kept as they are: --retry-failed runs them again)"
                         if kept and not args.retry_failed else ""), highlight=False)
        if args.dry_run:
            for t, attempt in todo:
                console.print(f"  {t.id} (attempt {attempt}): KERAS_BACKEND={t.backend} {' '.join(t.overrides())}",
                              highlight=False)
            return 0
        data = engine.run_sweep(sweep, out, address=args.address, num_cpus=args.num_cpus,
                                cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                                retry_failed=args.retry_failed, timeout_s=args.timeout,
                                max_retries=args.max_retries, keep_checkpoints=args.keep_checkpoints,
                                on_row=show_row)
    except SweepError as e:
        print(f"kbench.sweep: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kbench.sweep: interrupted; finished trials are stored, rerun the same command to go on",
              file=sys.stderr)
        return 130
    path = report.write_sweep_report(data, out)
    bad = [r for r in data["rows"] if r["status"] != "completed"]
    console.print(f"{len(data['rows']) - len(bad)}/{len(data['rows'])} trials completed; rows: "
                  f"{os.path.join(out, store.ROWS_FILE)}, report: {path}")
    return 1 if bad else 0
