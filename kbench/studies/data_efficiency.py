"""Study ``data_efficiency``: test top-1 vs training images per class for feature
extraction, fine-tuning and training from scratch (mean ± std over seeds, log-x plot).

Claim tested: transfer learning trains well on small data sets. The report says, per
size, how far the best transfer recipe is ahead of scratch, and the smallest size at
which scratch comes within one standard deviation of it ("catches up"), if any.
"""

from __future__ import annotations

import argparse

from kbench.studies.common import (
    BASE_CONFIG,
    RECIPE_COLORS,
    RECIPE_POINTS,
    StudyContext,
    pyplot,
    save_figure,
    scaled_recipe,
    top1,
    write_report,
)
from kbench.subproc import arg_value
from kbench.sweep.report import group, md_table, pm
from kbench.sweep.spec import SweepError

NAME = "data_efficiency"
HELP = "test top-1 vs images per class: feature extraction, fine-tune, scratch"
CLAIM = "transfer learning trains well on small data sets"
DEFAULT_SEEDS = "2"
SIZE_KEY = "data.max_train_per_class"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", default="10,50,250", help="training images per class (default 10,50,250; "
                                                       "the issue's full range: 10,25,100,500,4500)")
    p.add_argument("--recipes", default=",".join(RECIPE_POINTS), help="recipes compared (default all three)")
    p.add_argument("--min-steps", type=int, default=100, help="epochs scaled up to at least this many optimizer "
                                                              "steps per run (default 100)")


def parse_int_list(text: str, option: str) -> list[int]:
    """``"10,50"`` -> ``[10, 50]``.

    Raises:
        SweepError: not a comma-separated list of integers >= 1.
    """
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise SweepError(f"{option} {text!r}: give a comma-separated list of integers >= 1, e.g. 10,50,250")
    return values


def parse_recipes(text: str) -> list[str]:
    """``"fine_tune,scratch"`` -> those names (of :data:`RECIPE_POINTS`).

    Raises:
        SweepError: an unknown name.
    """
    names = [x.strip() for x in text.split(",") if x.strip()]
    bad = [n for n in names if n not in RECIPE_POINTS]
    if not names or bad:
        raise SweepError(f"--recipes {text!r}: choose from {', '.join(RECIPE_POINTS)}")
    return names


def _plot(groups: list[dict], recipes: list[str], out: str) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name in recipes:
        gs = [g for g in groups if g["point.recipe.name"] == name and g["top1"]["mean"] is not None]
        ax.errorbar([g[f"point.{SIZE_KEY}"] for g in gs], [g["top1"]["mean"] for g in gs],
                    yerr=[g["top1"]["std"] for g in gs], marker="o", capsize=3, label=name,
                    color=RECIPE_COLORS.get(name))
    ax.set_xscale("log")
    ax.set_xlabel("training images per class (log)")
    ax.set_ylabel("test top-1")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Data efficiency")
    return save_figure(fig, out, "data_efficiency")


def verdict(groups: list[dict], sizes: list[int]) -> list[str]:
    """Per size: best transfer recipe minus scratch (points of top-1); then where scratch
    catches up: the smallest size from which on scratch's mean is within one std of the
    best transfer mean at every larger size measured too (a tie at a size where every
    recipe is near chance does not count when transfer pulls ahead later)."""
    lines, within = [], {}
    for n in sizes:
        at = {g["point.recipe.name"]: g["top1"] for g in groups if g[f"point.{SIZE_KEY}"] == n}
        transfer = [(s["mean"], s["std"], k) for k, s in at.items() if k != "scratch" and s["mean"] is not None]
        if not transfer or (at.get("scratch") or {}).get("mean") is None:
            continue
        best, std, name = max(transfer)
        gap = 100 * (best - at["scratch"]["mean"])
        lines.append(f"- {n} images/class: {name} {best:.4f} vs scratch {at['scratch']['mean']:.4f} "
                     f"({gap:+.1f} points)")
        within[n] = at["scratch"]["mean"] >= best - max(std, at["scratch"]["std"])
    measured = sorted(within)
    caught = next((n for i, n in enumerate(measured) if all(within[m] for m in measured[i:])), None)
    lines.append(f"- scratch catches up (within one std of the best transfer recipe from there on) at {caught} "
                 "images/class" if caught else "- scratch does not catch up with transfer at the largest size measured")
    return lines


def run(ctx: StudyContext, args: argparse.Namespace) -> str:
    sizes, recipes = parse_int_list(args.sizes, "--sizes"), parse_recipes(args.recipes)
    if args.min_steps < 1:
        raise SweepError(f"--min-steps {args.min_steps}: give an integer >= 1")
    batch = int(arg_value(ctx.overrides, "--data.batch_size") or BASE_CONFIG["data"]["batch_size"])
    points = [{**scaled_recipe(r, n, batch_size=batch, min_steps=args.min_steps), SIZE_KEY: n}
              for r in recipes for n in sizes]
    data = ctx.sweep("trials", points)
    groups = group(data["rows"], ["point.recipe.name", f"point.{SIZE_KEY}", "backend"],
                   {"top1": top1, "wall": lambda r: r.get("wall_time_s")})
    table = [[g["point.recipe.name"], g["backend"], g[f"point.{SIZE_KEY}"], f"{g['completed']}/{g['total']}",
              pm(g["top1"]), pm(g["wall"], ".0f")] for g in groups]
    pooled = group(data["rows"], ["point.recipe.name", f"point.{SIZE_KEY}"], {"top1": top1})  # over backends
    plot = _plot(pooled, recipes, ctx.out)
    lines = [f"# Study: data efficiency ({CLAIM}?)", "",
             f"VGG16 at {ctx.image_size}x{ctx.image_size}, seeds {ctx.seeds}, backends {', '.join(ctx.backends)}; "
             f"options of every trial: `{' '.join(ctx.overrides) or '(none)'}`. Epochs (head + fine-tune phase): "
             + "; ".join(f"{p['recipe.name']} at {p[SIZE_KEY]}/class: {p['recipe.epochs']}"
                         + (f"+{p['recipe.fine_tune_epochs']}" if "recipe.fine_tune_epochs" in p else "")
                         for p in points) + f" (the base epochs, scaled up to >= {args.min_steps} steps).", "",
             *md_table(["recipe", "backend", "images/class", "trials", "test top-1", "wall s"], table), "",
             f"![test top-1 vs images per class]({plot})", "", "## Verdict", "",
             *verdict(pooled, sizes)]
    if ctx.incomplete:
        lines += ["", f"Trials that did not complete: {', '.join(ctx.incomplete)} (see trials/sweep.md)."]
    return write_report(ctx.out, lines)
