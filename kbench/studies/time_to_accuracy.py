"""Study ``time_to_accuracy``: validation top-1 per epoch against training wall time and
against training images processed, for feature extraction, fine-tuning and training from
scratch at one training-set size (mean over seeds per epoch).

Claim tested: transfer learning needs less training time. The report gives, per recipe,
the time and the images processed until the mean validation top-1 first reaches a target,
which recipe gets there first and how many times faster than scratch, and whether
scratch's final test top-1 beats the transfer recipes within its epochs.

What the time axis counts (from each run's ``results.json`` and ``metrics.csv``): every
phase's own wall time, i.e. its set-up (model compile, trainable-layer switch) and its
frozen-prefix cache pass (``phases[].cache_time_s``), counted when the phase starts, then
its epochs (``metrics.epoch_time_s``: training plus the validation pass), each with an
even share of the per-epoch checkpoint writes (see :func:`epoch_points`). Not counted:
process start-up and imports, data loading before the first phase, the test evaluation,
the inference benchmark and the model save; those are in ``total_time_s`` (Trainer.fit
entry to model save) and the trial's wall time (whole subprocess), both in the table.
"""

from __future__ import annotations

import argparse

from kbench.studies.common import RECIPE_COLORS, RECIPE_POINTS, StudyContext, pyplot, save_figure, top1, write_report
from kbench.studies.data_efficiency import parse_recipes
from kbench.sweep.report import group, md_table, pm, stats, value
from kbench.sweep.spec import SweepError

NAME = "time_to_accuracy"
HELP = "validation top-1 vs training wall time and vs images processed: feature extraction, fine-tune, scratch"
CLAIM = "transfer learning needs less training time"
DEFAULT_SEEDS = "2"
SIZE_KEY = "data.max_train_per_class"
DEFAULT_SIZE = 100
#: ``--target auto``: this fraction of the lowest recipe's best mean validation top-1, so
#: that every recipe reaches the target within its epochs.
TARGET_FRACTION = 0.9


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The study's own options (--size, --recipes, --target)."""
    p.add_argument("--size", type=int, default=DEFAULT_SIZE,
                   help=f"training images per class (default {DEFAULT_SIZE})")
    p.add_argument("--recipes", default=",".join(RECIPE_POINTS), help="recipes compared (default all three)")
    p.add_argument("--target", default="auto",
                   help="validation top-1 to reach: a number in (0, 1] (absolute), 'N%%' (N %% of the lowest "
                        f"recipe's best mean validation top-1), or auto (= {100 * TARGET_FRACTION:.0f}%%)")


def parse_target(text: str) -> tuple[str, float]:
    """``--target``: ``"auto"`` -> ``("fraction", 0.9)``, ``"80%"`` -> ``("fraction", 0.8)``,
    ``"0.45"`` -> ``("absolute", 0.45)``.

    Raises:
        SweepError: anything else, or a value outside (0, 1] (percent: (0, 100]).
    """
    t = str(text).strip().lower()
    if t == "auto":
        return "fraction", TARGET_FRACTION
    try:
        kind, x = ("fraction", float(t[:-1]) / 100) if t.endswith("%") else ("absolute", float(t))
    except ValueError:
        kind, x = "bad", 0.0
    if not 0 < x <= 1:
        raise SweepError(f"--target {text!r}: give a validation accuracy in (0, 1] (e.g. 0.4), a percentage "
                         "of the lowest recipe's best mean validation accuracy (e.g. 90%), or auto")
    return kind, x


