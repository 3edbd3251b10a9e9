"""GPU check (issue 14 item 7): the default main job and a short bench on every installed
backend, with the GPU's utilisation sampled, in one summary; under 8 minutes on one GPU.

    python scripts/gpu_check.py --output gpu-check [--quick] [--backends torch,jax] \\
        -- --data.root DATA --model.weights WEIGHTS.h5

For each backend whose library is installed (``importlib.util.find_spec`` of jax,
torch, tensorflow: this process never imports them, nor keras) it runs, one after
the other, each in its own process with its output in ``<output>/logs/``:

1. the default main job, ``python -m kbench.run`` (VGG16 64 px fine_tune), with the
   arguments after ``--`` passed through and its run folder under
   ``<output>/runs/<backend>/``; ``--quick`` adds :data:`QUICK_ARGS` (fewer epochs
   and batches) before them;
2. a short ``python -m kbench.bench`` (:data:`BENCH_ARGS`: VGG16 and ResNet50, 64 px,
   batch 256, float32 and mixed_bfloat16, training, a few steps) into
   ``<output>/bench/<backend>/``.

During each run ``nvidia-smi --query-gpu=index,utilization.gpu,memory.used
--format=csv,noheader,nounits -lms 1000`` samples the GPU every second
(``utilization.gpu``: share of time a kernel ran, ``sm`` in ``nvidia-smi dmon``);
without nvidia-smi that is recorded and the runs go on. Each run has a time limit
(``--run-timeout``, ``--bench-timeout``, cut to keep the whole check within
``--budget`` s, default 450); a failed or stopped run is reported, never fatal.

Output: ``<output>/summary.json`` and ``summary.md``: date, machine (CPU, GPUs,
nvidia-smi), package versions and, per backend, wall time of each run, the main
job's results.json total_time_s, test top-1, per-phase train images/s and step p50
(head = first phase, block 5 = last), the bench's images/s, step p50 and MFU (with
its peak source, vendor or measured, see ``kbench.gpu_peaks``), and GPU
utilisation mean / p50 / max during each run. Exit status 0 when every run
succeeded, 1 otherwise. ``--dry-run`` writes the summary with the planned commands
and runs nothing.

On the project's device machine (one H100 or H200; torch and jax with CUDA there, no
keras, no TensorFlow; only the checkout and carried paths travel, see
/work/.library/device/README.md):

* here, once: the wheels the device lacks (keras, namex, optree, jsonargparse,
  docstring-parser; it has h5py, rich, ml-dtypes, pyyaml, opencv) in ``.whl/``, ignored
  through ``.git/info/exclude`` (``pip download --no-deps --only-binary=:all:
  --python-version 3.12 --platform manylinux2014_x86_64 -d .whl keras==3.15.1 ...``),
  and CIFAR-10 and the weights file in an ignored ``gpudata/``;
* one ``run`` naming ``.whl`` and ``gpudata`` in ``carry``, with a 540 s timeout::

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \\
      && export PYTHONPATH=/tmp/site && mkdir -p /tmp/d && tar -xzf gpudata/cifar10-jpg.tar.gz -C /tmp/d \\
      && python3 scripts/gpu_check.py --output /tmp/gpu -- --data.root /tmp/d/cifar10 \\
      --model.weights gpudata/vgg16.weights.h5; cp /tmp/gpu/summary.* $OUT/

  (at most 8 files come back from ``$OUT``, so copy the summary, not the whole folder).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

#: This checkout: its kbench is the one imported here and in the runs (put first on PYTHONPATH).
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kbench import host, subproc  # noqa: E402 - keras-free modules of this checkout

#: Backends in the order they run.
BACKENDS = ("jax", "torch", "tensorflow")
#: Added before the user's main-job arguments by ``--quick``: 2 + 1 epochs, capped batches.
QUICK_ARGS = ("--recipe.epochs", "2", "--recipe.fine_tune_epochs", "1", "--trainer.limit_train_batches", "200",
              "--trainer.limit_val_batches", "20", "--trainer.limit_test_batches", "50")
#: The short bench after each main job.
BENCH_ARGS = ("--models", "vgg16,resnet50", "--image-size", "64", "--batch-size", "256",
              "--precision", "float32,mixed_bfloat16", "--modes", "train", "--steps", "10", "--warmup", "2",
              "--repeats", "1")
SMI_QUERY = ("nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used", "--format=csv,noheader,nounits",
             "-lms", "1000")
#: Shortest time limit a run is started with; under it the run is skipped.
MIN_RUN_S = 30.0


# ------------------------------------------------------------------ GPU sampling
def start_sampler(path: str):
    """Start nvidia-smi sampling into ``path``; returns ``(process or None, error or None)``."""
    try:
        f = open(path, "w")  # noqa: SIM115 - closed by stop_sampler
        return subprocess.Popen(SMI_QUERY, stdout=f, stderr=subprocess.DEVNULL, text=True), None
    except OSError as e:
        return None, f"nvidia-smi not available ({e.strerror or e})"


def stop_sampler(proc) -> None:
    """Stop a sampler started by :func:`start_sampler` (and close its file)."""
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout:
        proc.stdout.close()


def gpu_stats(lines) -> dict | None:
    """Statistics of nvidia-smi lines (``"index, util %, memory MiB"`` or ``"util %, memory MiB"``)
    for the busiest GPU: ``gpu``, ``samples``, ``util_mean`` / ``util_p50`` / ``util_max`` (%),
    ``memory_used_mib_max``; ``None`` without samples."""
    per: dict[str, list[tuple[float, float]]] = {}
    width = None  # fields per line, from the first complete one (a cut-off last line has fewer)
    for line in lines:
        parts = [p.strip() for p in line.split(",")]
        try:
            vals = [float(p) for p in parts]
        except ValueError:
            continue  # "[N/A]", partial last line, error text
        width = width or len(vals)
        if len(vals) != width:
            continue
        if len(vals) == 3:
            per.setdefault(str(int(vals[0])), []).append((vals[1], vals[2]))
        elif len(vals) == 2:
            per.setdefault("0", []).append((vals[0], vals[1]))
    if not per:
        return None
    gpu, samples = max(per.items(), key=lambda kv: statistics.fmean(u for u, _ in kv[1]))
    util = [u for u, _ in samples]
    return {"gpu": gpu, "samples": len(util), "util_mean": round(statistics.fmean(util), 1),
            "util_p50": statistics.median(util), "util_max": max(util),
            "memory_used_mib_max": max(m for _, m in samples)}


# ------------------------------------------------------------------ reading results
def _newest(paths):
    paths = sorted(paths, key=lambda p: p.stat().st_mtime)
    return paths[-1] if paths else None


def main_job_summary(run_root: str) -> dict | None:
    """The figures of the newest ``results.json`` under ``run_root`` (``None`` if none):
    ``total_time_s``, ``test_accuracy``, ``precision``, ``device``, ``phases``
    (``phase``, ``train_images_per_s``, ``step_time_ms_p50``, ``wall_time_s``), ``head`` and
    ``block5`` (the first and last phase's images/s and step p50) and ``results_path``."""
    path = _newest(Path(run_root).glob("*/results.json"))
    if path is None:
        return None
    res = json.loads(path.read_text())
    phases = [{k: p.get(k) for k in ("phase", "train_images_per_s", "step_time_ms_p50", "wall_time_s")}
              for p in res.get("phases") or []]
    pick = (lambda p: {"phase": p["phase"], "images_per_s": p["train_images_per_s"],
                       "step_ms_p50": p["step_time_ms_p50"]}) if phases else None
    return {"total_time_s": res.get("total_time_s"), "test_accuracy": res.get("test_accuracy"),
            "precision": res.get("precision"), "device": res.get("device"), "status": res.get("status"),
            "phases": phases, "head": pick(phases[0]) if phases else None,
            "block5": pick(phases[-1]) if len(phases) > 1 else None, "results_path": str(path)}


def bench_summary(bench_dir: str) -> dict | None:
    """The rows of ``<bench_dir>/bench.json`` (``None`` if missing): per model and precision
    ``images_per_s``, ``step_ms_p50``, ``mfu`` (fraction), ``peak_gflops``, ``peak_source``,
    ``status``, ``error``; plus the worker's ``peaks`` per dtype."""
    path = Path(bench_dir) / "bench.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    keys = ("model", "precision", "mode", "status", "images_per_s", "step_ms_p50", "mfu", "peak_gflops",
            "peak_source", "error")
    rows = [{k: r.get(k) for k in keys} for r in data.get("rows") or []]
    peaks = {b: info.get("peaks") for b, info in (data.get("backends") or {}).items()}
    return {"rows": rows, "peaks": peaks}


