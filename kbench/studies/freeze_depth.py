"""Study ``freeze_depth``: test top-1, wall time and trainable parameters of VGG16 against
how many of its top convolution blocks are unfrozen (0 = feature extraction ... 5 = all).

Claim tested: freezing the lower layers and training the top is enough when the task is
similar (CIFAR-10 from ImageNet-derived weights). Depth 0 is the ``feature_extraction``
recipe; depth k >= 1 is ``fine_tune`` (head first, then the top k blocks at a 10x lower
learning rate) with ``recipe.unfreeze`` = the layer-name prefix of the k-th block from the
top: a prefix trains from the first layer whose name starts with it up to the top
(:func:`kbench.recipes.freezing.first_trainable_index`), so ``block4`` trains blocks 4
and 5; depth 5 is ``all``. Every depth runs the same number of epochs. The frozen-prefix
cache is on (``recipe.cache: auto``): each phase trains on the cached output of the layer
just below its first trainable one (``results.phases[].cache_cut``), which the report
checks.
"""

from __future__ import annotations

import argparse
import re

from kbench.studies.common import RECIPE_POINTS, StudyContext, pyplot, save_figure, top1, write_report
from kbench.sweep.report import group, md_table, pm, value
from kbench.sweep.spec import SweepError

NAME = "freeze_depth"
HELP = "test top-1, wall time and trainable parameters vs how many VGG16 top blocks are unfrozen (0 .. all)"
CLAIM = "freezing the lower layers and training the top is enough when the task is similar"
DEFAULT_SEEDS = "2"
SIZE_KEY = "data.max_train_per_class"
DEFAULT_SIZE = 100
DEFAULT_BLOCKS = "0,1,2,3,5"
#: Blocks unfrozen -> ``recipe.unfreeze`` (VGG16's blocks block1..block5; 0 = feature extraction).
UNFREEZE = {0: None, 1: "block5", 2: "block4", 3: "block3", 4: "block2", 5: "all"}
ALL = max(UNFREEZE)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The study's own options (--blocks, --size)."""
    p.add_argument("--blocks", default=DEFAULT_BLOCKS,
                   help=f"top blocks unfrozen, 0 (feature extraction) to {ALL} or 'all' (default {DEFAULT_BLOCKS})")
    p.add_argument("--size", type=int, default=DEFAULT_SIZE, help=f"training images per class (default {DEFAULT_SIZE})")


def parse_blocks(text: str) -> list[int]:
    """``"0,1,all"`` -> ``[0, 1, 5]`` (sorted, without repeats).

    Raises:
        SweepError: an item that is neither an integer 0..5 nor ``all``.
    """
    items = [x.strip().lower() for x in str(text).split(",") if x.strip()]
    out = {ALL if x == "all" else int(x) if x.isdigit() else -1 for x in items}
    if not items or not out <= set(UNFREEZE):
        raise SweepError(f"--blocks {text!r}: give a comma-separated list of top blocks to unfreeze, "
                         f"integers 0 (feature extraction) to {ALL} or 'all', e.g. {DEFAULT_BLOCKS}")
    return sorted(out)


def depth_point(k: int) -> dict:
    """The sweep point of ``k`` blocks unfrozen (the recipes' epochs: :data:`RECIPE_POINTS`)."""
    if k == 0:
        return dict(RECIPE_POINTS["feature_extraction"])
    return {**RECIPE_POINTS["fine_tune"], "recipe.unfreeze": UNFREEZE[k]}


def depth_of(name: str | None, unfreeze: str | None) -> int | None:
    """Blocks unfrozen of a trial's ``recipe.name`` and ``recipe.unfreeze`` (``None``: not a
    depth of this study)."""
    if name == "feature_extraction":
        return 0
    return next((k for k, u in UNFREEZE.items() if u is not None and u == unfreeze), None)


def _row_depth(row: dict) -> int | None:
    return depth_of(value(row, "point.recipe.name"), value(row, "point.recipe.unfreeze"))