def epoch_points(row: dict) -> list[dict]:
    """One point per epoch of a completed row: ``epoch``, ``phase``, ``val`` (validation
    top-1), ``time_s`` (cumulative training wall time in seconds) and ``images`` (training
    images processed: epoch x ``num_train``).

    ``time_s``: each phase adds its set-up and frozen-prefix cache pass
    (``wall_time_s - fit_time_s``) when it starts, then per epoch its ``epoch_time_s``
    (training and validation) plus an even share of the phase's fit time outside the
    epochs (``fit_time_s`` minus the epochs' sum: the per-epoch checkpoint writes), so a
    phase's last epoch ends at the phase's wall time and the last point is the run's
    ``train_time_s``. A phase without a ``results.json`` record counts its epochs only.
    """
    phases = {p.get("phase"): p for p in value(row, "results.phases") or []}
    n = value(row, "results.num_train") or 0
    metrics = sorted(row.get("metrics") or [], key=lambda m: m["epoch"])
    out, t = [], 0.0
    for name in dict.fromkeys(m.get("phase") for m in metrics):
        ms = [m for m in metrics if m.get("phase") == name]
        p, epochs = phases.get(name) or {}, sum(m.get("epoch_time_s") or 0.0 for m in ms)
        fit = p.get("fit_time_s") or epochs
        t += max(0.0, (p.get("wall_time_s") or fit) - fit)
        extra = max(0.0, fit - epochs) / len(ms)
        for m in ms:
            t += (m.get("epoch_time_s") or 0.0) + extra
            out.append({"epoch": m["epoch"], "phase": name, "val": m.get("val_accuracy"), "time_s": t,
                        "images": m["epoch"] * n})
    return out


def mean_curve(rows: list[dict]) -> list[dict]:
    """Per epoch, the mean over the completed rows having it of ``val``, ``time_s`` and
    ``images`` (:func:`epoch_points`), with ``n`` the number of rows averaged."""
    by_epoch: dict[int, list[dict]] = {}
    for r in rows:
        for pt in epoch_points(r):
            by_epoch.setdefault(pt["epoch"], []).append(pt)
    return [{"epoch": e, "n": len(pts), **{k: stats([p[k] for p in pts])["mean"] for k in ("val", "time_s", "images")}}
            for e, pts in sorted(by_epoch.items())]


def reach(curve: list[dict], target: float) -> dict | None:
    """The first point of ``curve`` whose mean validation top-1 is >= ``target`` (or ``None``)."""
    return next((p for p in curve if p["val"] is not None and p["val"] >= target), None)


def summarize(rows: list[dict]) -> list[dict]:
    """Per (recipe, backend): trial counts and :func:`kbench.sweep.report.stats` of test
    top-1, ``train_time_s`` (all phases), ``cache_time_s``, ``total_time_s`` and the trial
    wall time, plus ``curve`` (:func:`mean_curve`) and ``best_val`` (its highest value)."""
    metrics = {"top1": top1, "train": lambda r: value(r, "results.train_time_s"),
               "cache": lambda r: sum(p.get("cache_time_s") or 0.0 for p in value(r, "results.phases") or []),
               "run_time": lambda r: value(r, "results.total_time_s"), "wall": lambda r: r.get("wall_time_s")}
    groups = group(rows, ["point.recipe.name", "backend"], metrics)
    for g in groups:
        done = [r for r in rows if r.get("status") == "completed" and r["point"].get("recipe.name") ==
                g["point.recipe.name"] and r.get("backend") == g["backend"]]
        g["recipe"], g["curve"] = g["point.recipe.name"], mean_curve(done)
        g["best_val"] = max((p["val"] for p in g["curve"] if p["val"] is not None), default=None)
    return groups


def resolve_target(groups: list[dict], kind: str, x: float) -> tuple[float | None, str]:
    """The validation top-1 to reach and how it was set (a sentence for the report);
    ``None`` when no recipe has a validation curve."""
    if kind == "absolute":
        return x, f"validation top-1 >= {x:.4f} (--target)"
    best = [(g["best_val"], g["recipe"], g["backend"]) for g in groups if g["best_val"] is not None]
    if not best:
        return None, "no validation curve"
    low, name, backend = min(best)
    return x * low, (f"validation top-1 >= {x * low:.4f}: {x:.0%} of the lowest best mean validation top-1 "
                     f"({name} on {backend}, {low:.4f}), so that every recipe reaches it")


