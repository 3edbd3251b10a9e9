"""The report of ``python -m kbench.bench``: relative speeds, findings (gaps, failures) and the files.

A pure function of the stored rows: :func:`annotate` puts every backend's images/s
relative to the fastest backend for the same model / size / batch / mode /
precision, :func:`findings` lists every gap larger than :data:`GAP_FACTOR` and every
failure, :func:`render_table` / :func:`render_markdown` / :func:`render_csv` render
them, :func:`build_report` writes ``bench.json``, ``bench.csv`` and ``bench.md``, and
:func:`load_bench` reads ``bench.json`` back (``--report-only``).
"""

from __future__ import annotations

import csv
import io
import json
import os

from kbench import BACKENDS, KbenchError, subproc

#: A backend this many times slower than the fastest one is named under "Findings".
GAP_FACTOR = 3.0
CSV_COLUMNS = ("backend", "model", "image_size", "batch_size", "precision", "mode", "status", "images_per_s",
               "images_per_s_min", "images_per_s_max", "relative_to_fastest", "fastest_backend", "step_ms_p50",
               "step_ms_p95", "compile_s", "first_step_s", "warmup_steps", "measured_steps", "repeats",
               "flops_per_image", "achieved_gflops", "peak_gflops", "mfu", "params", "jit_compile", "error",
               "peak_source")