def cut_check(depth: int, cut: str | None) -> str:
    """Whether a cache cut lies below the first trainable VGG16 block of ``depth``: ``yes``,
    ``no``, ``no cache`` (something frozen but not cached) or ``n/a`` (nothing frozen)."""
    if depth == ALL:
        return "n/a" if cut is None else "no"
    if cut is None:
        return "no cache"
    m = re.match(r"block(\d+)_", cut)
    return "yes" if m and int(m.group(1)) < ALL + 1 - depth else "no"


def summarize(rows: list[dict], keys: tuple[str, ...] = ("backend",)) -> list[dict]:
    """Per depth (and ``keys``), sorted by depth: :func:`kbench.sweep.report.group` stats of
    test top-1, ``total_time_s``, trial wall time and the last phase's trainable parameters,
    plus ``depth``, ``unfreeze`` and ``cuts`` ({cache cut of the last phase: check})."""
    metrics = {"top1": top1, "run_time": lambda r: value(r, "results.total_time_s"),
               "wall": lambda r: r.get("wall_time_s"),
               "params": lambda r: ((value(r, "results.phases") or [{}])[-1]).get("trainable_params")}
    groups = group(rows, ["point.recipe.name", "point.recipe.unfreeze", *keys], metrics)
    for g in groups:
        g["depth"] = depth_of(g["point.recipe.name"], g["point.recipe.unfreeze"])
        g["unfreeze"] = UNFREEZE.get(g["depth"]) or "feature_extraction"
        done = [r for r in rows if r.get("status") == "completed" and _row_depth(r) == g["depth"]
                and all(value(r, k) == g[k] for k in keys)]
        cuts = [((value(r, "results.phases") or [{}])[-1]).get("cache_cut") for r in done]
        g["cuts"] = {c: cut_check(g["depth"], c) for c in cuts}
    return sorted([g for g in groups if g["depth"] is not None], key=lambda g: g["depth"])


def _cuts(g: dict) -> str:
    return ", ".join(f"{c or 'none'} ({ok})" for c, ok in g["cuts"].items()) or "-"


def table(groups: list[dict]) -> list[list[str]]:
    """The report's table rows (columns: see :func:`run`); gain in points of test top-1
    over feature extraction on the same backend."""
    base = {g.get("backend"): g["top1"]["mean"] for g in groups if g["depth"] == 0}
    out = []
    for g in groups:
        b, m = base.get(g.get("backend")), g["top1"]["mean"]
        gain = "-" if b is None or m is None or g["depth"] == 0 else f"{100 * (m - b):+.1f}"
        params = "-" if g["params"]["mean"] is None else f"{g['params']['mean']:,.0f}"
        out.append([str(g["depth"]), g["unfreeze"], g.get("backend", "all"), f"{g['completed']}/{g['total']}",
                    pm(g["top1"]), gain, pm(g["run_time"], ".1f"), pm(g["wall"], ".1f"), params, _cuts(g)])
    return out


def verdict(groups: list[dict]) -> list[str]:
    """From the groups pooled over backends (:func:`summarize` with no keys): the depth
    with the best mean test top-1, each depth's gain over feature extraction with its cost
    (``total_time_s`` and trainable parameters, absolute and as a ratio), the smallest depth
    within one std of the best, and whether every cache cut lay below the trained blocks."""
    done = [g for g in groups if g["top1"]["mean"] is not None]
    if not done:
        return ["- no completed trial"]
    best = max(done, key=lambda g: g["top1"]["mean"])
    lines = [f"- best: {best['depth']} block(s) unfrozen ({best['unfreeze']}), test top-1 {pm(best['top1'])}"]
    base = next((g for g in done if g["depth"] == 0), None)
    for g in done:
        if base is None or g["depth"] == 0:
            continue
        t0, t, p0, p = base["run_time"]["mean"], g["run_time"]["mean"], base["params"]["mean"], g["params"]["mean"]
        cost = (f"total_time_s {t:.1f} s vs {t0:.1f} s ({t / t0:.1f}x)" if t and t0 else "time -") + \
            (f", trainable parameters {p:,.0f} vs {p0:,.0f} ({p / p0:.1f}x)" if p and p0 else "")
        lines.append(f"- {g['depth']} block(s) ({g['unfreeze']}): "
                     f"{100 * (g['top1']['mean'] - base['top1']['mean']):+.1f} points over feature extraction "
                     f"({g['top1']['mean']:.4f} vs {base['top1']['mean']:.4f}); {cost}")
    spread = max(best["top1"]["std"] or 0.0, 0.0)
    enough = min(g["depth"] for g in done if g["top1"]["mean"] >= best["top1"]["mean"] - spread)
    lines.append(f"- the fewest blocks unfrozen within one std ({spread:.4f}) of the best: {enough}")
    bad = [f"{g['depth']}: {c or 'none'}" for g in groups for c, ok in g["cuts"].items() if ok in ("no", "no cache")]
    lines.append("- frozen-prefix cache cut below the first trainable block in every completed run" if not bad else
                 f"- frozen-prefix cache NOT below the first trainable block (or absent) at depth {', '.join(bad)}")
    return lines


