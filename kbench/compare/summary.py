"""The numbers of the cross-backend comparison report: one summary dict from ``rows.json``.

:func:`summarize` turns the rows that :mod:`kbench.compare` stores into the summary
that :mod:`kbench.compare.report` writes as ``compare.json`` and that every table and plot
renders: per-run figures (:func:`run_summary`), per-backend means and sample
standard deviations over seeds (:func:`mean_std`), per-phase tables, learning
curves, failed runs and notes. Pure: the same rows always give the same summary.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter

REPORT_FORMAT = 1
FLAG_THRESHOLD = 0.02  # a backend's mean test accuracy this far from the others' mean is flagged
GAP_RATIO = 2.0  # throughput notes: fastest / slowest backend at least this
PLOTS = {"curves": "curves.png", "throughput": "throughput.png", "accuracy": "accuracy.png"}
FILES = ["compare.md", "compare.csv", "compare.json", *PLOTS.values()]
CURVE_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


# ------------------------------------------------------------------ numbers
def finite_float(v) -> float | None:
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
    xs = [x for x in (finite_float(v) for v in values) if x is not None]
    return {"mean": float(statistics.fmean(xs)) if xs else None,
            "std": float(statistics.stdev(xs)) if len(xs) >= 2 else None, "n": len(xs)}


def _mean(values) -> float | None:
    return mean_std(values)["mean"]


# ------------------------------------------------------------------ per run
def main_phase(results: dict) -> dict | None:
    """The phase whose training throughput represents the run: the last phase
    with a measured ``train_images_per_s`` (for ``fine_tune``: the fine-tuning phase)."""
    phases = [p for p in results.get("phases") or [] if finite_float(p.get("train_images_per_s")) is not None]
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
    peak = finite_float((row.get("peak") or {}).get("flops_per_s"))
    train_ips = finite_float(phase.get("train_images_per_s")) if phase else None
    infer_ips = finite_float(res.get("inference_images_per_s")) if ok else None
    f_train, f_infer = finite_float(flops.get("train_per_image")), finite_float(flops.get("inference_per_image"))
    cached = bool(phase and phase.get("cache_cut"))
    train_g = train_ips * f_train / 1e9 if train_ips and f_train and not cached else None
    infer_g = infer_ips * f_infer / 1e9 if infer_ips and f_infer else None
    warm = [finite_float(p.get("first_steps_s")) for p in res.get("phases") or []] if ok else []
    return {
        "backend": row.get("backend"), "seed": row.get("seed"), "status": row.get("status"),
        "error": row.get("error"), "exit_code": row.get("exit_code"),
        "test_accuracy": finite_float(res.get("test_accuracy")) if ok else None,
        "test_loss": finite_float(res.get("test_loss")) if ok else None,
        "train_phase": phase.get("phase") if phase else None,
        "train_cache_cut": phase.get("cache_cut") if phase else None,
        "train_images_per_s": train_ips, "inference_images_per_s": infer_ips,
        "step_time_ms_p50": finite_float(phase.get("step_time_ms_p50")) if phase else None,
        "step_time_ms_p95": finite_float(phase.get("step_time_ms_p95")) if phase else None,
        "first_steps_s": sum(w for w in warm if w is not None) if any(w is not None for w in warm) else None,
        "peak_host_memory_mb": finite_float(res.get("peak_host_memory_mb")) if ok else None,
        "peak_device_memory_mb": finite_float(res.get("peak_device_memory_mb")) if ok else None,
        "train_flops_per_image": f_train, "inference_flops_per_image": f_infer, "peak_flops_per_s": peak,
        "train_gflops_per_s": train_g, "train_mfu": train_g * 1e9 / peak if train_g and peak else None,
        "inference_gflops_per_s": infer_g, "inference_mfu": infer_g * 1e9 / peak if infer_g and peak else None,
        "epochs": res.get("epochs") if ok else None, "total_time_s": finite_float(res.get("total_time_s")),
        "wall_time_s": finite_float(row.get("wall_time_s")), "reused": bool(row.get("reused")),
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


def _backend_entry(backend: str, runs: list[dict]) -> dict:
    """The per-backend part of :func:`summarize` from that backend's :func:`run_summary` rows."""
    rs = [r for r in runs if r["backend"] == backend]
    ok = [r for r in rs if r["status"] == "completed"]
    acc = mean_std(r["test_accuracy"] for r in ok)
    acc["values"] = [r["test_accuracy"] for r in ok]
    loss = mean_std(r["test_loss"] for r in ok)
    loss["values"] = [r["test_loss"] for r in ok]
    entry = {"backend": backend, "runs": len(rs), "completed": len(ok), "failed": len(rs) - len(ok),
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
    return entry


def _flag_accuracy(backends: list[dict], threshold: float) -> list[str]:
    """Set each entry's ``accuracy_delta_vs_others`` and ``accuracy_flag`` in place; the notes of the flags."""
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
    return notes


def _cache_notes(backends: list[dict]) -> list[str]:
    cached = sorted({(e["backend"], e["train_phase"], e["train_cache_cut"]) for e in backends if e["train_cache_cut"]})
    if not cached:
        return []
    return ["training throughput of " + ", ".join(f"{b} phase {p}" for b, p, _ in cached)
            + f" was measured on cached frozen-prefix features (cut {cached[0][2]!r}): the backbone below "
            "the cut is not in those steps, so no training GFLOP/s or MFU is given"]


def _compute(rows: list[dict]) -> tuple[dict, list[str]]:
    """The ``compute`` part of :func:`summarize` (FLOPs per image per model, the peak) and its notes."""
    flops_info, peak_info, notes = {}, None, []
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
    if rows and peak_info is not None and finite_float(peak_info.get("flops_per_s")) is None:
        notes.append("machine peak unavailable" + (f": {peak_info['error']}" if peak_info.get("error") else ""))
    compute = {"flops_per_image": flops_info, "peak_flops_per_s": finite_float((peak_info or {}).get("flops_per_s")),
               **{f"peak_{k}": (peak_info or {}).get(k) for k in ("dtype", "backend", "gflops_by_backend",
                                                                "source", "method", "measured_at",
                                                                "measured_gflops_by_backend")},
               "peak_kind": (peak_info or {}).get("peak_source")}
    return compute, notes


def _environment(data: dict, order: list[str]) -> dict:
    """The stored environment fingerprint plus, per backend, the device, versions and
    precision of its first run that reported them."""
    rows = data.get("rows") or []
    env = dict(data.get("environment") or {})
    env["runs"] = {}
    for b in order:
        res = next((r.get("results") for r in rows if r.get("backend") == b and r.get("results")
                    and r["results"].get("versions")), None)
        if res:
            env["runs"][b] = {"device": res.get("device"), "versions": res.get("versions"),
                              "precision": res.get("precision")}
    return env


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
    backends = [_backend_entry(b, runs) for b in order]
    notes = _flag_accuracy(backends, threshold) + _gap_notes(backends) + _cache_notes(backends)
    compute, compute_notes = _compute(rows)
    completed = {b: [r for r in rows if r.get("backend") == b and r.get("status") == "completed"] for b in order}
    first = next((r.get("results") for r in rows if r.get("status") == "completed"), None) or {}
    return {
        "format": REPORT_FORMAT, "created": data.get("created"), "command": data.get("command"),
        "config": data.get("config"), "overrides": data.get("overrides") or [], "seeds": data.get("seeds"),
        "workload": {k: first.get(k) for k in ("backbone", "image_size", "recipe", "precision", "batch_size",
                                               "num_train", "num_val", "num_test", "epochs")},
        "threshold": threshold, "backends": backends, "runs": runs,
        "phases": [p for b in order for p in _phase_table(b, completed[b])],
        "curves": {b: _curves(completed[b]) for b in order},
        "failed": [{k: r[k] for k in ("backend", "seed", "status", "exit_code", "error", "log")}
                   for r in runs if r["status"] != "completed"],
        "compute": compute, "environment": _environment(data, order), "notes": notes + compute_notes, "files": FILES,
    }