def _fmt_ips(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" if v < 10 else f"{v:.0f}"


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _group_key(r: dict) -> tuple:
    return (r["model"], r["image_size"], r["batch_size"], r["mode"], r["precision"])


def _where(r: dict, precision: bool = True) -> str:
    s = f"{r['model']} {r['mode']} at {r['image_size']}x{r['image_size']} (batch {r['batch_size']}"
    return s + (f", {r['precision']})" if precision else ")")


def annotate(rows: list[dict]) -> list[dict]:
    """Copies of ``rows`` with ``relative_to_fastest`` (images/s / fastest backend's images/s for
    the same model, size, batch, mode and precision), ``fastest_backend`` and ``relative_text``
    (e.g. ``"0.09x of tensorflow"``, ``"fastest"``, ``"failed"``)."""
    best: dict[tuple, dict] = {}
    for r in rows:
        if r.get("status") == "ok" and r.get("images_per_s"):
            k = _group_key(r)
            if k not in best or r["images_per_s"] > best[k]["images_per_s"]:
                best[k] = r
    out = []
    for r in rows:
        r = dict(r)
        b = best.get(_group_key(r))
        if r.get("status") != "ok" or not r.get("images_per_s") or b is None:
            r.update(relative_to_fastest=None, fastest_backend=b["backend"] if b else None,
                     relative_text="failed" if r.get("status") != "ok" else "-")
        else:
            rel = r["images_per_s"] / b["images_per_s"]
            r.update(relative_to_fastest=rel, fastest_backend=b["backend"],
                     relative_text="fastest" if b["backend"] == r["backend"] else f"{rel:.2f}x of {b['backend']}")
        out.append(r)
    return out


def findings(rows: list[dict], factor: float = GAP_FACTOR) -> list[str]:
    """Plain-text findings from the rows, in a stable order:

    * every backend more than ``factor`` x slower than the fastest backend for the same
      model / size / batch / mode / precision, e.g. ``"vgg16 inference at 32x32 (batch 32,
      float32): jax 50 images/s vs tensorflow 580 (11.6x slower)"``;
    * every mixed precision more than ``factor`` x slower than float32 on the same backend;
    * every MFU above 100 % (the backend's matmul probe underestimates the peak that its
      convolution kernels reach; over a vendor peak, a counting or timing error), one line
      per backend and precision;
    * every failed measurement (grouped by backend and error).
    """
    rows = annotate(rows)
    out = []
    for r in sorted(rows, key=lambda r: (_group_key(r), r["backend"])):
        rel = r.get("relative_to_fastest")
        if rel and 1.0 / rel > factor:
            fast = next(x for x in rows if _group_key(x) == _group_key(r) and x["backend"] == r["fastest_backend"])
            out.append(f"{_where(r)}: {r['backend']} {_fmt_ips(r['images_per_s'])} images/s vs "
                       f"{fast['backend']} {_fmt_ips(fast['images_per_s'])} ({1.0 / rel:.1f}x slower)")
    ok = {(r["backend"], r["model"], r["image_size"], r["batch_size"], r["mode"], r["precision"]): r
          for r in rows if r.get("status") == "ok" and r.get("images_per_s")}
    for (b, m, s, bs, mode, p), r in sorted(ok.items()):
        ref = ok.get((b, m, s, bs, mode, "float32"))
        if p != "float32" and ref and ref["images_per_s"] / r["images_per_s"] > factor:
            out.append(f"{_where(r, precision=False)}: {b} {p} {_fmt_ips(r['images_per_s'])} images/s vs float32 "
                       f"{_fmt_ips(ref['images_per_s'])} ({ref['images_per_s'] / r['images_per_s']:.1f}x slower)")
    over: dict[tuple, list[dict]] = {}
    for r in ok.values():
        if (r.get("mfu") or 0) > 1.0:
            over.setdefault((r["backend"], r["precision"]), []).append(r)
    for (b, p), rs in sorted(over.items()):
        top = max(rs, key=lambda r: r["mfu"])
        if top.get("peak_source") == "vendor":
            out.append(f"{b} {p}: MFU above 100 % of the vendor peak ({_fmt_ips(top.get('peak_gflops'))} GFLOP/s) "
                       f"in {len(rs)} measurement{'s' if len(rs) != 1 else ''} (up to {100 * top['mfu']:.1f}%, "
                       f"{top['model']} {top['mode']}): the FLOP count or the timing is wrong")
            continue
        out.append(f"{b} {p}: MFU above 100 % in {len(rs)} measurement{'s' if len(rs) != 1 else ''} (up to "
                   f"{100 * top['mfu']:.1f}%, {top['model']} {top['mode']}): its matmul peak probe "
                   f"({_fmt_ips(top.get('peak_gflops'))} GFLOP/s) underestimates what its convolutions reach; "
                   "read MFU across backends with that in mind")
    failures: dict[tuple, list[str]] = {}
    for r in rows:
        if r.get("status") != "ok":
            failures.setdefault((r["backend"], r.get("error") or "unknown error"), []).append(
                f"{r['model']} {r['mode']} {r['image_size']}px b{r['batch_size']} {r['precision']}")
    for (b, err), what in sorted(failures.items()):
        out.append(f"{b} failed ({len(what)} measurement{'s' if len(what) != 1 else ''}: "
                   f"{', '.join(what[:4])}{', ...' if len(what) > 4 else ''}): {err}")
    return out


def _sorted_rows(rows: list[dict]) -> list[dict]:
    order = {b: i for i, b in enumerate(BACKENDS)}
    return sorted(annotate(rows), key=lambda r: (_group_key(r), order.get(r["backend"], 99), r["backend"]))


RESULT_HEADERS = ("model", "size", "batch", "mode", "precision", "backend", "images/s (median)", "min-max",
                  "vs fastest", "step p50 ms", "step p95 ms", "warm-up s", "GFLOP/s", "MFU")


def _result_cells(r: dict) -> list[str]:
    ok = r.get("status") == "ok"
    spread = f"{_fmt_ips(r.get('images_per_s_min'))}-{_fmt_ips(r.get('images_per_s_max'))}" if ok else "-"
    mfu = r.get("mfu")
    return [r["model"], str(r["image_size"]), str(r["batch_size"]), r["mode"], r["precision"], r["backend"],
            _fmt_ips(r.get("images_per_s")) if ok else "FAILED", spread, r["relative_text"],
            _fmt(r.get("step_ms_p50"), ".1f"), _fmt(r.get("step_ms_p95"), ".1f"), _fmt(r.get("compile_s"), ".1f"),
            _fmt(r.get("achieved_gflops"), ".1f"), "-" if mfu is None else f"{100 * mfu:.1f}%"]


def render_table(data: dict):
    """The rich terminal table of ``data["rows"]``: one line per measurement, compact columns."""
    from rich.table import Table

    t = Table(title=f"kbench bench · {data.get('environment', {}).get('cpu', '?')}")
    for h in ("model@size/batch", "mode", "precision", "backend", "images/s [min-max]", "vs fastest",
              "step p50/p95 ms", "warm-up s", "MFU"):
        t.add_column(h, justify="right" if h in ("warm-up s", "MFU", "step p50/p95 ms") else "left")
    for r in _sorted_rows(data["rows"]):
        c = dict(zip(RESULT_HEADERS, _result_cells(r)))
        style = "red" if r.get("status") != "ok" or (r.get("relative_to_fastest") or 1) < 1 / GAP_FACTOR else None
        t.add_row(f"{r['model']}@{r['image_size']}/{r['batch_size']}", r["mode"], r["precision"], r["backend"],
                  f"{c['images/s (median)']} [{c['min-max']}]", c["vs fastest"],
                  f"{c['step p50 ms']}/{c['step p95 ms']}", c["warm-up s"], c["MFU"], style=style)
    return t


def render_markdown(data: dict) -> str:
    """``bench.md``: settings, environment, the results table, findings and method notes."""
    env = data.get("environment", {})
    st = data.get("settings", {})
    lines = ["# kbench throughput bench", ""]
    if data.get("created_at"):
        lines.append(f"Measured {data['created_at']}" + (f" with `{data['command']}`" if data.get("command") else "")
                     + ".")
        lines.append("")
    if st:
        lines.append(f"Settings: {st.get('steps')} timed steps x {st.get('repeats')} repeats after "
                     f"{st.get('warmup')} warm-up step(s); synthetic fixed batch, weights `none`, `gap` head "
                     f"({st.get('num_classes')} classes), jit_compile `{st.get('jit_compile')}`.")
        lines.append("")
    lines += ["## Environment", ""]
    if env:
        ld = env.get("load_average_at_start")
        lines.append(f"- CPU: {env.get('cpu')} ({env.get('cores')} cores)"
                     + (f"; load average at start {ld[0]:.2f}" if ld else ""))
        lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items() if v))
    for b, info in sorted(data.get("backends", {}).items()):
        dev = info.get("device") or {}
        peaks = ", ".join(f"{d} {p['gflops']:.1f} GFLOP/s" + (f" ({p['peak_source']})" if p.get("peak_source") else "")
                          for d, p in sorted((info.get("peaks") or {}).items()) if p.get("gflops"))
        lines.append(f"- {b}: {info.get('status')}"
                     + (f", {dev.get('type')} {dev.get('name')}" if dev else "")
                     + (f", peak {peaks}" if peaks else "")
                     + (f", wall {info['wall_s']:.0f} s" if info.get("wall_s") is not None else "")
                     + (f"; error: {info['error']}" if info.get("error") else ""))
    lines += ["", "## Results", "", "| " + " | ".join(RESULT_HEADERS) + " |",
              "| " + " | ".join("---" for _ in RESULT_HEADERS) + " |"]
    for r in _sorted_rows(data["rows"]):
        lines.append("| " + " | ".join(c.replace("|", "/") for c in _result_cells(r)) + " |")
    lines += ["", f"## Findings (gaps over {GAP_FACTOR:g}x, failures)", ""]
    found = findings(data["rows"])
    lines += [f"- {f}" for f in found] if found else [f"- none: no backend or precision more than {GAP_FACTOR:g}x "
                                                       "slower than the fastest, and no failures"]
    lines += ["", "## Method", "",
              "images/s: median over repeats of (steps x batch) / time of the repeat's steps; min-max over repeats. "
              "Warm-up steps (tracing and compilation) are excluded and reported as warm-up s. Every step ends with "
              "its results on the host. GFLOP/s = images/s x model FLOPs per image, counted from the model's "
              "conv/dense layers (2 x multiply-accumulates; training = 3 x forward, Kaplan et al. 2020); MFU = "
              "GFLOP/s / the peak for the compute dtype: the vendor's dense peak on a GPU in `kbench.gpu_peaks` "
              "(peak source 'vendor'), otherwise the machine's measured matmul peak on the same backend "
              "('measured'; `kbench.perf`).", ""]
    return "\n".join(lines)