def _plot(groups: list[dict], out: str) -> str:
    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    gs = [g for g in groups if g["top1"]["mean"] is not None]
    xs = [g["depth"] for g in gs]
    ax.errorbar(xs, [g["top1"]["mean"] for g in gs], yerr=[g["top1"]["std"] for g in gs], marker="o", capsize=3)
    ax.set_ylabel("test top-1 (mean ± std over seeds)")
    ax2.plot(xs, [(g["params"]["mean"] or 0) / 1e6 for g in gs], "s-", color="tab:purple", label="trainable params")
    ax2.set_ylabel("trainable parameters (millions)", color="tab:purple")
    ax3 = ax2.twinx()
    ax3.plot(xs, [g["run_time"]["mean"] for g in gs], "o--", color="tab:orange", label="total_time_s")
    ax3.set_ylabel("run time, s (total_time_s, mean)", color="tab:orange")
    for a in (ax, ax2):
        a.set_xticks(list(UNFREEZE), [f"{k}\n{UNFREEZE[k] or 'FE'}" for k in UNFREEZE])
        a.set_xlabel("top blocks unfrozen (recipe.unfreeze)")
        a.grid(alpha=0.3)
    fig.suptitle("Freeze depth (VGG16)")
    return save_figure(fig, out, "freeze_depth")


def run(ctx: StudyContext, args: argparse.Namespace) -> str:
    """Run (or, with ``ctx.report_only``, reread) the trials and write ``report.md`` and the
    PNG plot under ``ctx.out``; returns the report's path.

    Raises:
        SweepError: a bad option value (named in the message), or what :meth:`StudyContext.sweep` raises.
    """
    blocks = parse_blocks(args.blocks)
    if args.size < 1:
        raise SweepError(f"--size {args.size}: give the training images per class, an integer >= 1")
    data = ctx.sweep("trials", [{**depth_point(k), SIZE_KEY: args.size} for k in blocks])
    groups, pooled = summarize(data["rows"]), summarize(data["rows"], ())
    plot = _plot(pooled, ctx.out)
    header = ["blocks unfrozen", "recipe.unfreeze", "backend", "trials", "test top-1", "vs feature extraction, points",
              "total_time_s", "trial wall s", "trainable params", "cache cut (last phase; below trainable?)"]
    lines = [f"# Study: freeze depth ({CLAIM}?)", "",
             f"VGG16 at {ctx.image_size}x{ctx.image_size}, {args.size} training images per class, seeds {ctx.seeds}, "
             f"backends {', '.join(ctx.backends)}; options of every trial: `{' '.join(ctx.overrides) or '(none)'}`. "
             f"0 blocks = feature_extraction ({RECIPE_POINTS['feature_extraction']}); k blocks = fine_tune "
             f"({RECIPE_POINTS['fine_tune']}) with recipe.unfreeze = the k-th block from the top, which trains "
             "that block and every layer above it (5 = all). Frozen-prefix cache on (recipe.cache auto); "
             "'trainable params' = the last phase's (head included).", "",
             *md_table(header, table(groups)), "",
             f"![test top-1, trainable parameters and run time vs blocks unfrozen]({plot})", "", "## Verdict", "",
             *verdict(pooled)]
    if ctx.incomplete:
        lines += ["", f"Trials that did not complete: {', '.join(ctx.incomplete)} (see trials/sweep.md)."]
    return write_report(ctx.out, lines)