# ------------------------------------------------------------------ running
def run_step(cmd: list[str], backend: str, log: str, timeout: float, smi: str | None) -> dict:
    """Run ``cmd`` on ``backend`` (:func:`kbench.subproc.run_logged`, own process group,
    SIGTERM then SIGKILL after ``timeout`` s) while sampling the GPU into ``smi``."""
    if timeout < MIN_RUN_S:
        return {"status": "skipped", "error": f"only {timeout:.0f} s left of the budget", "command": cmd}
    sampler, smi_error = start_sampler(smi) if smi else (None, "sampling off")
    try:
        path = os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))
        done = subproc.run_logged(cmd, log, env=subproc.backend_env(backend, {"PYTHONPATH": path}), timeout=timeout,
                                  grace_s=10,
                                  new_session=True, header=f"$ KERAS_BACKEND={backend} {' '.join(cmd)}\n",
                                  timeout_note=f"\ngpu_check: stopped after {timeout:.0f} s\n")
    finally:
        stop_sampler(sampler)
    status = "timeout" if done.timed_out else "ok" if done.returncode == 0 else "failed"
    err = None if status == "ok" else done.error or subproc.error_line(subproc.log_tail(log)) or f"exit {done.returncode}"
    gpu = gpu_stats(Path(smi).read_text().splitlines()) if sampler else None
    return {"status": status, "returncode": done.returncode, "wall_s": round(done.wall_s, 1), "timeout_s": timeout,
            "error": err, "log": log, "command": cmd, "gpu": gpu, "gpu_error": smi_error}


