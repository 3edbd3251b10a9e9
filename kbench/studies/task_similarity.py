"""Study ``task_similarity``: split-CIFAR transfer to a similar vs a different task
(the protocol of ``docs/compare.md``, "MobileNetV2 fine-tune", automated).

Claim tested: fine-tuning beats feature extraction when the task differs; feature
extraction is enough when it is similar. CIFAR-10's classes split in two halves,
A = airplane, automobile, bird, cat, deer and B = dog, frog, horse, ship, truck. Stages
(each resumable, under ``OUT/``):

1. ``pretrain``: a backbone (``--pretrain-backbone``, default VGG16) trained from scratch
   on ``--pretrain-size`` training images per class of A (a seeded file-level pick), for
   ``--pretrain-epochs`` epochs;
2. ``export``: its backbone as ``OUT/export/<pretrain trial>.weights.h5``
   (``python -m kbench.models.export`` in a subprocess with ``KERAS_BACKEND``; BatchNorm
   statistics recalibrated on the pretraining images when the backbone has BatchNorm);
   skipped when the file exists;
3. ``transfer``: target {similar: A's training images *not* used in pretraining (the test
   set: A's test images), different: B's images} x recipe {feature_extraction, fine_tune,
   scratch} with ``model.weights`` = the exported file (scratch ignores it), ``--size``
   training images per class.

The three image folders are symlink trees (one link per file, ``train/<class>/`` and
``test/<class>/``) of the user's CIFAR-10 folder (``--data.root`` after ``--``, with
``train/`` and ``test/``) under ``OUT/data/``, built once (:func:`build_trees`). The split
of A is done here at the file level, because ``kbench.run`` picks
``data.max_train_per_class`` images per class at random (seeded), which cannot keep two
runs' images apart.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys

from kbench import subproc
from kbench.models.registry import BACKBONES
from kbench.studies.common import RECIPE_COLORS, RECIPE_POINTS, StudyContext, pyplot, save_figure, top1, write_report
from kbench.studies.data_efficiency import parse_recipes
from kbench.sweep.report import group, md_table, pm, stats
from kbench.sweep.spec import SweepError

NAME = "task_similarity"
HELP = "pretrain on 5 CIFAR-10 classes, transfer to held-out images of them vs to the other 5"
CLAIM = "fine-tuning beats feature extraction when the task differs; feature extraction is enough when it is similar"
DEFAULT_SEEDS = "2"
CLASSES_A = ("airplane", "automobile", "bird", "cat", "deer")
CLASSES_B = ("dog", "frog", "horse", "ship", "truck")
#: Target -> its classes; the pretraining task is A.
TARGETS = {"similar": CLASSES_A, "different": CLASSES_B}
#: Backbones of the registry without BatchNorm (no recalibration needed before export).
NO_BATCHNORM = ("vgg16", "vgg19")
#: Seed of the file-level pick of the pretraining images (fixed: the split is part of the protocol).
SPLIT_SEED = 0
EXPORT_TIMEOUT_S = 1800
#: Adam learning rate of the from-scratch pretraining. VGG16 (no BatchNorm) from scratch at
#: 32 px on 300 images per class of A, 6 epochs, TensorFlow (measured here 2026-12-05): test
#: top-1 0.22 at 1e-3 (chance 0.20), 0.56 at 1e-4.
PRETRAIN_LR = 1e-4


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=int, default=100, help="training images per class of each transfer run (default 100)")
    p.add_argument("--pretrain-size", type=int, default=500,
                   help="training images per class of A used for pretraining (default 500; the rest is held out)")
    p.add_argument("--pretrain-epochs", type=int, default=8, help="epochs of the pretraining run (default 8)")
    p.add_argument("--pretrain-lr", type=float, default=PRETRAIN_LR,
                   help=f"learning rate of the pretraining run (default {PRETRAIN_LR:g})")
    p.add_argument("--pretrain-backbone", default="vgg16", help="backbone pretrained from scratch (default vgg16)")
    p.add_argument("--recipes", default=",".join(RECIPE_POINTS), help="recipes compared (default all three)")


def split_files(files: list[str], n: int, seed: int = SPLIT_SEED) -> tuple[list[str], list[str]]:
    """``files`` split into ``n`` picked at random (``seed``, from the sorted list) and
    the rest, both sorted; disjoint and together all of ``files``.

    Raises:
        SweepError: ``n`` leaves nothing held out (``n >= len(files)``) or is below 1.
    """
    order = sorted(files)
    if not 1 <= n < len(order):
        raise SweepError(f"--pretrain-size {n}: a class folder has {len(order)} training images; pretrain on "
                         f"1 to {len(order) - 1} so that some are held out for the similar target")
    random.Random(seed).shuffle(order)
    return sorted(order[:n]), sorted(order[n:])


def data_root(overrides: list[str]) -> tuple[str, list[str]]:
    """The user's ``--data.root`` (absolute) and the overrides without it.

    Raises:
        SweepError: no ``--data.root``, or it lacks ``train/<class>`` and ``test/<class>``
            folders for the ten CIFAR-10 classes.
    """
    root = subproc.arg_value(overrides, "--data.root")
    rest, skip = [], False
    for a in overrides:
        if skip or a == "--data.root" or a.startswith("--data.root="):
            skip = a == "--data.root"
            continue
        rest.append(a)
    if not root:
        raise SweepError("task_similarity needs the CIFAR-10 image folder: add -- --data.root PATH "
                         "(a folder with train/<class>/ and test/<class>/, e.g. data/cifar10)")
    root = os.path.abspath(os.path.expanduser(root))
    missing = [os.path.join(s, c) for s in ("train", "test") for c in (*CLASSES_A, *CLASSES_B)
               if not os.path.isdir(os.path.join(root, s, c))]
    if missing:
        raise SweepError(f"--data.root {root!r}: no folder {missing[0]} ({len(missing)} missing); pass the CIFAR-10 "
                         "image folder with train/<class>/ and test/<class>/ for the ten classes")
    return root, rest


def _files(folder: str) -> list[str]:
    return sorted(e.path for e in os.scandir(folder) if e.is_file() and not e.name.startswith("."))


def _link_tree(dest: str, layout: dict[str, dict[str, list[str]]]) -> str:
    """Build ``dest/<split>/<class>/<file>`` links to ``layout[split][class]`` files
    (in ``dest.tmp``, then renamed: a tree is whole or absent); an existing ``dest`` is kept."""
    if os.path.isdir(dest):
        return dest
    tmp = dest + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for split, classes in layout.items():
        for c, files in classes.items():
            os.makedirs(os.path.join(tmp, split, c))
            for f in files:
                os.symlink(f, os.path.join(tmp, split, c, os.path.basename(f)))
    os.replace(tmp, dest)
    return dest


def build_trees(root: str, out: str, pretrain_size: int) -> dict[str, str]:
    """The three image folders of the study as symlink trees under ``out/data/``:
    ``pretrain`` (``pretrain_size`` training images per class of A, A's test images),
    ``similar`` (the other training images of A, A's test images) and ``different``
    (B's training and test images). Idempotent: an existing tree is reused (the names
    carry ``pretrain_size``, so another size builds new ones).

    Returns:
        ``{"pretrain": path, "similar": path, "different": path}`` (absolute).

    Raises:
        SweepError: ``pretrain_size`` leaves no held-out image in a class of A.
    """
    base = os.path.join(os.path.abspath(out), "data")
    os.makedirs(base, exist_ok=True)
    split = {c: split_files(_files(os.path.join(root, "train", c)), pretrain_size) for c in CLASSES_A}
    test = {c: _files(os.path.join(root, "test", c)) for c in (*CLASSES_A, *CLASSES_B)}
    layouts = {
        f"pretrain-n{pretrain_size}": {"train": {c: split[c][0] for c in CLASSES_A}, "test": {c: test[c] for c in CLASSES_A}},
        f"similar-n{pretrain_size}": {"train": {c: split[c][1] for c in CLASSES_A}, "test": {c: test[c] for c in CLASSES_A}},
        "different": {"train": {c: _files(os.path.join(root, "train", c)) for c in CLASSES_B},
                      "test": {c: test[c] for c in CLASSES_B}},
    }
    return {name.split("-")[0]: _link_tree(os.path.join(base, name), lay) for name, lay in layouts.items()}


def target_of(data_root_path: str | None) -> str | None:
    """The target (``similar`` / ``different``) of a transfer row's ``data.root`` folder."""
    name = os.path.basename(os.path.normpath(data_root_path or "")).split("-")[0]
    return name if name in TARGETS else None


def export_backbone(ctx: StudyContext, row: dict, calibrate: str | None) -> str:
    """Stage ``export``: the completed pretraining ``row``'s backbone as
    ``OUT/export/<trial>.weights.h5`` (``python -m kbench.models.export`` on the row's
    backend; ``--recalibrate-bn calibrate 1024`` when ``calibrate`` is a folder). Kept
    when the file exists; written under a temporary name first, so a file is whole.

    Raises:
        SweepError: the export failed (its error line and log are named).
    """
    folder = os.path.join(os.path.abspath(ctx.out), "export")
    path = os.path.join(folder, f"{row['trial']}.weights.h5")
    if os.path.isfile(path) or ctx.report_only:
        return path
    os.makedirs(folder, exist_ok=True)
    tmp, log = os.path.join(folder, "partial.weights.h5"), os.path.join(folder, f"{row['trial']}.log")
    run_dir = os.path.join(os.path.abspath(ctx.out), "pretrain", row["run_dir"])
    cmd = [sys.executable, "-m", "kbench.models.export", run_dir, tmp,
           *(["--recalibrate-bn", calibrate, "1024"] if calibrate else [])]
    done = subproc.run_logged(cmd, log, env=subproc.backend_env(row["backend"]), timeout=EXPORT_TIMEOUT_S,
                              header=f"$ KERAS_BACKEND={row['backend']} {' '.join(cmd)}\n")
    if done.returncode != 0 or not os.path.isfile(tmp):
        why = subproc.error_line(subproc.log_tail(log)) or f"exit code {done.returncode}"
        raise SweepError(f"export of the pretrained backbone {run_dir} failed: {why} (log: {log})")
    os.replace(tmp, path)
    return path


def transfer_points(trees: dict[str, str], weights: str, recipes: list[str], size: int) -> list[dict]:
    """Target x recipe points of the ``transfer`` stage (``data.root`` names the target)."""
    return [{**RECIPE_POINTS[r], "data.root": trees[t], "data.max_train_per_class": size, "model.weights": weights}
            for t in TARGETS for r in recipes]


def _stat(groups: list[dict], target: str, recipe: str) -> dict:
    return next((g["top1"] for g in groups if g["target"] == target and g["point.recipe.name"] == recipe),
                stats([]))


def verdict(groups: list[dict], pretrain_top1: float | None) -> list[str]:
    """Facts from the pooled groups (target x recipe): the pretraining run's accuracy,
    fine-tune minus feature extraction (points) per target, and whether the gap is
    larger on the different task (the claim's direction) and feature extraction within
    one std of fine-tuning on the similar one."""
    chance = 1 / len(CLASSES_A)
    lines = [f"- pretraining run (scratch on A): test top-1 {pretrain_top1:.4f} on A's test images (chance {chance:.2f})"
             + (": at or near chance, so the exported backbone carries little to transfer"
                if pretrain_top1 < chance + 0.05 else "")] if pretrain_top1 is not None else \
        ["- the pretraining run did not complete: no transfer was measured"]
    gaps = {}
    for t in TARGETS:
        fe, ft, sc = (_stat(groups, t, r) for r in ("feature_extraction", "fine_tune", "scratch"))
        if fe["mean"] is None or ft["mean"] is None:
            continue
        gaps[t] = (ft["mean"] - fe["mean"], max(fe["std"], ft["std"]))
        lines.append(f"- {t}: fine_tune {ft['mean']:.4f} vs feature_extraction {fe['mean']:.4f}: "
                     f"{100 * gaps[t][0]:+.1f} points" + (f" (scratch {sc['mean']:.4f})" if sc["mean"] is not None else ""))
    if len(gaps) == len(TARGETS):
        d = 100 * (gaps["different"][0] - gaps["similar"][0])
        lines.append(f"- fine-tune minus feature extraction is {d:+.1f} points larger on the different task than on "
                     "the similar one: " + ("the claim's direction holds" if d > 0 else
                                            "the claim's direction does not hold here"))
    if "similar" in gaps:
        gap, std = gaps["similar"]
        lines.append("- similar task: feature extraction is within one std of fine-tuning (enough)" if gap <= std else
                     f"- similar task: feature extraction is {100 * gap:.1f} points behind fine-tuning, more than one "
                     f"std ({100 * std:.1f}): not enough here")
    return lines


def _plot(groups: list[dict], recipes: list[str], out: str) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    width = 0.8 / max(len(recipes), 1)
    for i, r in enumerate(recipes):
        ss = [_stat(groups, t, r) for t in TARGETS]
        ax.bar([k + (i - (len(recipes) - 1) / 2) * width for k in range(len(TARGETS))],
               [s["mean"] or 0 for s in ss], width, yerr=[s["std"] or 0 for s in ss], capsize=3, label=r,
               color=RECIPE_COLORS.get(r))
    ax.axhline(1 / len(CLASSES_A), color="gray", linestyle=":", label="chance")
    ax.set_xticks(range(len(TARGETS)), ["similar (A, held-out images)", "different (B)"])
    ax.set_ylim(0, 1)
    ax.set_ylabel("test top-1")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    ax.set_title("Transfer from A to a similar vs a different task")
    return save_figure(fig, out, "task_similarity")


def check_options(args: argparse.Namespace, overrides: list[str]) -> None:
    """Refuse bad study options and the ``kbench.run`` options the study sets itself.

    Raises:
        SweepError: a size or epoch count below 1, an unknown ``--pretrain-backbone``, or
            ``--model.weights`` / ``--model.backbone`` / ``--data.source`` after ``--``.
    """
    for opt, v in (("--size", args.size), ("--pretrain-size", args.pretrain_size),
                   ("--pretrain-epochs", args.pretrain_epochs)):
        if v < 1:
            raise SweepError(f"{opt} {v}: give an integer >= 1")
    if not args.pretrain_lr > 0:
        raise SweepError(f"--pretrain-lr {args.pretrain_lr}: give a learning rate > 0, e.g. 1e-4")
    if args.pretrain_backbone not in BACKBONES:
        raise SweepError(f"--pretrain-backbone {args.pretrain_backbone!r}: choose one of {', '.join(BACKBONES)}")
    for a in overrides:
        key = a.split("=", 1)[0]
        if key in ("--model.weights", "--model.backbone", "--data.source"):
            raise SweepError(f"{key} after --: the study sets it (the exported backbone, --pretrain-backbone, "
                             "the folder trees); remove it")


def _pretrain(ctx: StudyContext, args: argparse.Namespace, trees: dict[str, str], model: dict) -> dict | None:
    """Stage ``pretrain`` (one trial: first backend, first seed); its completed row or None."""
    point = {"recipe.name": "scratch", "recipe.epochs": args.pretrain_epochs,
             "recipe.learning_rate": args.pretrain_lr, "model.weights": "none",
             "data.root": trees.get("pretrain")}
    data = ctx.sweep("pretrain", [] if ctx.report_only else [point], config=model, seeds=ctx.seeds[:1],
                     backends=ctx.backends[:1])
    done = [r for r in data["rows"] if r.get("status") == "completed"]
    return done[0] if done else None


def run(ctx: StudyContext, args: argparse.Namespace) -> str:
    check_options(args, ctx.overrides)
    recipes, pb = parse_recipes(args.recipes), args.pretrain_backbone
    trees = {}
    if not ctx.report_only:
        root, ctx.overrides = data_root(ctx.overrides)
        trees = build_trees(root, ctx.out, args.pretrain_size)
    size = max(ctx.image_size, BACKBONES[pb].min_size)
    model = {"data": {"source": "folder"}, "model": {"backbone": pb, "image_size": size}}
    pre = _pretrain(ctx, args, trees, model)
    rows = []
    if pre is not None:
        weights = export_backbone(ctx, pre, None if pb in NO_BATCHNORM else os.path.join(trees.get("pretrain", ""), "train"))
        points = [] if ctx.report_only else transfer_points(trees, weights, recipes, args.size)
        rows = ctx.sweep("transfer", points, config=model)["rows"]
    rows = [{**r, "target": target_of((r.get("point") or {}).get("data.root"))} for r in rows]
    table = [[g["target"], g["point.recipe.name"], g["backend"], f"{g['completed']}/{g['total']}", pm(g["top1"]),
              pm(g["wall"], ".0f")]
             for g in group(rows, ["target", "point.recipe.name", "backend"],
                            {"top1": top1, "wall": lambda r: r.get("wall_time_s")})]
    pooled = group(rows, ["target", "point.recipe.name"], {"top1": top1})
    pre_top1 = top1(pre) if pre else None
    lines = [f"# Study: task similarity ({CLAIM}?)", "",
             f"Pretraining: {pb} at {size}x{size} from scratch on {args.pretrain_size} training images per class of "
             f"A = {', '.join(CLASSES_A)} (epochs: {args.pretrain_epochs}, learning rate {args.pretrain_lr:g}, "
             f"backend {ctx.backends[0]}, seed {ctx.seeds[0]}); test top-1 on A's test images: {'-' if pre_top1 is None else f'{pre_top1:.4f}'}. "
             f"Its backbone exported (stage export{'' if pb in NO_BATCHNORM else ', BatchNorm recalibrated'}) and "
             f"transferred with {args.size} training images per class to *similar* = A's training images not used in "
             f"pretraining (tested on A's test images) and *different* = B = {', '.join(CLASSES_B)}. Seeds "
             f"{ctx.seeds}, backends {', '.join(ctx.backends)}; the recipes' epochs: "
             + "; ".join(f"{k} " + " + ".join(str(v) for key, v in RECIPE_POINTS[k].items() if "epochs" in key)
                         for k in recipes)
             + f"; options of every trial: `{' '.join(ctx.overrides) or '(none)'}`.", ""]
    if rows:
        plot = _plot(pooled, recipes, ctx.out)
        lines += [*md_table(["target", "recipe", "backend", "trials", "test top-1", "wall s"], table), "",
                  f"![test top-1 per target and recipe]({plot})", ""]
    lines += ["## Verdict", "", *verdict(pooled, pre_top1)]
    if ctx.incomplete:
        lines += ["", f"Trials that did not complete: {', '.join(ctx.incomplete)} (see pretrain/sweep.md, "
                      "transfer/sweep.md)."]
    return write_report(ctx.out, lines)
