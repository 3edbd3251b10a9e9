"""Throughput bench: images/s, step times and MFU per model, size, batch, precision and backend.

    python -m kbench.bench --models vgg16,resnet50,mobilenetv2 --image-size 64 --batch-size 32 \\
        --backends jax,tensorflow,torch --precision float32,mixed_bfloat16 \\
        [--steps 20 --warmup 3 --repeats 3] [--modes train,inference] [--output DIR]
    python -m kbench.bench --report-only DIR     # rebuild the report from DIR/bench.json

The parent process starts one worker subprocess per backend (``KERAS_BACKEND``
set, ``XLA_PYTHON_CLIENT_PREALLOCATE=false``), one after the other so they do
not compete for the machine. Each worker measures every requested
model / image size / batch size / precision / mode on its backend and appends
one JSON row per measurement to a rows file; a worker that cannot start,
crashes or times out is recorded as failed with its error text, its missing
measurements become failed rows, and the other backends still report.

What one measurement does (:func:`kbench.bench.measure.measure_model`):

* a synthetic fixed batch: seeded random pixels in [0, 255] as float32
  ``(batch, size, size, 3)`` and integer labels in ``[0, num_classes)``;
* the model of ``kbench.models.build_model`` with ``weights="none"`` (random
  initialisation: speed does not depend on the weight values, and nothing is
  downloaded) and the ``gap`` head, built after setting the Keras dtype policy
  of the precision;
* training: ``model.compile(Adam, sparse categorical cross-entropy, accuracy,
  jit_compile)`` and ``model.train_on_batch``; inference: ``model.predict_on_batch``.
  Each step ends with its results on the host (the loss as a Python float and the
  logits bias fetched, or the predictions as NumPy), so asynchronous backends are
  timed to completion;
* ``--warmup`` steps first (tracing / compilation; their time is reported as
  ``compile_s``, not counted), then ``--repeats`` timed blocks of ``--steps``
  steps. images/s is reported as the median over repeats with min and max; step
  times (ms) as p50 and p95 over all timed steps;
* MFU from :mod:`kbench.perf`: FLOPs per image counted from the model's layers
  (training = 3 x forward) over the peak for the compute dtype (float32, or bfloat16 /
  float16 for the mixed policies): the vendor's dense peak on a GPU in
  :mod:`kbench.gpu_peaks`, else the measured matmul peak on the same backend.

The report (terminal table, ``bench.json``, ``bench.csv``, ``bench.md``) is a pure
function of the stored rows (:func:`kbench.bench.report.build_report`). It shows
every backend's images/s relative to the fastest backend for the same model /
size / batch / mode / precision and lists under "Findings" every gap larger than
3x, a mixed precision that is more than 3x slower than float32 on the same
backend, and every failure.

Exit status: 0 all measurements succeeded, 1 some failed (report still written),
2 bad command-line input (one message listing the valid values, no traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from kbench import BACKENDS, KbenchError, host, subproc
from kbench.bench.measure import MODES, PRECISIONS, ROW_KEYS, combos, failed_row, run_worker
from kbench.bench.report import build_report, findings, load_bench, render_table
from kbench.models.registry import BACKBONES, check_input_size

BENCH_FORMAT = 1


# --------------------------------------------------------------------------- parent


def _worker_argv(args, backend_name: str, rows_file: str) -> list[str]:
    argv = [sys.executable, "-m", "kbench.bench", "--worker", "--rows-file", rows_file,
            "--backends", backend_name, "--models", ",".join(args.models),
            "--image-size", ",".join(map(str, args.image_size)), "--batch-size", ",".join(map(str, args.batch_size)),
            "--precision", ",".join(args.precision), "--modes", ",".join(args.modes), "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--repeats", str(args.repeats), "--num-classes", str(args.num_classes),
            "--seed", str(args.seed), "--jit-compile", str(args.jit_compile).lower()]
    if args.no_peak:
        argv.append("--no-peak")
    if args.peak_file:
        argv += ["--peak-file", args.peak_file]
    return argv


def _read_rows(rows_file: str) -> tuple[list[dict], dict]:
    """The measurement rows of a worker's rows file and its environment record
    (``device``, ``versions``, ``peaks``, ``xla_flags``; empty when it wrote none). Lines cut short by
    a crash are skipped; a missing file gives ``([], {})``."""
    rows, env = [], {}
    try:
        with open(rows_file) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a crash
                if rec.pop("record", None) == "env":
                    env = {k: rec.get(k) for k in ("device", "versions", "peaks", "xla_flags")}
                else:
                    rows.append(rec)
    except OSError:
        pass
    return rows, env


def _fill_missing(args, backend_name: str, rows: list[dict], info: dict, log_file: str) -> list[dict]:
    """Set ``info["error"]`` for a worker that crashed, add a failed row (with that
    error) for every measurement it did not report, and set ``info["status"]``."""
    if info["error"] is None and info["returncode"] not in (0, 1):
        try:
            with open(log_file, errors="replace") as f:
                text = f.read()
        except OSError:
            text = ""
        info["error"] = f"worker exited with status {info['returncode']}: {subproc.error_line(text)}"
    done = {tuple(r.get(k) for k in ROW_KEYS[1:]) for r in rows}
    missing = [c for c in combos(args) if tuple(c[k] for k in ROW_KEYS[1:]) not in done]
    if missing:
        info["error"] = info["error"] or f"worker exited with status {info['returncode']} before reporting"
        rows = rows + [failed_row(backend_name, c, info["error"]) for c in missing]
    if info["error"] or any(r["status"] != "ok" for r in rows):
        info["status"] = "failed"
    return rows


def run_backend(args, backend_name: str, out_dir: str, echo=print) -> tuple[list[dict], dict]:
    """Run one backend's worker subprocess (:func:`kbench.subproc.run_logged`, its own
    session, killed after ``args.timeout`` s); returns ``(rows, info)``.

    ``info``: ``status`` (``ok`` / ``failed``), ``returncode``, ``error``, ``wall_s``,
    ``log`` (file name), and the worker's ``device``, ``versions`` and ``peaks``.
    Measurements the worker did not report come back as failed rows with its error.
    The worker's ``[bench]`` progress lines go to ``echo``.
    """
    logs = os.path.join(out_dir, "logs")
    os.makedirs(logs, exist_ok=True)
    rows_file = os.path.join(logs, f"{backend_name}.rows.jsonl")
    log_file = os.path.join(logs, f"{backend_name}.log")
    if os.path.exists(rows_file):
        os.remove(rows_file)
    info: dict = {"status": "ok", "returncode": None, "error": None, "log": os.path.relpath(log_file, out_dir)}
    done = subproc.run_logged(_worker_argv(args, backend_name, rows_file), log_file,
                              env=subproc.backend_env(backend_name), timeout=args.timeout, new_session=True,
                              on_line=lambda line: echo(line) if line.startswith("[bench]") else None)
    info["returncode"] = done.returncode
    if done.error:
        info["error"] = f"cannot start the worker: {done.error}"
    elif done.timed_out:
        info["error"] = f"timed out after {args.timeout:g} s (worker killed)"
    info["wall_s"] = done.wall_s
    rows, env = _read_rows(rows_file)
    info.update(env)
    return _fill_missing(args, backend_name, rows, info, log_file), info


def environment() -> dict:
    """The parent's environment fingerprint, without importing any backend (from
    :func:`kbench.host.environment`): CPU model and cores, load average, platform and
    installed versions of python, keras, jax, jaxlib, tensorflow, torch, numpy and
    opencv (``None`` when not installed). Per-backend device and imported versions come
    from the workers (``bench.json`` ``backends``)."""
    env = host.environment()
    packages = {k: v for k, v in env["packages"].items() if k not in ("matplotlib", "kbench")}
    return {"cpu": env["cpu"], "cores": env["cores"], "load_average_at_start": env["load_average"],
            "platform": env["os"], "kbench": env["kbench"], "versions": {"python": env["python"], **packages}}


# --------------------------------------------------------------------------- CLI


def _list(valid: tuple[str, ...] | None, what: str):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise KbenchError(f"empty {what} list")
        if valid is not None:
            for t in items:
                if t not in valid:
                    raise KbenchError(f"unknown {what} {t!r}; choose from: {', '.join(valid)}")
        return list(dict.fromkeys(items))
    return parse


def _ints(what: str):
    def parse(text: str) -> list[int]:
        try:
            vals = [int(t) for t in text.split(",") if t.strip()]
        except ValueError:
            raise KbenchError(f"{what} must be positive integers separated by commas, got {text!r}") from None
        if not vals or min(vals) < 1:
            raise KbenchError(f"{what} must be positive integers separated by commas, got {text!r}")
        return list(dict.fromkeys(vals))
    return parse


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kbench.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="vgg16,resnet50,mobilenetv2", help="comma-separated registry backbones")
    p.add_argument("--image-size", default="64", help="input side(s) in pixels, comma-separated")
    p.add_argument("--batch-size", default="32", help="batch size(s), comma-separated")
    p.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated, from {', '.join(BACKENDS)}")
    p.add_argument("--precision", default="float32", help=f"comma-separated, from {', '.join(PRECISIONS)}")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {', '.join(MODES)}")
    p.add_argument("--steps", type=int, default=20, help="timed steps per repeat (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps, compilation included (default 3)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (default 3)")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jit-compile", default="auto", choices=("auto", "true", "false"),
                   help="passed to keras Model.compile (default auto)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per backend worker (default 3600)")
    p.add_argument("--output", default=None, help="output folder (default bench-<timestamp>/)")
    p.add_argument("--no-peak", action="store_true", help="skip the matmul peak probe (no MFU)")
    p.add_argument("--peak-file", default=None, help="peak store (default $KBENCH_CACHE_DIR/peak.json)")
    p.add_argument("--report-only", metavar="DIR", default=None, help="rebuild the report from DIR/bench.json")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--rows-file", default=None, help=argparse.SUPPRESS)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and validate the command line.

    Raises:
        KbenchError: unknown model, backend, precision or mode, bad sizes or counts,
            or an image size below a model's minimum (the message lists the valid values).
    """
    args = _parser().parse_args(argv)
    if args.report_only:
        return args
    args.backends = _list(BACKENDS, "backend")(args.backends)
    args.precision = _list(PRECISIONS, "precision")(args.precision)
    args.modes = _list(MODES, "mode")(args.modes)
    args.image_size = _ints("--image-size")(args.image_size)
    args.batch_size = _ints("--batch-size")(args.batch_size)
    for name, v, lo in (("--steps", args.steps, 1), ("--repeats", args.repeats, 1), ("--warmup", args.warmup, 0),
                        ("--num-classes", args.num_classes, 2)):
        if v < lo:
            raise KbenchError(f"{name} must be at least {lo}, got {v}")
    if args.timeout <= 0:
        raise KbenchError(f"--timeout must be positive, got {args.timeout:g}")
    args.jit_compile = {"auto": "auto", "true": True, "false": False}[str(args.jit_compile).lower()]
    args.models = _list(tuple(BACKBONES), "model")(args.models)
    for m in args.models:
        for s in args.image_size:
            check_input_size(BACKBONES[m], s)
    if args.worker and not args.rows_file:
        raise KbenchError("--worker needs --rows-file")
    return args


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status (0 ok, 1 some measurement failed, 2 bad input)."""
    from rich.console import Console
    from rich.markup import escape

    console = Console(width=None if sys.stdout.isatty() else 150)
    try:
        args = parse_args(argv)
        if args.worker:
            return run_worker(args)
        if args.report_only:
            data = load_bench(args.report_only)
            paths = build_report(data, args.report_only)
            console.print(render_table(data))
            for f in findings(data["rows"]):
                console.print(f"[bold]finding:[/] {f}")
            console.print(f"report rebuilt: {paths['md']}")
            return 0 if all(r.get("status") == "ok" for r in data["rows"]) else 1
    except KbenchError as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
        return 2
    out_dir = args.output or f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        console.print(f"[bold red]error:[/] cannot create output folder {out_dir!r} ({e.strerror})")
        return 2
    data = {"format": BENCH_FORMAT, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": "python -m kbench.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
            "settings": {k: getattr(args, k) for k in ("models", "image_size", "batch_size", "backends", "precision",
                                                        "modes", "steps", "warmup", "repeats", "num_classes", "seed",
                                                        "jit_compile", "timeout")},
            "environment": environment(), "backends": {}, "rows": []}
    for b in args.backends:
        console.print(f"[bold]{b}[/]: starting worker")
        rows, info = run_backend(args, b, out_dir, echo=lambda s: console.print(s, highlight=False, markup=False))
        data["rows"] += rows
        data["backends"][b] = info
        if info["error"]:
            console.print(f"[bold red]{b} failed:[/] {info['error']}", highlight=False)
        build_report(data, out_dir)  # partial report after every backend
    paths = build_report(data, out_dir)
    console.print(render_table(data))
    for f in findings(data["rows"]):
        console.print(f"[bold]finding:[/] {f}", highlight=False)
    console.print(f"wrote {paths['json']}, {paths['csv']}, {paths['md']}")
    return 0 if all(r.get("status") == "ok" for r in data["rows"]) else 1

