"""Study ``backbone_table``: the seed article's backbones (VGG16, VGG19, ResNet50,
MobileNetV2, DenseNet121, Xception) as frozen feature extractors on the same subset:
test top-1, inference images/s, head-phase training images/s, parameters and wall time,
next to the ImageNet numbers Keras publishes for each (:data:`ARTICLE_TABLE`).

Claim tested: transfer learning needs less hardware (and which backbone to pick). Every
backbone runs the ``feature_extraction`` recipe of :data:`kbench.studies.common.RECIPE_POINTS`
with ``data.max_train_per_class = --size``, at ``max(--image-size, the registry's minimum
input side)`` (Xception needs 71 px; the others accept 32). No ImageNet weights can be
downloaded here: ``--weights NAME=PATH`` gives a local weights file per backbone, and a
backbone without one runs with ``model.weights none`` (random init); the report marks those
rows "random init (no weights file)": their accuracy is a random-feature baseline, not transfer.
"""

from __future__ import annotations

import argparse
import os

from kbench.models.registry import BACKBONES
from kbench.studies.common import RECIPE_POINTS, StudyContext, pyplot, save_figure, top1, write_report
from kbench.sweep.report import group, md_table, pm, value
from kbench.sweep.spec import SweepError

NAME = "backbone_table"
HELP = "the article's backbones as frozen feature extractors: accuracy, images/s, parameters"
CLAIM = "transfer learning needs less hardware (which backbone to pick)"
#: One seed by default: images/s and parameters do not depend on the seed, and the head on
#: cached features varies little between seeds next to the gaps between backbones;
#: ``--seeds 3`` gives error bars.
DEFAULT_SEEDS = "1"
RANDOM_INIT = "random init (no weights file)"
#: Options a user may not pass after ``--``: the study sets them per backbone.
PER_BACKBONE_KEYS = ("--model.weights", "--model.backbone", "--model.image_size")

#: The seed article's models with their ImageNet numbers as published in the Keras
#: Applications table (https://keras.io/api/applications/, "Available models"; the text of
#: keras-team/keras-io ``templates/api/applications/index.md``): weights file size (MB),
#: ImageNet validation top-1 / top-5 accuracy, parameters (with the 1000-class top, so more
#: than the headless backbone measured here) and depth ("the number of layers with
#: parameters" per that page). Keys are :data:`kbench.models.registry.BACKBONES` names.
ARTICLE_TABLE = {
    "vgg16": {"size_mb": 528, "top1": 0.713, "top5": 0.901, "params_m": 138.4, "depth": 16},
    "vgg19": {"size_mb": 549, "top1": 0.713, "top5": 0.900, "params_m": 143.7, "depth": 19},
    "resnet50": {"size_mb": 98, "top1": 0.749, "top5": 0.921, "params_m": 25.6, "depth": 107},
    "mobilenetv2": {"size_mb": 14, "top1": 0.713, "top5": 0.901, "params_m": 3.5, "depth": 105},
    "densenet121": {"size_mb": 33, "top1": 0.750, "top5": 0.923, "params_m": 8.1, "depth": 242},
    "xception": {"size_mb": 88, "top1": 0.790, "top5": 0.945, "params_m": 22.9, "depth": 81},
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=int, default=500, help="training images per class (default 500)")
    p.add_argument("--backbones", default=",".join(ARTICLE_TABLE),
                   help=f"backbones compared (default the article's six: {','.join(ARTICLE_TABLE)})")
    p.add_argument("--weights", action="append", default=[], metavar="NAME=PATH",
                   help="a local weights file (headless backbone, .weights.h5) for backbone NAME; repeatable. "
                        "NAME=imagenet (or all=imagenet): Keras's ImageNet download. Backbones without one "
                        "run from random init and are marked so")


def parse_backbones(text: str) -> list[str]:
    """``"vgg16,xception"`` -> those names (of :data:`ARTICLE_TABLE`).

    Raises:
        SweepError: empty, or a name not in :data:`ARTICLE_TABLE`.
    """
    names = list(dict.fromkeys(x.strip().lower() for x in text.split(",") if x.strip()))
    bad = [n for n in names if n not in ARTICLE_TABLE]
    if not names or bad:
        raise SweepError(f"--backbones {text!r}: choose from {', '.join(ARTICLE_TABLE)}")
    return names


