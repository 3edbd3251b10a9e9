"""What every study shares (keras-free): the study context that runs sweeps through
:mod:`kbench.sweep` (Ray), the base config, the recipes compared, and plots.

A study module (``kbench/studies/<name>.py``) defines ``NAME``, ``HELP``, ``CLAIM`` (the
seed article's claim it tests), ``add_arguments(parser)`` and ``run(ctx, args) -> str``
(the path of its ``report.md``). ``run`` calls :meth:`StudyContext.sweep` once per stage
(each stage is an ordinary, resumable sweep folder ``OUT/<stage>/``), then writes the
report and PNG plots under ``OUT`` from the rows alone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import yaml

from kbench.sweep import engine, store
from kbench.sweep.cli import check_trials, show_row
from kbench.sweep.report import value, write_sweep_report
from kbench.sweep.spec import Sweep, SweepError

#: The study base config: VGG16 on CIFAR-10 at 32x32 (the small default; --image-size 64
#: is the reference scenario), a GAP head, 100 test images per class, quiet output.
BASE_CONFIG = {
    "data": {"batch_size": 64, "max_test_per_class": 100},
    "model": {"backbone": "vgg16", "image_size": 32, "head": "mlp"},
    "recipe": {"learning_rate": 0.001},
    "trainer": {"enable_progress_bar": False, "inference_batches": 5},
}

#: The three ways to train compared by the data-efficiency and time studies: the head on
#: the frozen backbone, the head then the top block unfrozen (10x lower LR), everything
#: from random weights. Epochs chosen so each converges on ~1,000 images at 32x32 on a CPU.
RECIPE_POINTS = {
    "feature_extraction": {"recipe.name": "feature_extraction", "recipe.epochs": 10},
    "fine_tune": {"recipe.name": "fine_tune", "recipe.epochs": 6, "recipe.fine_tune_epochs": 4},
    "scratch": {"recipe.name": "scratch", "recipe.epochs": 10},
}
EPOCH_KEYS = ("recipe.epochs", "recipe.fine_tune_epochs")
#: kbench.run options that cut a study's protocol short: allowed (tiny trial runs), named at
#: the top of the report, since the epochs and sizes the report states are then not what ran.
PROTOCOL_CUTS = ("trainer.max_epochs", "trainer.max_steps", "trainer.limit_train_batches",
                 "trainer.limit_val_batches", "trainer.limit_test_batches", "trainer.fast_dev_run")
RECIPE_COLORS = {"feature_extraction": "tab:blue", "fine_tune": "tab:green", "scratch": "tab:red"}


def scaled_recipe(name: str, per_class: int, *, classes: int = 10, val_split: float = 0.1, batch_size: int = 64,
                  min_steps: int = 100) -> dict:
    """The sweep point of recipe ``name`` (:data:`RECIPE_POINTS`) with every phase's epochs
    multiplied by the smallest integer that gives at least ``min_steps`` optimizer steps
    in all (``per_class`` x ``classes`` images, ``val_split`` held out, ``batch_size``), so
    that a small training set is not also a handful of steps (10 images per class at batch
    64 is 2 steps per epoch: 20 steps in 10 epochs). The base epochs are the minimum."""
    point = dict(RECIPE_POINTS[name])
    train = max(1, round(per_class * classes * (1 - val_split)))
    steps = -(-train // batch_size) * sum(point.get(k, 0) for k in EPOCH_KEYS)
    factor = max(1, -(-min_steps // max(1, steps)))
    return {k: v * factor if k in EPOCH_KEYS else v for k, v in point.items()}


def deep_merge(base: dict, extra: dict) -> dict:
    """``base`` with ``extra`` merged in, nested mappings merged key by key (new dict)."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@dataclass
