"""The cross-backend comparison report: a pure function of the rows that
:mod:`kbench.compare` stores in ``rows.json``.

:func:`summarize` turns the rows into one summary dict (written as ``compare.json``);
everything else renders that summary: :func:`rich_table` (terminal),
:func:`render_markdown` (``compare.md``), :func:`write_csv` (``compare.csv``, one row
per backend) and :func:`write_plots` (``curves.png``, ``throughput.png``,
``accuracy.png``, drawn with matplotlib's Agg backend). Nothing here runs a model,
imports a backend or reads the clock, so the same rows always give the same files.

Units: accuracy as a fraction (0.61 = 61 %), throughput in images/s, step times in
ms, warm-up in s, memory in MiB, compute in GFLOP/s, MFU as a fraction of the peak.
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from collections import Counter

from rich import box
from rich.console import Console
from rich.table import Table

REPORT_FORMAT = 1
FLAG_THRESHOLD = 0.02  # a backend's mean test accuracy this far from the others' mean is flagged
GAP_RATIO = 2.0  # throughput notes: fastest / slowest backend at least this
PLOTS = {"curves": "curves.png", "throughput": "throughput.png", "accuracy": "accuracy.png"}
FILES = ["compare.md", "compare.csv", "compare.json", *PLOTS.values()]
COLORS = {"jax": "tab:blue", "tensorflow": "tab:orange", "torch": "tab:red"}
CURVE_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")
CSV_FIELDS = ["backend", "runs", "completed", "failed", "test_accuracy_mean", "test_accuracy_std", "test_accuracy_n",
              "accuracy_delta_vs_others", "accuracy_flag", "test_loss_mean", "test_loss_std", "train_phase",
              "train_images_per_s", "inference_images_per_s", "step_time_ms_p50", "step_time_ms_p95",
              "first_steps_s", "peak_host_memory_mb", "peak_device_memory_mb", "train_gflops_per_s", "train_mfu",
              "inference_gflops_per_s", "inference_mfu", "errors"]


# ------------------------------------------------------------------ numbers
def _num(v) -> float | None:
    """A finite float, or ``None`` (missing, NaN, infinite, not a number)."""
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def mean_std(values) -> dict:
    """``{"mean", "std", "n"}`` of the finite values (others are dropped).

    ``std`` is the sample standard deviation (ddof=1), ``None`` for fewer than two
    values; ``mean`` is ``None`` for none.
    """
    xs = [x for x in (_num(v) for v in values) if x is not None]
    return {"mean": float(statistics.fmean(xs)) if xs else None,
            "std": float(statistics.stdev(xs)) if len(xs) >= 2 else None, "n": len(xs)}


def _mean(values) -> float | None:
    return mean_std(values)["mean"]


# ------------------------------------------------------------------ per run
def main_phase(results: dict) -> dict | None:
    """The phase whose training throughput represents the run: the last phase
    with a measured ``train_images_per_s`` (for ``fine_tune``: the fine-tuning phase)."""
    phases = [p for p in results.get("phases") or [] if _num(p.get("train_images_per_s")) is not None]
    return phases[-1] if phases else None


def run_summary(row: dict) -> dict:
    """Derived numbers of one stored row (test metrics, throughput of :func:`main_phase`,
    warm-up summed over phases, memory, GFLOP/s and MFU), ``None`` where unknown.

    Training GFLOP/s and MFU are only given for a phase that ran the whole network
    (no frozen-prefix cache): a cached phase skips the backbone below its cut, so
    whole-model FLOPs would overstate its work.
    """
    res = row.get("results") or {}
    ok = row.get("status") == "completed"
    phase = main_phase(res) if ok else None
    flops = row.get("flops") or {}
    peak = _num((row.get("peak") or {}).get("flops_per_s"))
    train_ips = _num(phase.get("train_images_per_s")) if phase else None
    infer_ips = _num(res.get("inference_images_per_s")) if ok else None
    f_train, f_infer = _num(flops.get("train_per_image")), _num(flops.get("inference_per_image"))
    cached = bool(phase and phase.get("cache_cut"))
    train_g = train_ips * f_train / 1e9 if train_ips and f_train and not cached else None
    infer_g = infer_ips * f_infer / 1e9 if infer_ips and f_infer else None
    warm = [_num(p.get("first_steps_s")) for p in res.get("phases") or []] if ok else []
    return {
        "backend": row.get("backend"), "seed": row.get("seed"), "status": row.get("status"),
        "error": row.get("error"), "exit_code": row.get("exit_code"),
        "test_accuracy": _num(res.get("test_accuracy")) if ok else None,
        "test_loss": _num(res.get("test_loss")) if ok else None,
        "train_phase": phase.get("phase") if phase else None,
        "train_cache_cut": phase.get("cache_cut") if phase else None,
        "train_images_per_s": train_ips, "inference_images_per_s": infer_ips,
        "step_time_ms_p50": _num(phase.get("step_time_ms_p50")) if phase else None,
        "step_time_ms_p95": _num(phase.get("step_time_ms_p95")) if phase else None,
        "first_steps_s": sum(w for w in warm if w is not None) if any(w is not None for w in warm) else None,
        "peak_host_memory_mb": _num(res.get("peak_host_memory_mb")) if ok else None,
        "peak_device_memory_mb": _num(res.get("peak_device_memory_mb")) if ok else None,
        "train_flops_per_image": f_train, "inference_flops_per_image": f_infer, "peak_flops_per_s": peak,
        "train_gflops_per_s": train_g, "train_mfu": train_g * 1e9 / peak if train_g and peak else None,
        "inference_gflops_per_s": infer_g, "inference_mfu": infer_g * 1e9 / peak if infer_g and peak else None,
        "epochs": res.get("epochs") if ok else None, "total_time_s": _num(res.get("total_time_s")),
        "wall_time_s": _num(row.get("wall_time_s")), "reused": bool(row.get("reused")),
        "run_dir": row.get("run_dir"), "log": row.get("log"),
    }


# ------------------------------------------------------------------ summary
def _backend_order(data: dict) -> list[str]:
    order = list(data.get("backends") or [])
    for r in data.get("rows", []):
        if r.get("backend") not in order:
            order.append(r.get("backend"))
    return order


def _curves(rows: list[dict]) -> dict:
    """Per-epoch means over seeds of loss, accuracy, val_loss, val_accuracy."""
    by_epoch: dict[int, list[dict]] = {}
    for r in rows:
        for m in r.get("metrics") or []:
            if m.get("epoch") is not None:
                by_epoch.setdefault(int(m["epoch"]), []).append(m)
    epochs = sorted(by_epoch)
    out = {"epoch": epochs, "phase": [Counter(m.get("phase") for m in by_epoch[e]).most_common(1)[0][0]
                                      for e in epochs]}
    for k in CURVE_KEYS:
        out[k] = [_mean(m.get(k) for m in by_epoch[e]) for e in epochs]
    return out


def _phase_table(backend: str, rows: list[dict]) -> list[dict]:
    names: list[str] = []
    for r in rows:
        for p in (r.get("results") or {}).get("phases") or []:
            if p.get("phase") not in names:
                names.append(p.get("phase"))
    out = []
    for name in names:
        ps = [p for r in rows for p in (r.get("results") or {}).get("phases") or [] if p.get("phase") == name]
        out.append({"backend": backend, "phase": name, "runs": len(ps),
                    "cache_cut": Counter(p.get("cache_cut") for p in ps).most_common(1)[0][0],
                    "epochs": _mean(p.get("epochs") for p in ps),
                    "train_images_per_s": mean_std(p.get("train_images_per_s") for p in ps),
                    "step_time_ms_p50": _mean(p.get("step_time_ms_p50") for p in ps),
                    "step_time_ms_p95": _mean(p.get("step_time_ms_p95") for p in ps),
                    "first_steps_s": _mean(p.get("first_steps_s") for p in ps),
                    "wall_time_s": _mean(p.get("wall_time_s") for p in ps)})
    return out


def _gap_notes(backends: list[dict]) -> list[str]:
    notes = []
    for key, label in (("train_images_per_s", "training"), ("inference_images_per_s", "inference")):
        vals = [(b["backend"], b[key]["mean"]) for b in backends if b[key]["mean"]]
        if len(vals) < 2:
            continue
        (slow, lo), (fast, hi) = min(vals, key=lambda v: v[1]), max(vals, key=lambda v: v[1])
        if hi / lo >= GAP_RATIO:
            notes.append(f"{label} throughput gap: {slow} {lo:.1f} images/s is {hi / lo:.1f}x below "
                         f"{fast} {hi:.1f} images/s")
    return notes


def summarize(data: dict, threshold: float = FLAG_THRESHOLD) -> dict:
    """The whole comparison from a ``rows.json`` dict (pure: same rows, same result).

    Per backend: runs / completed / failed counts; test accuracy and loss as
    ``{"mean", "std" (ddof=1), "n", "values"}`` over the completed seeds;
    ``accuracy_delta_vs_others`` (mean accuracy minus the mean of the other backends'
    means) and ``accuracy_flag`` (``|delta| > threshold``); means over seeds of train
    and inference images/s, step time p50/p95 ms, warm-up s (first two steps of every
    phase, summed), peak host/device memory MiB, GFLOP/s and MFU; and the errors of
    its failed runs. Also: per-run and per-phase tables, learning curves (per-epoch
    means over seeds), failed runs, notes (accuracy flags, throughput gaps, cached
    phases, missing FLOPs or peak), the environment fingerprint and the compute
    sources (FLOPs per image, peak FLOP/s).
    """
    rows = data.get("rows") or []
    runs = [run_summary(r) for r in rows]
    order = _backend_order(data)
    backends = []
    for b in order:
        rs = [r for r in runs if r["backend"] == b]
        ok = [r for r in rs if r["status"] == "completed"]
        acc = mean_std(r["test_accuracy"] for r in ok)
        acc["values"] = [r["test_accuracy"] for r in ok]
        loss = mean_std(r["test_loss"] for r in ok)
        loss["values"] = [r["test_loss"] for r in ok]
        entry = {"backend": b, "runs": len(rs), "completed": len(ok), "failed": len(rs) - len(ok),
                 "seeds_completed": [r["seed"] for r in ok], "test_accuracy": acc, "test_loss": loss,
                 "accuracy_delta_vs_others": None, "accuracy_flag": False,
                 "train_phase": Counter(r["train_phase"] for r in ok).most_common(1)[0][0] if ok else None,
                 "train_cache_cut": Counter(r["train_cache_cut"] for r in ok).most_common(1)[0][0] if ok else None}
        for key in ("train_images_per_s", "inference_images_per_s", "step_time_ms_p50", "step_time_ms_p95",
                    "first_steps_s", "peak_host_memory_mb", "peak_device_memory_mb", "train_gflops_per_s",
                    "train_mfu", "inference_gflops_per_s", "inference_mfu"):
            entry[key] = mean_std(r[key] for r in ok)
        entry["errors"] = [{"seed": r["seed"], "status": r["status"], "exit_code": r["exit_code"], "error": r["error"]}
                           for r in rs if r["status"] != "completed"]
        backends.append(entry)
    notes = []
    for e in backends:
        m = e["test_accuracy"]["mean"]
        others = [o["test_accuracy"]["mean"] for o in backends if o is not e and o["test_accuracy"]["mean"] is not None]
        if m is None or not others:
            continue
        delta = m - statistics.fmean(others)
        e["accuracy_delta_vs_others"] = delta
        e["accuracy_flag"] = abs(delta) > threshold
        if e["accuracy_flag"]:
            notes.append(f"accuracy flag: {e['backend']} mean test top-1 {m:.4f} is {delta * 100:+.2f} points from "
                         f"the other backends' mean {statistics.fmean(others):.4f} (threshold {threshold * 100:g})")
    notes += _gap_notes(backends)
    cached = sorted({(e["backend"], e["train_phase"], e["train_cache_cut"]) for e in backends if e["train_cache_cut"]})
    if cached:
        notes.append("training throughput of " + ", ".join(f"{b} phase {p}" for b, p, _ in cached)
                     + f" was measured on cached frozen-prefix features (cut {cached[0][2]!r}): the backbone below "
                     "the cut is not in those steps, so no training GFLOP/s or MFU is given")
    flops_info, peak_info = {}, None
    for r in rows:
        if r.get("status") != "completed":
            continue
        res, fl = r.get("results") or {}, r.get("flops") or {}
        if res.get("backbone"):
            flops_info.setdefault(f"{res['backbone']}@{res.get('image_size')}px", fl or None)
        peak_info = peak_info or r.get("peak")
    errs = {v.get("error") for v in flops_info.values() if v and v.get("error")}
    if any(v is None for v in flops_info.values()) or errs:
        notes.append("FLOPs per image unavailable" + (f": {sorted(errs)[0]}" if errs else ""))
    if rows and peak_info is not None and _num(peak_info.get("flops_per_s")) is None:
        notes.append("machine peak unavailable" + (f": {peak_info['error']}" if peak_info.get("error") else ""))
    env = dict(data.get("environment") or {})
    env["runs"] = {}
    for b in order:
        res = next((r.get("results") for r in rows if r.get("backend") == b and r.get("results")
                    and r["results"].get("versions")), None)
        if res:
            env["runs"][b] = {"device": res.get("device"), "versions": res.get("versions"),
                              "precision": res.get("precision")}
    first = next((r.get("results") for r in rows if r.get("status") == "completed"), None) or {}
    return {
        "format": REPORT_FORMAT, "created": data.get("created"), "command": data.get("command"),
        "config": data.get("config"), "overrides": data.get("overrides") or [], "seeds": data.get("seeds"),
        "workload": {k: first.get(k) for k in ("backbone", "image_size", "recipe", "precision", "batch_size",
                                               "num_train", "num_val", "num_test", "epochs")},
        "threshold": threshold, "backends": backends, "runs": runs,
        "phases": [p for b in order for p in _phase_table(b, [r for r in rows if r.get("backend") == b
                                                                 and r.get("status") == "completed"])],
        "curves": {b: _curves([r for r in rows if r.get("backend") == b and r.get("status") == "completed"])
                   for b in order},
        "failed": [{k: r[k] for k in ("backend", "seed", "status", "exit_code", "error", "log")}
                   for r in runs if r["status"] != "completed"],
        "compute": {"flops_per_image": flops_info,
                    "peak_flops_per_s": _num((peak_info or {}).get("flops_per_s")),
                    **{f"peak_{k}": (peak_info or {}).get(k) for k in ("dtype", "backend", "gflops_by_backend",
                                                                     "source", "method", "measured_at")}},
        "environment": env, "notes": notes, "files": FILES,
    }


# ------------------------------------------------------------------ formatting
def fmt(v, spec: str = ".4f") -> str:
    """``format(v, spec)``, or ``-`` for ``None``."""
    return "-" if v is None else format(v, spec)


def fmt_ms(stat: dict, spec: str = ".4f") -> str:
    """``mean ± std (n=N)``; ``mean (n=1)`` without a std; ``-`` without values."""
    if stat["mean"] is None:
        return "-"
    if stat["std"] is None:
        return f"{stat['mean']:{spec}} (n={stat['n']})"
    return f"{stat['mean']:{spec}} ± {stat['std']:{spec}} (n={stat['n']})"


def _giga(v) -> float | None:
    v = _num(v)
    return None if v is None else v / 1e9


def _pct(v, digits: int = 2) -> str:
    return "-" if v is None else f"{v * 100:.{digits}f}%"


def _acc_cell(b: dict) -> str:
    if not b["completed"]:
        return "failed" if b["failed"] else "-"
    return fmt_ms(b["test_accuracy"])


def _flag_cell(b: dict) -> str:
    d = b["accuracy_delta_vs_others"]
    if d is None:
        return "-"
    return f"{'FLAG ' if b['accuracy_flag'] else ''}{d * 100:+.2f} pt"


def _first_line(text: str | None) -> str:
    return (text or "").splitlines()[0] if text else ""


def _pm(stat: dict, spec: str) -> str:
    if stat["mean"] is None:
        return "-"
    return f"{stat['mean']:{spec}}" + (f"±{stat['std']:{spec}}" if stat["std"] is not None else "")


def rich_table(summary: dict) -> Table:
    """The terminal table: one row per backend (means over the completed seeds; ``ok``
    = completed/runs = the n of the mean ± std). Device memory only when measured."""
    w = summary["workload"]
    t = Table(title=f"kbench.compare · {w.get('backbone')} @ {w.get('image_size')}px · {w.get('recipe')} · "
                    f"seeds {', '.join(map(str, summary.get('seeds') or []))}", box=box.SIMPLE_HEAD,
              collapse_padding=True, pad_edge=False)
    device = any(b["peak_device_memory_mb"]["mean"] is not None for b in summary["backends"])
    cols = ["backend", "ok", "test top-1", "Δ pt", "test loss", "img/s tr/inf", "step ms p50/95", "warm s",
            "host MiB", *(["dev MiB"] if device else []), "MFU tr/inf"]
    for col in cols:
        t.add_column(col, justify="left" if col == "backend" else "right", no_wrap=True)
    for b in summary["backends"]:
        style = "red" if not b["completed"] else ("yellow" if b["accuracy_flag"] else None)
        t.add_row(b["backend"], f"{b['completed']}/{b['runs']}", _pm(b["test_accuracy"], ".4f") if b["completed"]
                  else _acc_cell(b), _flag_cell(b).replace(" pt", ""), _pm(b["test_loss"], ".3f"),
                  f"{fmt(b['train_images_per_s']['mean'], '.1f')}/{fmt(b['inference_images_per_s']['mean'], '.1f')}",
                  f"{fmt(b['step_time_ms_p50']['mean'], '.1f')}/{fmt(b['step_time_ms_p95']['mean'], '.1f')}",
                  fmt(b["first_steps_s"]["mean"], ".2f"), fmt(b["peak_host_memory_mb"]["mean"], ".0f"),
                  *([fmt(b["peak_device_memory_mb"]["mean"], ".0f")] if device else []),
                  f"{_pct(b['train_mfu']['mean'], 1)}/{_pct(b['inference_mfu']['mean'], 1)}", style=style)
    lines = [f"{f['backend']} seed {f['seed']} {f['status']}: {_first_line(f['error'])}" for f in summary["failed"]]
    t.caption = "\n".join(lines + summary["notes"]) or None
    return t


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    esc = [[str(c).replace("|", "\\|").replace("\n", " ") for c in r] for r in rows]
    return ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |",
            *("| " + " | ".join(r) + " |" for r in esc)]


def render_markdown(summary: dict) -> str:
    """``compare.md``: workload, accuracy, speed and memory, compute, per-phase and
    per-run tables, failed runs with their errors, notes, environment and plots."""
    w, env, comp = summary["workload"], summary["environment"], summary["compute"]
    out = ["# kbench cross-backend comparison", ""]
    out += [f"- config: `{summary.get('config')}`" + (f", overrides `{' '.join(summary['overrides'])}`"
                                                       if summary["overrides"] else ""),
            f"- workload: {w.get('backbone')} @ {w.get('image_size')}px, recipe {w.get('recipe')}, precision "
            f"{w.get('precision')}, batch {w.get('batch_size')}, {w.get('num_train')} train / {w.get('num_val')} val "
            f"/ {w.get('num_test')} test images, {w.get('epochs')} epoch(s)",
            f"- seeds: {', '.join(map(str, summary.get('seeds') or []))}; created {summary.get('created')}",
            f"- command: `{summary.get('command')}`" if summary.get("command") else "- command: -", ""]
    out += ["## Accuracy", "",
            f"Test top-1 accuracy and loss: mean ± sample std (ddof=1) over the completed seeds. "
            f"`vs others`: the backend's mean minus the mean of the other backends' means, in points; "
            f"FLAG beyond {summary['threshold'] * 100:g} points.", ""]
    out += _md_table(["backend", "completed/runs", "test top-1", "vs others", "test loss"],
                     [[b["backend"], f"{b['completed']}/{b['runs']}", _acc_cell(b), _flag_cell(b),
                       fmt_ms(b["test_loss"]) if b["completed"] else _acc_cell(b)] for b in summary["backends"]])
    out += ["", "## Speed and memory", "",
            "Means over seeds. Training: the last phase with a measured throughput (warm-up steps excluded); "
            "step time p50/p95 of that phase in ms; warm-up: seconds of the first two training steps "
            "(tracing/compilation) of every phase, summed. Inference: end to end on real test images "
            "(2 warm-up batches excluded). Memory: peak host RSS and peak device memory in MiB.", ""]
    out += _md_table(["backend", "train phase", "train images/s", "inference images/s", "step p50 ms",
                      "step p95 ms", "warm-up s", "peak host MiB", "peak device MiB"],
                     [[b["backend"], (b["train_phase"] or "-") + (f" (cached at {b['train_cache_cut']})"
                                                                  if b["train_cache_cut"] else ""),
                       fmt_ms(b["train_images_per_s"], ".1f"), fmt_ms(b["inference_images_per_s"], ".1f"),
                       fmt(b["step_time_ms_p50"]["mean"], ".1f"), fmt(b["step_time_ms_p95"]["mean"], ".1f"),
                       fmt(b["first_steps_s"]["mean"], ".2f"), fmt(b["peak_host_memory_mb"]["mean"], ".0f"),
                       fmt(b["peak_device_memory_mb"]["mean"], ".0f")] for b in summary["backends"]])
    peak = comp["peak_flops_per_s"]
    per = ", ".join(f"{b} {fmt(_num(g), '.1f')}" for b, g in (comp.get("peak_gflops_by_backend") or {}).items())
    out += ["", "## Compute", "",
            "Achieved GFLOP/s = images/s x FLOPs per image / 1e9; MFU = achieved / machine peak. FLOPs per image: "
            "`kbench.perf.model_flops_per_image` (analytic count of the backbone + head; training = 3 x forward). "
            f"Machine peak: {fmt(peak / 1e9 if peak else None, '.1f')} GFLOP/s {comp.get('peak_dtype') or ''}, the "
            f"highest measured matmul rate over the backends ({per or '-'} GFLOP/s; "
            f"{comp.get('peak_method') or 'kbench.perf.machine_peak'}; measured {comp.get('peak_measured_at') or '-'}).",
            ""]
    out += _md_table(["model", "GFLOPs/image inference", "GFLOPs/image training"],
                     [[k, fmt(_giga((v or {}).get("inference_per_image")), ".3f"),
                       fmt(_giga((v or {}).get("train_per_image")), ".3f")]
                      for k, v in comp["flops_per_image"].items()]) + [""]
    out += _md_table(["backend", "train GFLOP/s", "train MFU", "inference GFLOP/s", "inference MFU"],
                     [[b["backend"], fmt(b["train_gflops_per_s"]["mean"], ".2f"), _pct(b["train_mfu"]["mean"]),
                       fmt(b["inference_gflops_per_s"]["mean"], ".2f"), _pct(b["inference_mfu"]["mean"])]
                      for b in summary["backends"]])
    if summary["phases"]:
        out += ["", "## Phases", ""]
        out += _md_table(["backend", "phase", "runs", "cache cut", "epochs", "train images/s", "step p50 ms",
                          "step p95 ms", "warm-up s", "wall s"],
                         [[p["backend"], p["phase"], str(p["runs"]), p["cache_cut"] or "-", fmt(p["epochs"], ".0f"),
                           fmt_ms(p["train_images_per_s"], ".1f"), fmt(p["step_time_ms_p50"], ".1f"),
                           fmt(p["step_time_ms_p95"], ".1f"), fmt(p["first_steps_s"], ".2f"),
                           fmt(p["wall_time_s"], ".1f")] for p in summary["phases"]])
    out += ["", "## Runs", ""]
    out += _md_table(["backend", "seed", "status", "test top-1", "test loss", "train images/s", "inference images/s",
                      "wall s", "run folder / log"],
                     [[r["backend"], str(r["seed"]), r["status"] + (" (reused)" if r["reused"] else ""),
                       fmt(r["test_accuracy"]), fmt(r["test_loss"]), fmt(r["train_images_per_s"], ".1f"),
                       fmt(r["inference_images_per_s"], ".1f"), fmt(r["wall_time_s"], ".0f"),
                       f"`{r['run_dir'] or r['log']}`"] for r in summary["runs"]])
    if summary["failed"]:
        out += ["", "## Failed runs", ""]
        for f in summary["failed"]:
            out += [f"**{f['backend']} seed {f['seed']}: {f['status']}** (exit code {f['exit_code']}, "
                    f"log `{f['log']}`)", "", "```", (f["error"] or "").rstrip(), "```", ""]
    if summary["notes"]:
        out += ["", "## Notes", "", *(f"- {n}" for n in summary["notes"])]
    out += ["", "## Environment", ""]
    pk = env.get("packages") or {}
    out += [f"- CPU: {env.get('cpu')}, {env.get('cores')} logical cores, "
            f"{fmt(env.get('memory_gib'), '.1f')} GiB memory; GPU: {', '.join(env.get('gpus') or []) or 'none'}",
            f"- OS: {env.get('os')}; python {env.get('python')}",
            "- packages: " + ", ".join(f"{k} {v}" for k, v in pk.items() if v)]
    for b, info in env.get("runs", {}).items():
        dev = info.get("device") or {}
        vers = ", ".join(f"{k} {v}" for k, v in (info.get("versions") or {}).items())
        out.append(f"- {b} runs: {dev.get('type')} {dev.get('name')} ({dev.get('cores')} cores), precision "
                   f"{info.get('precision')}; {vers}")
    out += ["", "## Plots", "", f"![learning curves]({PLOTS['curves']})", "",
            f"![throughput]({PLOTS['throughput']})", "", f"![test accuracy]({PLOTS['accuracy']})", ""]
    return "\n".join(out)


def csv_rows(summary: dict) -> list[dict]:
    """``compare.csv`` rows: one per backend, columns :data:`CSV_FIELDS` (numbers unrounded)."""
    out = []
    for b in summary["backends"]:
        r = {"backend": b["backend"], "runs": b["runs"], "completed": b["completed"], "failed": b["failed"],
             "test_accuracy_mean": b["test_accuracy"]["mean"], "test_accuracy_std": b["test_accuracy"]["std"],
             "test_accuracy_n": b["test_accuracy"]["n"], "accuracy_delta_vs_others": b["accuracy_delta_vs_others"],
             "accuracy_flag": b["accuracy_flag"], "test_loss_mean": b["test_loss"]["mean"],
             "test_loss_std": b["test_loss"]["std"], "train_phase": b["train_phase"],
             "errors": " || ".join(f"seed {e['seed']}: {_first_line(e['error'])}" for e in b["errors"])}
        for k in CSV_FIELDS:
            if k not in r:
                r[k] = b[k]["mean"]
        out.append({k: ("" if r[k] is None else r[k]) for k in CSV_FIELDS})
    return out


def write_csv(summary: dict, path: str) -> None:
    """Write :func:`csv_rows` to ``path``."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows(csv_rows(summary))