def parse_weights(items: list[str], backbones: list[str]) -> dict[str, str]:
    """``["vgg16=/w/v.weights.h5"]`` -> ``{"vgg16": "/w/v.weights.h5"}`` (absolute paths);
    ``NAME=imagenet`` keeps Keras's ImageNet download (machines with network access) and
    ``all=imagenet`` does so for every backbone compared.

    Raises:
        SweepError: no ``=``, a backbone not compared, a name given twice, or a file that
            does not exist.
    """
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        name = name.strip().lower()
        if not sep or not path.strip():
            raise SweepError(f"--weights {item!r}: write NAME=PATH, e.g. --weights vgg16=vgg16.weights.h5")
        if name == "all" and path.strip() == "imagenet":
            out.update({b: "imagenet" for b in backbones if b not in out})
            continue
        if name not in backbones:
            raise SweepError(f"--weights {item!r}: {name!r} is not one of the backbones compared "
                             f"({', '.join(backbones)})")
        if name in out:
            raise SweepError(f"--weights {item!r}: a second file for {name!r}; give one file per backbone")
        if path.strip() == "imagenet":
            out[name] = "imagenet"
            continue
        if not os.path.isfile(os.path.expanduser(path)):
            raise SweepError(f"--weights {item!r}: file {path!r} does not exist; pass an existing .weights.h5 file")
        out[name] = os.path.abspath(os.path.expanduser(path))
    return out


def check_overrides(overrides: list[str]) -> None:
    """Refuse the options the study sets per backbone (:data:`PER_BACKBONE_KEYS`).

    Raises:
        SweepError: one of them is among the ``kbench.run`` options after ``--``.
    """
    for a in overrides:
        key = a.split("=", 1)[0]
        if key in PER_BACKBONE_KEYS:
            raise SweepError(f"{key} after -- would apply to every backbone; the study sets it per backbone: "
                             "give weights files with --weights NAME=PATH and the size with --image-size")


def input_size(backbone: str, image_size: int) -> int:
    """``max(image_size, the registry's min_size)`` in pixels (Xception: 71)."""
    return max(image_size, BACKBONES[backbone].min_size)


def points(backbones: list[str], weights: dict[str, str], size: int, image_size: int) -> list[dict]:
    """One feature-extraction point per backbone (weights file or ``none``)."""
    return [{"model.backbone": b, "model.image_size": input_size(b, image_size),
             "model.weights": weights.get(b, "none"), **RECIPE_POINTS["feature_extraction"],
             "data.max_train_per_class": size} for b in backbones]


def _phase(row: dict) -> dict:
    return (value(row, "results.phases") or [{}])[0]


METRICS = {
    "top1": top1,
    "infer": lambda r: value(r, "results.inference_images_per_s"),
    "train": lambda r: _phase(r).get("train_images_per_s"),
    "params": lambda r: (_phase(r).get("trainable_params") or 0) + (_phase(r).get("non_trainable_params") or 0)
    or None,
    "wall": lambda r: r.get("wall_time_s"),
}


def weights_label(path: str | None) -> str:
    """How a row's ``model.weights`` is shown: the file name, or :data:`RANDOM_INIT`."""
    return RANDOM_INIT if path in (None, "none") else os.path.basename(path)


def _mean(stat: dict, spec: str, scale: float = 1.0) -> str:
    return "-" if stat.get("mean") is None else format(stat["mean"] * scale, spec)


#: ImageNet columns of :data:`ARTICLE_TABLE` and their formats.
REF_FORMATS = {"size_mb": "d", "top1": ".3f", "top5": ".3f", "params_m": ".1f", "depth": "d"}


def table_rows(groups: list[dict]) -> list[list[str]]:
    """Table cells per group (backbone x backend): measured columns, then the ImageNet ones."""
    out = []
    for g in groups:
        b, ref = g["point.model.backbone"], ARTICLE_TABLE.get(g["point.model.backbone"], {})
        out.append([b, g["backend"], str(g["point.model.image_size"]), weights_label(g["point.model.weights"]),
                    f"{g['completed']}/{g['total']}", pm(g["top1"]), _mean(g["infer"], ".0f"),
                    _mean(g["train"], ".0f"), _mean(g["params"], ".2f", 1e-6), _mean(g["wall"], ".0f"),
                    *(format(ref[k], f) if k in ref else "-" for k, f in REF_FORMATS.items())])
    return out


HEADER = ["backbone", "backend", "input px", "weights", "trials", "test top-1", "inference img/s",
          "head train img/s", "params (M)", "wall s", "ImageNet size MB", "ImageNet top-1", "ImageNet top-5",
          "ImageNet params (M)", "depth"]


def _best(groups: list[dict], metric: str, pick) -> dict | None:
    have = [g for g in groups if g[metric].get("mean") is not None]
    return pick(have, key=lambda g: g[metric]["mean"]) if have else None


def _who(g: dict) -> str:
    return f"{g['point.model.backbone']} ({g['backend']}, {weights_label(g['point.model.weights'])})"