class StudyContext:
    """Where a study writes and how its trials run (the common command-line options).

    Attributes:
        out: the study folder (stages in ``out/<stage>/``, report and plots in ``out``).
        backends, seeds: every trial runs on each backend with each seed.
        overrides: ``kbench.run`` options after ``--`` (``--data.root``, ``--model.weights``...).
        image_size: ``model.image_size`` of the base config.
        sweep_options: keyword arguments of :func:`kbench.sweep.engine.run_sweep`
            (address, num_cpus, cpus_per_trial, gpus_per_trial, retry_failed, timeout_s).
        report_only: :meth:`sweep` reads the stored rows and runs nothing.
        incomplete: ids of the trials that did not complete, over all stages.
        warnings: lines the CLI puts at the top of the report (options that cut the protocol).
    """

    out: str
    backends: list[str]
    seeds: list[int]
    overrides: list[str] = field(default_factory=list)
    image_size: int = 32
    sweep_options: dict = field(default_factory=dict)
    report_only: bool = False
    incomplete: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def config(self, stage: str, extra: dict | None = None) -> tuple[str, str]:
        """Write the stage's config (:data:`BASE_CONFIG` + image size + ``extra``) to
        ``out/<stage>.yaml``; returns (path, text)."""
        cfg = deep_merge(deep_merge(BASE_CONFIG, {"model": {"image_size": self.image_size}}), extra or {})
        text = yaml.safe_dump(cfg, sort_keys=False)
        os.makedirs(self.out, exist_ok=True)
        path = os.path.join(self.out, f"{stage}.yaml")
        with open(path, "w") as f:
            f.write(text)
        return path, text

    def check_overrides(self, points: Sequence[dict]) -> None:
        """Refuse a ``--`` option the study sets per trial (it would be silently overridden,
        and the report would describe it as applied); note the options that cut the protocol.

        Raises:
            kbench.sweep.spec.SweepError: names the option.
        """
        given = {a[2:].split("=", 1)[0] for a in self.overrides if a.startswith("--")}
        clash = sorted(given & {k for p in points for k in p})
        if clash:
            raise SweepError(f"the study sets {', '.join(clash)} per trial; remove --{clash[0]} from the options "
                             "after -- (use the study's own options, see --help)")
        for key in sorted(given & set(PROTOCOL_CUTS)):
            line = (f"**Protocol cut short:** `--{key}` was given after `--`, so the epochs, steps or batches stated "
                    "below are upper bounds, not what ran; do not read this report as the study's result.")
            if line not in self.warnings:
                self.warnings.append(line)

    def sweep(self, stage: str, points: Sequence[dict], *, config: dict | None = None, seeds: Sequence[int] | None = None,
              backends: Sequence[str] | None = None, overrides: Sequence[str] = (), on_row=None) -> dict:
        """Run one stage as a sweep into ``out/<stage>/`` (resumable) and return its rows
        data; trials that did not complete are named in :attr:`incomplete`.

        Raises:
            kbench.sweep.spec.SweepError: a ``--`` option the study sets or one kbench.run
                refuses (checked before anything runs), Ray missing/unreachable, a bad resource request, or
                (``report_only``) no rows stored for the stage.
        """
        self.check_overrides(points)
        path, text = self.config(stage, config)
        sweep = Sweep(path, text, [dict(p) for p in points], list(seeds if seeds is not None else self.seeds),
                      list(backends or self.backends), [*overrides, *self.overrides], stage)
        folder = os.path.join(self.out, stage)
        if not self.report_only:
            check_trials(sweep)
        data = store.load_rows(folder) if self.report_only else \
            engine.run_sweep(sweep, folder, on_row=on_row or show_row, **self.sweep_options)
        write_sweep_report(data, folder)
        self.incomplete += [r["trial"] for r in data["rows"] if r.get("status") != "completed"]
        return data


def completed(rows: Sequence[dict]) -> list[dict]:
    """The completed rows."""
    return [r for r in rows if r.get("status") == "completed"]


def top1(row: dict) -> float | None:
    """Test top-1 accuracy of a row."""
    return value(row, "results.test_accuracy")


def pyplot():
    """matplotlib's pyplot on the Agg backend (PNG files, no display).

    Raises:
        kbench.sweep.spec.SweepError: matplotlib is not installed.
    """
    try:
        import matplotlib
    except ImportError:
        from kbench.sweep.spec import SweepError

        raise SweepError("matplotlib is not installed; pip install 'kbench[report]' for the study plots") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out: str, name: str) -> str:
    """Save ``fig`` as ``out/<name>.png`` (120 dpi) and close it; returns the file name."""
    fig.tight_layout()
    fig.savefig(os.path.join(out, f"{name}.png"), dpi=120)
    pyplot().close(fig)
    return f"{name}.png"


def write_report(out: str, lines: Sequence[str]) -> str:
    """Write ``out/report.md``; returns its path."""
    path = os.path.join(out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines).rstrip() + "\n")
    return path