def split(rows: list[dict]) -> str:
    """``"900 train + 100 validation images"`` from the first completed row's results."""
    r = next((r for r in rows if r.get("status") == "completed"), None)
    if r is None:
        return "no completed run"
    return f"{value(r, 'results.num_train')} train + {value(r, 'results.num_val')} validation images"


def _fmt_reach(g: dict, target: float) -> str:
    p = reach(g["curve"], target)
    if p is None:
        return f"{g['recipe']} not within {len(g['curve'])} epochs (best {g['best_val']:.4f})"
    return f"{g['recipe']} after {p['time_s']:.1f} s (epoch {p['epoch']}, {p['images']:,.0f} images)"


def _speedup(name: str, g: dict, scratch: dict, target: float) -> str:
    p, s = reach(g["curve"], target), reach(scratch["curve"], target)
    if s is not None:
        return (f"  - {name} reaches it {s['time_s'] / p['time_s']:.1f}x faster than scratch in training wall time, "
                f"with {s['images'] / p['images']:.1f}x fewer training images processed")
    span = scratch["curve"][-1]["time_s"]
    return (f"  - scratch does not reach it in {len(scratch['curve'])} epochs ({span:.1f} s): {name} is more than "
            f"{span / p['time_s']:.1f}x faster")


def verdict(groups: list[dict], target: float | None) -> list[str]:
    """Per backend: who reaches ``target`` first (time and images), each transfer recipe's
    speed-up over scratch, and whether scratch's final test top-1 beats the transfer
    recipes (mean over seeds; the tested model is each run's best validation epoch)."""
    if target is None:
        return ["- no completed trial with per-epoch validation accuracy"]
    lines = []
    for backend in dict.fromkeys(g["backend"] for g in groups):
        gs = {g["recipe"]: g for g in groups if g["backend"] == backend and g["curve"]}
        ranked = sorted(gs.values(), key=lambda g: (reach(g["curve"], target) or {}).get("time_s", float("inf")))
        if not ranked:
            continue
        lines.append(f"- {backend}: reached first by " + "; then ".join(_fmt_reach(g, target) for g in ranked))
        scratch = gs.get("scratch")
        transfer = [g for g in ranked if g["recipe"] != "scratch" and reach(g["curve"], target)]
        if scratch:
            lines += [_speedup(g["recipe"], g, scratch, target) for g in transfer]
        final = [g for g in gs.values() if g["recipe"] != "scratch" and g["top1"]["mean"] is not None]
        if scratch and final and scratch["top1"]["mean"] is not None:
            best = max(final, key=lambda g: g["top1"]["mean"])
            gap = 100 * (scratch["top1"]["mean"] - best["top1"]["mean"])
            lines.append(f"  - final test top-1: scratch {scratch['top1']['mean']:.4f} vs {best['recipe']} "
                         f"{best['top1']['mean']:.4f} ({gap:+.1f} points): scratch "
                         f"{'beats' if gap > 0 else 'does not beat'} the transfer recipes within its "
                         f"{len(scratch['curve'])} epochs")
    return lines


def table(groups: list[dict], target: float | None) -> list[list[str]]:
    """The report's table rows (columns: see :func:`run`)."""
    out = []
    for g in groups:
        p = reach(g["curve"], target) if target is not None else None
        out.append([g["recipe"], g["backend"], f"{g['completed']}/{g['total']}", pm(g["top1"]),
                    "-" if g["best_val"] is None else f"{g['best_val']:.4f}", str(len(g["curve"])),
                    pm(g["train"], ".1f"), pm(g["cache"], ".1f"), pm(g["run_time"], ".1f"), pm(g["wall"], ".1f"),
                    "-" if p is None else f"{p['time_s']:.1f}", "-" if p is None else str(p["epoch"]),
                    "-" if p is None else f"{p['images']:,.0f}"])
    return out


