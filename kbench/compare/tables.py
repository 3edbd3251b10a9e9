"""Tables of the cross-backend comparison report: terminal, ``compare.md`` and ``compare.csv``.

Each renders the summary of :func:`kbench.compare.summary.summarize`:
:func:`rich_table` (the terminal table, one row per backend), :func:`render_markdown`
(``compare.md``: accuracy, speed and memory, compute, phases, runs, failures, notes,
environment and the plots) and :func:`write_csv` (``compare.csv``, one row per
backend, columns :data:`CSV_FIELDS`).
"""

from __future__ import annotations

import csv

from rich import box
from rich.table import Table

from kbench.compare.summary import PLOTS, finite_float

CSV_FIELDS = ["backend", "runs", "completed", "failed", "test_accuracy_mean", "test_accuracy_std", "test_accuracy_n",
              "accuracy_delta_vs_others", "accuracy_flag", "test_loss_mean", "test_loss_std", "train_phase",
              "train_images_per_s", "inference_images_per_s", "step_time_ms_p50", "step_time_ms_p95",
              "first_steps_s", "peak_host_memory_mb", "peak_device_memory_mb", "train_gflops_per_s", "train_mfu",
              "inference_gflops_per_s", "inference_mfu", "errors"]


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
    v = finite_float(v)
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


def _md_header(summary: dict) -> list[str]:
    """The title and the workload lines of ``compare.md``."""
    w = summary["workload"]
    out = ["# kbench cross-backend comparison", ""]
    out += [f"- config: `{summary.get('config')}`" + (f", overrides `{' '.join(summary['overrides'])}`"
                                                       if summary["overrides"] else ""),
            f"- workload: {w.get('backbone')} @ {w.get('image_size')}px, recipe {w.get('recipe')}, precision "
            f"{w.get('precision')}, batch {w.get('batch_size')}, {w.get('num_train')} train / {w.get('num_val')} val "
            f"/ {w.get('num_test')} test images, {w.get('epochs')} epoch(s)",
            f"- seeds: {', '.join(map(str, summary.get('seeds') or []))}; created {summary.get('created')}",
            f"- command: `{summary.get('command')}`" if summary.get("command") else "- command: -", ""]
    return out


def _md_accuracy_speed(summary: dict) -> list[str]:
    """The accuracy and the speed-and-memory sections of ``compare.md``."""
    out = ["## Accuracy", "",
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
    return out


def _md_compute(summary: dict) -> list[str]:
    """The compute section of ``compare.md``: FLOPs per image, GFLOP/s and MFU."""
    comp = summary["compute"]
    peak = comp["peak_flops_per_s"]
    vendor = comp.get("peak_kind") == "vendor"
    rates = comp.get("peak_measured_gflops_by_backend" if vendor else "peak_gflops_by_backend") or {}
    per = ", ".join(f"{b} {fmt(finite_float(g), '.1f')}" for b, g in rates.items())
    out = ["", "## Compute", "",
           "Achieved GFLOP/s = images/s x FLOPs per image / 1e9; MFU = achieved / machine peak. FLOPs per image: "
           "`kbench.perf.model_flops_per_image` (analytic count of the backbone + head; training = 3 x forward). "
           f"Machine peak: {fmt(peak / 1e9 if peak else None, '.1f')} GFLOP/s {comp.get('peak_dtype') or ''}, the "
           + (f"vendor dense peak ({comp.get('peak_source')}; measured matmul rates {per or '-'} GFLOP/s; "
              if vendor else f"highest measured matmul rate over the backends ({per or '-'} GFLOP/s; ")
           + f"{comp.get('peak_method') or 'kbench.perf.machine_peak'}; measured {comp.get('peak_measured_at') or '-'}).",
           ""]
    out += _md_table(["model", "GFLOPs/image inference", "GFLOPs/image training"],
                     [[k, fmt(_giga((v or {}).get("inference_per_image")), ".3f"),
                       fmt(_giga((v or {}).get("train_per_image")), ".3f")]
                      for k, v in comp["flops_per_image"].items()]) + [""]
    out += _md_table(["backend", "train GFLOP/s", "train MFU", "inference GFLOP/s", "inference MFU"],
                     [[b["backend"], fmt(b["train_gflops_per_s"]["mean"], ".2f"), _pct(b["train_mfu"]["mean"]),
                       fmt(b["inference_gflops_per_s"]["mean"], ".2f"), _pct(b["inference_mfu"]["mean"])]
                      for b in summary["backends"]])
    return out


def _md_runs(summary: dict) -> list[str]:
    """The phases, runs, failed runs and notes sections of ``compare.md``."""
    out = []
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
    return out


def _md_environment(env: dict) -> list[str]:
    """The environment and plots sections of ``compare.md``."""
    out = ["", "## Environment", ""]
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
    return out


def render_markdown(summary: dict) -> str:
    """``compare.md``: workload, accuracy, speed and memory, compute, per-phase and
    per-run tables, failed runs with their errors, notes, environment and plots."""
    out = _md_header(summary) + _md_accuracy_speed(summary) + _md_compute(summary) + _md_runs(summary)
    return "\n".join(out + _md_environment(summary["environment"]))




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