def verdict(groups: list[dict]) -> list[str]:
    """Facts from the groups (backbone x backend): the most accurate, the fastest at
    inference, the smallest, and which rows ran from random init (not transfer)."""
    lines = []
    best, worst = _best(groups, "top1", max), _best(groups, "top1", min)
    if best:
        lines.append(f"- most accurate: {_who(best)}, test top-1 {best['top1']['mean']:.4f}"
                     + (f" (least: {_who(worst)}, {worst['top1']['mean']:.4f})" if worst is not best else ""))
    fast, slow = _best(groups, "infer", max), _best(groups, "infer", min)
    if fast:
        lines.append(f"- fastest at inference: {_who(fast)}, {fast['infer']['mean']:.0f} images/s"
                     + (f" ({fast['infer']['mean'] / slow['infer']['mean']:.1f}x the slowest, {_who(slow)}, "
                        f"{slow['infer']['mean']:.0f} images/s)" if slow is not fast else ""))
    else:
        lines.append("- inference images/s was not measured (no timed batches); raise data.max_test_per_class")
    small, big = _best(groups, "params", min), _best(groups, "params", max)
    if small:
        lines.append(f"- smallest: {_who(small)}, {small['params']['mean'] / 1e6:.2f} M parameters"
                     + (f" ({big['params']['mean'] / small['params']['mean']:.1f}x fewer than {_who(big)}, "
                        f"{big['params']['mean'] / 1e6:.2f} M)" if big is not small else ""))
    rand = sorted({g["point.model.backbone"] for g in groups if weights_label(g["point.model.weights"]) == RANDOM_INIT})
    if rand and len(rand) == len({g["point.model.backbone"] for g in groups}):
        lines.append("- every backbone ran from random init (no weights file): the accuracies are random-feature "
                     "baselines and do not measure transfer; images/s and parameters do not depend on the weights")
    elif rand:
        lines.append(f"- {', '.join(rand)} ran from random init (no weights file): their accuracy is a random-feature "
                     "baseline and does not measure transfer; compare accuracy only among rows with a weights file")
    return lines


def _plot(groups: list[dict], out: str) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for g in groups:
        if g["top1"]["mean"] is None or g["infer"]["mean"] is None:
            continue
        rand = weights_label(g["point.model.weights"]) == RANDOM_INIT
        ax.errorbar([g["infer"]["mean"]], [g["top1"]["mean"]], yerr=[g["top1"]["std"]], marker="o", capsize=3,
                    color="tab:gray" if rand else "tab:blue", mfc="white" if rand else "tab:blue")
        ax.annotate(f"{g['point.model.backbone']} ({g['backend']})", (g["infer"]["mean"], g["top1"]["mean"]),
                    textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.margins(x=0.25, y=0.1)
    ax.set_xlabel("inference images/s (log)")
    ax.set_ylabel("test top-1")
    ax.grid(alpha=0.3)
    ax.set_title("Backbones as frozen feature extractors (hollow: random init)")
    return save_figure(fig, out, "backbone_table")


def run(ctx: StudyContext, args: argparse.Namespace) -> str:
    if args.size < 1:
        raise SweepError(f"--size {args.size}: give the training images per class as an integer >= 1, e.g. 100")
    check_overrides(ctx.overrides)
    backbones = parse_backbones(args.backbones)
    weights = parse_weights(args.weights, backbones)
    data = ctx.sweep("trials", points(backbones, weights, args.size, ctx.image_size))
    keys = ["point.model.backbone", "point.model.image_size", "point.model.weights", "backend"]
    groups = group(data["rows"], keys, METRICS)
    plot = _plot(groups, ctx.out)
    sizes = {b: input_size(b, ctx.image_size) for b in backbones}
    lines = [f"# Study: backbone table ({CLAIM})", "",
             f"Recipe feature_extraction ({RECIPE_POINTS['feature_extraction']['recipe.epochs']} epochs of the head on "
             f"the frozen backbone, features cached), {args.size} training images per class, seeds {ctx.seeds}, "
             f"backends {', '.join(ctx.backends)}; input side {ctx.image_size} px, raised to the registry's minimum "
             f"where larger ({', '.join(f'{b} {s} px' for b, s in sizes.items() if s != ctx.image_size) or 'none'}); "
             f"options of every trial: `{' '.join(ctx.overrides) or '(none)'}`.", "",
             *md_table(HEADER, table_rows(groups)), "",
             "Measured columns: mean ± std over seeds of test top-1; means of end-to-end inference images/s, the head "
             "phase's training images/s (on cached features; '-' when too few steps were timed), all parameters of the "
             "model (trainable + frozen) and the trial's wall time. ImageNet columns: the Keras Applications table "
             "(https://keras.io/api/applications/; parameters there include the 1000-class top, depth counts the "
             f"layers with parameters). Weights '{RANDOM_INIT}': no pretrained file was given (no ImageNet download "
             "here), so that row's accuracy is not a transfer result.", "",
             f"![test top-1 vs inference images/s]({plot})", "", "## Verdict", "", *verdict(groups)]
    if ctx.incomplete:
        lines += ["", f"Trials that did not complete: {', '.join(ctx.incomplete)} (see trials/sweep.md)."]
    return write_report(ctx.out, lines)