def _plot(groups: list[dict], target: float | None, out: str) -> str:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    backends = list(dict.fromkeys(g["backend"] for g in groups))
    for g in groups:
        curve = [p for p in g["curve"] if p["val"] is not None]
        label = g["recipe"] + (f" ({g['backend']})" if len(backends) > 1 else "")
        style = ["-", "--", ":", "-."][backends.index(g["backend"]) % 4]
        for ax, key in zip(axes, ("time_s", "images")):
            ax.plot([p[key] for p in curve], [p["val"] for p in curve], style, marker="o", ms=3, label=label,
                    color=RECIPE_COLORS.get(g["recipe"]))
    for ax, xlabel in zip(axes, ("training wall time, s (set-up + cache pass + epochs + checkpoints)",
                                 "training images processed (epoch x train images)")):
        if target is not None:
            ax.axhline(target, color="grey", ls="--", lw=1, label=f"target {target:.3f}")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation top-1 (mean over seeds)")
    axes[0].legend()
    fig.suptitle("Time to accuracy")
    return save_figure(fig, out, "time_to_accuracy")


def run(ctx: StudyContext, args: argparse.Namespace) -> str:
    """The study: its recipe x seed trials (reread with ``ctx.report_only``), then ``report.md``
    with the two-panel PNG under ``ctx.out``. Returns the report's path. Raises SweepError
    for a bad ``--recipes`` / ``--target`` / ``--size`` and whatever :meth:`StudyContext.sweep` raises.
    """
    recipes, (kind, x) = parse_recipes(args.recipes), parse_target(args.target)
    if args.size < 1:
        raise SweepError(f"--size {args.size}: give the training images per class, an integer >= 1")
    data = ctx.sweep("trials", [{**RECIPE_POINTS[r], SIZE_KEY: args.size} for r in recipes])
    groups = summarize(data["rows"])
    target, how = resolve_target(groups, kind, x)
    plot = _plot(groups, target, ctx.out)
    header = ["recipe", "backend", "trials", "test top-1", "best val top-1", "epochs", "training s",
              "of which cache s", "total_time_s", "trial wall s", "to target s", "epoch", "images to target"]
    lines = [f"# Study: time to accuracy ({CLAIM}?)", "",
             f"VGG16 at {ctx.image_size}x{ctx.image_size}, {args.size} images per class ({split(data['rows'])}), seeds {ctx.seeds}, backends {', '.join(ctx.backends)}; options of every "
             f"trial: `{' '.join(ctx.overrides) or '(none)'}`; the recipes' epochs: "
             + "; ".join(f"{k}: {v}" for k, v in RECIPE_POINTS.items() if k in recipes) + ".", "",
             f"Target: {how}. Curves and the 'to target' columns use the mean over seeds per epoch.", "",
             "Time axis and 'training s' (the run's `train_time_s`): every phase's own wall time: its set-up and "
             "frozen-prefix cache pass ('of which cache s'), counted when the phase starts, then its epochs "
             "(`epoch_time_s`: training and the validation pass), each with an even share of the phase's "
             "checkpoint writes (`fit_time_s` minus the epochs' sum). kbench computes the shallowest cache cut "
             "any phase needs in the first phase (deeper cuts are derived from it), so fine_tune's cache pass "
             "counts at its start. Not counted there: process start-up and "
             "imports, data loading, the test evaluation, the inference benchmark and the model save; "
             "`total_time_s` (Trainer.fit entry to model save) and the trial's wall time (the whole subprocess) "
             "include them.", "", *md_table(header, table(groups, target)), "",
             f"![validation top-1 vs training time and images processed]({plot})", "", "## Verdict", "",
             *verdict(groups, target)]
    if ctx.incomplete:
        lines += ["", f"Trials that did not complete: {', '.join(ctx.incomplete)} (see trials/sweep.md)."]
    return write_report(ctx.out, lines)