def plan(args, backends: list[str]) -> list[tuple[str, str, list[str]]]:
    """``(backend, "main"|"bench", command)`` of every run, in order."""
    steps = []
    for b in backends:
        if not args.skip_main:
            steps.append((b, "main", [sys.executable, "-m", "kbench.run", "--trainer.default_root_dir",
                                      os.path.join(args.output, "runs", b), "--trainer.name", "main",
                                      "--trainer.enable_progress_bar", "false",
                                      *(QUICK_ARGS if args.quick else ()), *args.main_args]))
        if not args.skip_bench:
            steps.append((b, "bench", [sys.executable, "-m", "kbench.bench", "--backends", b, *BENCH_ARGS,
                                       "--timeout", str(int(args.bench_timeout)),
                                       "--output", os.path.join(args.output, "bench", b)]))
    return steps


def run_all(args, backends: list[str], smi_ok: bool) -> dict:
    """Run :func:`plan`'s steps within ``args.budget`` seconds; returns ``{backend: {kind: result}}``.

    A step's limit is its ``--run-timeout`` / ``--bench-timeout``, cut to leave
    :data:`MIN_RUN_S` seconds for every later step."""
    steps = plan(args, backends)
    out: dict = {b: {} for b in backends}
    deadline = time.monotonic() + args.budget
    for i, (b, kind, cmd) in enumerate(steps):
        if args.dry_run:
            out[b][kind] = {"status": "planned", "command": cmd}
            continue
        left = deadline - time.monotonic() - MIN_RUN_S * (len(steps) - i - 1)
        limit = min(args.run_timeout if kind == "main" else args.bench_timeout, left)
        name = f"{kind}-{b}"
        print(f"gpu_check: {name}: {' '.join(cmd)} (limit {max(limit, 0):.0f} s)", flush=True)
        smi = os.path.join(args.output, "logs", f"{name}.smi.csv") if smi_ok else None
        res = run_step(cmd, b, os.path.join(args.output, "logs", f"{name}.log"), limit, smi)
        if res["status"] != "skipped":
            figures = (main_job_summary(os.path.join(args.output, "runs", b)) if kind == "main"
                       else bench_summary(os.path.join(args.output, "bench", b)))
            res["results" if kind == "main" else "bench"] = figures
        out[b][kind] = res
        print(f"gpu_check: {name}: {res['status']}" + (f" in {res['wall_s']} s" if "wall_s" in res else "")
              + (f" ({res['error']})" if res.get("error") else ""), flush=True)
    return out


