"""Rendering of a ``python -m kbench.parity`` report: ``parity.md`` and the terminal table.

Both are pure functions of the report dict written to ``parity.json``
(:func:`render_markdown`, :func:`print_table`); nothing is computed here.
"""

from __future__ import annotations

from kbench.parity.numeric import QUANTITIES, describe_worst


def render_markdown(report: dict) -> str:
    """``parity.md`` from a report dict as written to ``parity.json`` (no computation)."""
    s = report["settings"]
    lines = [
        "# Backend parity",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Date: {report['date']}. Machine: {report['machine']}.",
        "",
        f"Setup: precision `{s['precision']}`, batch {s['batch_size']} (seed {s['seed']}, pixels uniform in "
        f"[0, 255], {s['num_classes']} classes), head `{s['head']}` (dropout 0), random seeded init saved once "
        f"and loaded on every backend, {s['steps']} SGD steps (learning rate {s['learning_rate']}, training "
        f"{'the head only, backbone frozen' if s.get('train', 'head') == 'head' else 'the whole model'}) on the same "
        "batch, backbone in inference mode (BatchNorm moving statistics, no dropout), jit_compile "
        f"`{s['jit_compile']}`.",
        "",
        "Error measure: `rel = max|a - b| / max(max|a|, max|b|)` per tensor (gradients: worst head variable; "
        "step losses: worst step). Pass when every quantity's rel is within its tolerance.",
        "",
        "| tolerances | logits | loss | head grads | step losses | why |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key, t in report["tolerances"].items():
        lines.append(f"| {key} | {t['logits']:.0e} | {t['loss']:.0e} | {t['head_grads']:.0e} | "
                     f"{t['step_losses']:.0e} | {t['why']} |")
    lines += ["", "| model | size | max abs logit | backends | verdict | worst difference | logits rel | loss rel | "
              "head grads rel | step losses rel |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for m in report["models"]:
        scale = next((f"{b['logits_max_abs']:.2g}" for b in m["backends"].values() if "logits_max_abs" in b), "-")
        for p in m["pairs"]:
            q = p.get("quantities") or {}
            cells = [f"{q[k]['rel']:.1e}" if k in q else "-" for k in QUANTITIES]
            lines.append(f"| {m['model']} | {m['image_size']} | {scale} | {p['a']} vs {p['b']} | **{p['verdict']}** | "
                         f"{describe_worst(p)} | " + " | ".join(cells) + " |")
    failed = [(m["model"], b, r) for m in report["models"] for b, r in m["backends"].items() if r.get("error")]
    if failed:
        lines += ["", "Backend runs that failed:", ""]
        lines += [f"* {model} on {b}: {r['error']}" for model, b, r in failed]
    vers = report.get("versions") or {}
    if vers:
        lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(vers.items()))]
    n_pass = sum(p["verdict"] == "pass" for m in report["models"] for p in m["pairs"])
    n_all = sum(len(m["pairs"]) for m in report["models"])
    lines += ["", f"Summary: {n_pass} of {n_all} model/backend pairs pass.", ""]
    return "\n".join(lines)


def print_table(report: dict) -> None:
    """The verdict table in the terminal (rich)."""
    from rich.console import Console
    from rich.table import Table

    short = {"tensorflow": "tf"}  # the other backend names are short already
    table = Table(title=f"Backend parity ({report['settings']['precision']}; rel = max|a-b| / max|a|,|b|)")
    for col in ("model", "pair", "verdict", "worst (rel / tol)", "logits", "loss", "grads", "steps"):
        table.add_column(col, no_wrap=col != "worst (rel / tol)")
    for m in report["models"]:
        for p in m["pairs"]:
            q = p.get("quantities") or {}
            style = "green" if p["verdict"] == "pass" else "bold red"
            w = p.get("worst")
            worst = p["error"] if p.get("error") else f"{w['quantity']} {w['rel']:.1e} / {w['tol']:.0e}"
            table.add_row(m["model"], f"{short.get(p['a'], p['a'])}-{short.get(p['b'], p['b'])}",
                          f"[{style}]{p['verdict']}[/]", worst,
                          *[f"{q[k]['rel']:.0e}" if k in q else "-" for k in QUANTITIES])
    console = Console(stderr=False)
    console.print(table)
    for key, t in report["tolerances"].items():
        console.print(f"tolerance {key}: logits {t['logits']:.0e}, loss {t['loss']:.0e}, head grads "
                      f"{t['head_grads']:.0e}, step losses {t['step_losses']:.0e} ({t['why']})")