def render_csv(rows: list[dict]) -> str:
    """``bench.csv``: one line per measurement, columns :data:`CSV_COLUMNS`."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in _sorted_rows(rows):
        w.writerow({k: r.get(k) for k in CSV_COLUMNS})
    return buf.getvalue()


def build_report(data: dict, out_dir: str) -> dict[str, str]:
    """Write ``bench.json``, ``bench.csv`` and ``bench.md`` for ``data`` into ``out_dir``; returns their paths.
    Everything in them is derived from ``data`` (rows, environment, backends, settings)."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, f"bench.{k}") for k in ("json", "csv", "md")}
    subproc.write_json(paths["json"], {**data, "findings": findings(data["rows"])}, indent=2)
    with open(paths["csv"], "w") as f:
        f.write(render_csv(data["rows"]))
    with open(paths["md"], "w") as f:
        f.write(render_markdown(data))
    return paths


def load_bench(out_dir: str) -> dict:
    """Read ``<out_dir>/bench.json``.

    Raises:
        KbenchError: missing or unreadable file, or no ``rows`` in it.
    """
    path = os.path.join(out_dir, "bench.json")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise KbenchError(f"cannot read {path!r} ({e}); pass a folder written by python -m kbench.bench") from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise KbenchError(f"{path!r} has no 'rows' list; pass a folder written by python -m kbench.bench")
    return data