# ------------------------------------------------------------------ summary
def build_summary(runs: dict, *, missing: list[str], env: dict, smi_error: str | None, wall_s: float,
                  budget_s: float) -> dict:
    """The ``summary.json`` object: ``date``, ``machine``, ``versions``, ``nvidia_smi``
    (``None`` when it worked, else why not), ``budget_s``, ``wall_s``, ``missing``
    (backends not installed) and ``backends`` (``{backend: {"main": ..., "bench": ...}}``
    as :func:`run_all` returns)."""
    machine = {k: env.get(k) for k in ("cpu", "cores", "memory_gib", "gpus", "os", "python")}
    machine["host"] = os.uname().nodename
    return {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine, "versions": env.get("packages"),
            "kbench": env.get("kbench"), "nvidia_smi": smi_error, "budget_s": budget_s, "wall_s": round(wall_s, 1),
            "missing": missing, "backends": runs}


def _f(v, spec: str = ".0f", scale: float = 1.0) -> str:
    return "-" if v is None else format(v * scale, spec)


def _gpu_cell(res: dict) -> str:
    g = res.get("gpu")
    return "-" if not g else f"{g['util_mean']:.0f} / {g['util_p50']:.0f} / {g['util_max']:.0f}"


def _phase_cell(p: dict | None) -> str:
    return "-" if not p else f"{_f(p['images_per_s'], ',.0f')} ({_f(p['step_ms_p50'], '.1f')})"


def summary_markdown(s: dict) -> str:
    """``summary.md``: the machine, one table for the main job and one for the bench."""
    m = s["machine"]
    lines = [f"# kbench GPU check, {s['date']}", "",
             f"- machine: {m.get('host')}; GPU {', '.join(m.get('gpus') or []) or 'none listed'}; "
             f"CPU {m.get('cpu')} ({m.get('cores')} cores)",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in (s.get("versions") or {}).items() if v),
             f"- wall {s['wall_s']:.0f} s of a {s['budget_s']:.0f} s budget"
             + (f"; not installed: {', '.join(s['missing'])}" if s["missing"] else "")
             + (f"; GPU sampling: {s['nvidia_smi']}" if s["nvidia_smi"] else ""), "",
             "## Main job (`python -m kbench.run`)", "",
             "| backend | status | wall s | total_time_s | test top-1 | head images/s (p50 ms) "
             "| block-5 images/s (p50 ms) | GPU util % mean / p50 / max |", "| --- " * 8 + "|"]
    for b, runs in s["backends"].items():
        r = runs.get("main")
        if not r:
            continue
        res = r.get("results") or {}
        lines.append(f"| {b} | {r['status']} | {_f(r.get('wall_s'))} | {_f(res.get('total_time_s'))} | "
                     f"{_f(res.get('test_accuracy'), '.4f')} | {_phase_cell(res.get('head'))} | "
                     f"{_phase_cell(res.get('block5'))} "
                     f"| {_gpu_cell(r)} |")
    lines += ["", "## Bench (`python -m kbench.bench`, train, 64 px, batch 256)", "",
              "| backend | model | precision | images/s | step p50 ms | MFU | peak (source) | GPU util % of the run |",
              "| --- " * 8 + "|"]
    for b, runs in s["backends"].items():
        r = runs.get("bench")
        for row in ((r or {}).get("bench") or {}).get("rows") or []:
            lines.append(f"| {b} | {row['model']} | {row['precision']} | {_f(row['images_per_s'], ',.0f')} | "
                         f"{_f(row['step_ms_p50'], '.1f')} | {_f(row['mfu'], '.1f', 100)}% | "
                         f"{_f(row['peak_gflops'], ',.0f', 1e-3)} TFLOP/s ({row.get('peak_source') or '-'}) | "
                         f"{_gpu_cell(r)} |")
    failed = [f"- {b} {k}: {r['status']}: {r.get('error')}" for b, runs in s["backends"].items()
              for k, r in runs.items() if r.get("status") not in ("ok", "planned")]
    lines += ["", "## Failures", ""] + (failed or ["- none"])
    return "\n".join(lines) + "\n"