# ------------------------------------------------------------------ plots
def _color(b: str, i: int) -> str:
    return COLORS.get(b, f"C{(i + 3) % 10}")


def write_plots(summary: dict, out_dir: str) -> list[str]:
    """Draw ``curves.png`` (train solid / validation dashed loss and accuracy per
    epoch, mean over seeds, all backends overlaid), ``throughput.png`` (train and
    inference images/s per backend, std error bars) and ``accuracy.png`` (test top-1
    mean ± std per backend, seeds as dots). Backends without a completed run are
    left out (a figure with no data says so). Returns the paths.

    Raises:
        ImportError: matplotlib is not installed (``pip install kbench[report]``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    paths = []
    backends = [b for b in summary["backends"] if b["completed"]]
    names = [b["backend"] for b in backends]
    title = f"{summary['workload'].get('backbone')} @ {summary['workload'].get('image_size')}px, " \
            f"{summary['workload'].get('recipe')}"

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for i, b in enumerate(summary["backends"]):
            c = summary["curves"].get(b["backend"]) or {}
            for key, style in ((metric, "-"), (f"val_{metric}", "--")):
                pts = [(e, v) for e, v in zip(c.get("epoch", []), c.get(key, [])) if v is not None]
                if pts:
                    ax.plot(*zip(*pts), style, marker="o", color=_color(b["backend"], i),
                            label=f"{b['backend']} {'val' if key.startswith('val') else 'train'}")
        ref = next((c for c in summary["curves"].values() if c.get("epoch")), {})
        for e0, e1, p0, p1 in zip(ref.get("epoch", []), ref.get("epoch", [])[1:], ref.get("phase", []),
                                  ref.get("phase", [])[1:]):
            if p0 != p1:  # a new phase starts: recompiled, maybe more of the backbone trainable
                ax.axvline((e0 + e1) / 2, color="gray", linestyle=":", linewidth=1)
                ax.text((e0 + e1) / 2, 1.0, f" {p1}", transform=ax.get_xaxis_transform(), va="top", fontsize=7,
                        color="gray")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} (mean over seeds)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no completed runs", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, PLOTS["curves"]))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "train_images_per_s", "training"),
                           (axes[1], "inference_images_per_s", "inference")):
        vals = [b[key]["mean"] or 0.0 for b in backends]
        errs = [b[key]["std"] or 0.0 for b in backends]
        if names:
            bars = ax.bar(names, vals, yerr=errs, capsize=4, color=[_color(n, i) for i, n in enumerate(names)])
            ax.bar_label(bars, labels=[fmt(b[key]["mean"], ".1f") for b in backends], fontsize=8)
        else:
            ax.text(0.5, 0.5, "no completed runs", ha="center", va="center", transform=ax.transAxes)
        ax.set_ylabel("images/s")
        sub = f" ({backends[0]['train_phase']})" if key.startswith("train") and backends else ""
        ax.set_title(f"{label} images/s{sub}")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, PLOTS["throughput"]))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, b in enumerate(backends):
        acc = b["test_accuracy"]
        ax.errorbar([i], [acc["mean"]], yerr=[acc["std"] or 0.0], fmt="o", capsize=6, markersize=8,
                    color=_color(b["backend"], i))
        ax.scatter([i] * len(acc["values"]), acc["values"], s=14, color="black", alpha=0.5, zorder=3)
    if names:
        ax.set_xticks(range(len(names)), names)
        ax.set_xlim(-0.6, len(names) - 0.4)
    else:
        ax.text(0.5, 0.5, "no completed runs", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("test top-1 accuracy")
    ax.set_title("test accuracy: mean ± std over seeds (dots: seeds)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, PLOTS["accuracy"]))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


# ------------------------------------------------------------------ all outputs
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