def write_summary(s: dict, out_dir: str) -> tuple[str, str]:
    """Write ``summary.json`` and ``summary.md`` into ``out_dir``; returns their paths."""
    pj, pm = os.path.join(out_dir, "summary.json"), os.path.join(out_dir, "summary.md")
    subproc.write_json(pj, s, indent=2)
    Path(pm).write_text(summary_markdown(s))
    return pj, pm


# ------------------------------------------------------------------ command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Arguments; everything after ``--`` becomes ``main_args`` (passed to kbench.run)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    main_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", default=f"gpu-check-{time.strftime('%Y%m%d-%H%M%S')}", help="output folder")
    p.add_argument("--backends", default=None, help="comma-separated (default: every installed one)")
    p.add_argument("--quick", action="store_true", help="fewer epochs and batches in the main job (QUICK_ARGS)")
    p.add_argument("--budget", type=float, default=450.0, help="seconds for all runs together (default 450)")
    p.add_argument("--run-timeout", type=float, default=180.0, help="seconds per main job (default 180)")
    p.add_argument("--bench-timeout", type=float, default=100.0, help="seconds per bench (default 100)")
    p.add_argument("--skip-main", action="store_true", help="no main job")
    p.add_argument("--skip-bench", action="store_true", help="no bench")
    p.add_argument("--dry-run", action="store_true", help="write the summary with the planned commands only")
    args = p.parse_args(argv)
    args.main_args = main_args
    args.output = os.path.abspath(args.output)
    bad = [b for b in (args.backends or "").split(",") if b and b not in BACKENDS]
    if bad:
        p.error(f"--backends: unknown {', '.join(bad)}; choose from {', '.join(BACKENDS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the check; exit status 0 when every run succeeded (or was only planned), else 1."""
    args = parse_args(argv)
    wanted = args.backends.split(",") if args.backends else list(BACKENDS)
    installed = [b for b in wanted if host.is_installed(b)]
    missing = [b for b in wanted if b not in installed]
    if not host.is_installed("keras"):
        missing.append("keras (no backend can run)")
        installed = []
    os.makedirs(os.path.join(args.output, "logs"), exist_ok=True)
    probe, smi_error = start_sampler(os.path.join(args.output, "logs", "smi-probe.csv"))
    stop_sampler(probe)
    t0 = time.monotonic()
    runs = run_all(args, installed, smi_error is None)
    s = build_summary(runs, missing=missing, env=host.environment(), smi_error=smi_error,
                      wall_s=time.monotonic() - t0, budget_s=args.budget)
    pj, pm = write_summary(s, args.output)
    print(f"gpu_check: wrote {pj} and {pm}", flush=True)
    bad = [r for rs in runs.values() for r in rs.values() if r.get("status") not in ("ok", "planned")]
    return 1 if bad or not installed else 0


if __name__ == "__main__":
    sys.exit(main())
