"""The learning-rate finder (LR range test): an exponential sweep of the learning rate
over a phase's trainable set, a suggestion from the loss curve, ``lr_find.csv`` /
``.json`` / ``.png``.

Method (Leslie N. Smith, "Cyclical Learning Rates for Training Neural Networks", 2015,
as fastai's ``Learner.lr_find`` does it, fastai/callback/schedule.py, fastai >= 2.5):

* the learning rate grows geometrically from ``start_lr`` to ``end_lr`` over ``steps``
  optimizer steps: a ``keras.optimizers.schedules.ExponentialDecay(start_lr,
  decay_steps=steps - 1, decay_rate=end_lr / start_lr)`` (step ``i`` runs at
  ``start_lr * (end_lr / start_lr) ** (i / (steps - 1))``, so the last one at
  ``end_lr``; fastai's last step stops one ratio short of ``end_lr``);
* one ``Model.train_on_batch`` per step on the phase's training batches (in the
  phase's first-epoch order, cycled when the epoch is shorter than ``steps``);
  ``train_on_batch`` resets the metrics on every call on all three backends, so its
  ``loss`` is that batch's loss, not ``fit``'s running epoch mean;
* the loss is smoothed as fastai's ``AvgSmoothLoss`` does (exponential moving average,
  beta 0.98, divided by ``1 - beta ** (i + 1)`` to remove the start-up bias), and the
  sweep stops after the first step whose smoothed loss exceeds 4x the best so far or
  is not finite (fastai ``stop_div``);
* afterwards every variable of the end-to-end model (weights, BatchNorm statistics,
  dropout seed-generator states) is assigned back from a snapshot taken before, also
  when the sweep is interrupted, so what runs next runs as if no sweep had happened.

The suggestion is fastai's ``valley`` rule (:func:`valley_index`) on the smoothed
curve without its first ``steps // 10`` and last 5 points (as fastai); the steepest
descent point (fastai ``steep``, :func:`steepest_index`) is reported beside it.

:func:`lr_find` runs it on one phase of a recipe with the trainer's own parts: the
phase's trainable set (:meth:`~kbench.trainer.phase.PhaseRun.apply`), its data and
model (:meth:`~kbench.trainer.phase.PhaseRun.data`: the suffix above the frozen-prefix
cache cut on cached features when the cache applies, else the end-to-end model on
images) and the phase's optimizer (:meth:`~kbench.trainer.loop.LoopTools.compile`).
``learning_rate: auto`` in a phase uses :func:`auto_learning_rate`.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import keras
import numpy as np

from kbench import KbenchError
from kbench.trainer.cache import FeatureCache
from kbench.trainer.plan import PhasePlan, cut_for
from kbench.trainer.state import FitRun

if TYPE_CHECKING:
    from kbench.data import DataModule
    from kbench.models import TransferModel
    from kbench.recipes import Recipe
    from kbench.trainer.phase import PhaseRun
    from kbench.trainer.trainer import Trainer

START_LR, END_LR = 1e-7, 10.0  # fastai's defaults
BETA = 0.98  # smoothing of the loss (fastai AvgSmoothLoss)
DIVERGED = 4.0  # stop when the smoothed loss exceeds this times the best (fastai stop_div)
RULE = "valley"
RULE_SOURCE = ("fastai's valley rule (fastai/callback/schedule.py `valley`, fastai >= 2.5): the middle of the "
               "longest stretch over which the smoothed loss keeps falling")
FOUND_BY = f"lr_find {RULE}"  # results.json learning_rate_found_by of a learning_rate: auto phase
CSV_COLUMNS = ("step", "learning_rate", "loss", "smoothed_loss")


@dataclass
class LRFindResult:
    """The outcome of one sweep.

    Attributes:
        lrs: ``float64 (n,)`` learning rate of each step run (n <= steps).
        losses: ``float64 (n,)`` training loss of each step's batch (before its update).
        smoothed: ``float64 (n,)`` the debiased moving average of ``losses``.
        suggestion: the suggested learning rate (rule :attr:`rule`).
        steepest: the learning rate of steepest descent of the smoothed loss.
        rule: ``"valley"``; ``source``: where the rule comes from.
        steps: steps asked for; ``diverged``: the sweep stopped early (loss blew up).
        csv_path, json_path, png_path: the files written (``png_path`` None without matplotlib).
    """

    lrs: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    suggestion: float
    steepest: float
    rule: str
    source: str
    steps: int
    diverged: bool
    csv_path: str | None = None
    json_path: str | None = None
    png_path: str | None = None


def smooth(losses, beta: float = BETA) -> np.ndarray:
    """Debiased exponential moving average of ``losses`` (fastai ``AvgSmoothLoss``):
    ``avg_i = beta * avg_{i-1} + (1 - beta) * loss_i``, ``smoothed_i = avg_i / (1 - beta ** (i + 1))``."""
    out, avg = np.empty(len(losses)), 0.0
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * float(loss)
        out[i] = avg / (1 - beta ** (i + 1))
    return out


def valley_index(losses) -> int:
    """Index of fastai's ``valley`` suggestion on a loss curve (fastai/callback/schedule.py,
    fastai >= 2.5): the longest valley is the longest strictly decreasing subsequence
    (``run[i]`` = its length ending at ``i``); the valley grows whenever a point ends a
    longer one (its start is set from that point's length at that moment, as fastai
    does); the suggestion lies ``int(len/3) + int(len/6)`` points after the valley's
    start, i.e. about its middle. Clamped to 0 (fastai's formula gives -1 for a curve
    of 2 falling points)."""
    n = len(losses)
    run, start, end = [1] * n, 0, 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
            if run[end] < run[i]:
                start, end = i - run[i], i
    third = (end - start) / 3
    return max(0, start + int(third) + int(third / 2))


def steepest_index(lrs, losses) -> int:
    """Index of the steepest descent of ``losses`` against ``log(lrs)`` (fastai ``steep``:
    the left end of the most negative finite difference); 0 for fewer than 2 points."""
    if len(losses) < 2:
        return 0
    grads = np.diff(np.asarray(losses, float)) / np.diff(np.log(np.asarray(lrs, float)))
    return int(np.argmin(grads))


def suggest(lrs: np.ndarray, smoothed: np.ndarray, steps: int) -> tuple[float, float]:
    """``(valley, steepest)`` learning rates from a sweep of ``steps`` asked-for steps:
    fastai skips the first ``steps // 10`` and the last 5 points and everything from
    the first non-finite one; with fewer than 2 points left the whole finite curve is used.

    Raises:
        KbenchError: not even the first loss was finite.
    """
    finite = int(np.argmin(np.isfinite(smoothed))) if not np.all(np.isfinite(smoothed)) else len(smoothed)
    if finite == 0:
        raise KbenchError(f"LR finder: the loss was not finite from the first step (learning rate {lrs[0]:.2e}); "
                          "lower start_lr or check the data and --trainer.precision (try float32)")
    lo, hi = steps // 10, min(len(smoothed) - 5, finite)
    if hi - lo < 2:
        lo, hi = 0, finite
    x, y = lrs[lo:hi], smoothed[lo:hi]
    return float(x[valley_index(y)]), float(x[steepest_index(x, y)])


def sweep(net: keras.Model, batches, compile_fn: Callable, variables: list, steps: int, start_lr: float = START_LR,
          end_lr: float = END_LR, check: Callable | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """The exponential learning-rate sweep (see the module docstring).

    Args:
        net: the model that trains (it is compiled here by ``compile_fn(net, schedule)``).
        batches: indexable ``(x, y)`` batches (e.g. a :class:`~kbench.data.BatchSequence`).
        variables: every variable to restore afterwards (the end-to-end model's).
        steps: optimizer steps (>= 2); ``start_lr`` < ``end_lr``, both > 0.
        check: called after every step (e.g. the signal guard's ``check``).

    Returns:
        ``(lrs, losses, smoothed, diverged)``: ``float64 (n,)`` arrays, n <= ``steps``.

    Raises:
        KbenchError: bad ``steps``, ``start_lr`` or ``end_lr``, or no batches.
    """
    if steps < 2 or not 0 < start_lr < end_lr or not len(batches):
        raise KbenchError(f"LR finder: needs steps >= 2, 0 < start_lr < end_lr and training batches; got "
                          f"steps={steps}, start_lr={start_lr}, end_lr={end_lr}, {len(batches)} batch(es)")
    schedule = keras.optimizers.schedules.ExponentialDecay(start_lr, decay_steps=steps - 1,
                                                           decay_rate=end_lr / start_lr)
    lrs = [float(keras.ops.convert_to_numpy(schedule(i))) for i in range(steps)]
    saved = [np.array(keras.ops.convert_to_numpy(v)) for v in variables]
    losses, avg, best, diverged = [], 0.0, math.inf, False
    try:
        compile_fn(net, schedule)
        for i in range(steps):
            x, y = batches[i % len(batches)]
            losses.append(float(net.train_on_batch(x, y, return_dict=True)["loss"]))
            avg = BETA * avg + (1 - BETA) * losses[-1]
            smoothed = avg / (1 - BETA ** (i + 1))
            best = min(best, smoothed)
            if check:
                check()
            if not math.isfinite(smoothed) or smoothed > DIVERGED * best:
                diverged = True
                break
    finally:
        for v, a in zip(variables, saved):
            v.assign(a)
    n = len(losses)
    return np.asarray(lrs[:n]), np.asarray(losses), smooth(losses), diverged


def write_outputs(result: LRFindResult, out_dir: str, stem: str = "lr_find", title: str = "") -> LRFindResult:
    """Write ``<stem>.csv`` (:data:`CSV_COLUMNS`), ``<stem>.json`` (suggestion, rule,
    steepest, the curve) and ``<stem>.png`` (loss and smoothed loss vs learning rate,
    log x, the suggestion marked; matplotlib Agg, skipped without matplotlib) into
    ``out_dir``; sets and returns ``result``'s paths."""
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, stem)
    with open(f"{base}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        w.writerows((i, f"{lr:.6e}", f"{loss:.6g}", f"{s:.6g}")
                    for i, (lr, loss, s) in enumerate(zip(result.lrs, result.losses, result.smoothed)))
    with open(f"{base}.json", "w") as f:
        json.dump({"suggestion": result.suggestion, "rule": result.rule, "source": result.source,
                   "steepest": result.steepest, "steps": result.steps, "steps_run": len(result.lrs),
                   "diverged": result.diverged, "start_lr": float(result.lrs[0]), "beta": BETA,
                   "stop_factor": DIVERGED}, f, indent=1, default=float)
        f.write("\n")
    result.csv_path, result.json_path = f"{base}.csv", f"{base}.json"
    try:
        result.png_path = _plot(result, f"{base}.png", title)
    except ImportError:
        result.png_path = None
    return result


def _plot(result: LRFindResult, path: str, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(result.lrs, result.losses, color="0.75", linewidth=1, label="loss per batch")
    ax.plot(result.lrs, result.smoothed, color="tab:blue", label=f"smoothed (EMA {BETA})")
    for lr, name, color in ((result.suggestion, f"{result.rule} {result.suggestion:.2e}", "tab:red"),
                            (result.steepest, f"steepest {result.steepest:.2e}", "tab:green")):
        ax.axvline(lr, color=color, linestyle="--", linewidth=1, label=name)
    finite = result.smoothed[np.isfinite(result.smoothed)]
    if len(finite):
        ax.set_ylim(min(finite.min(), np.nanmin(result.losses)) * 0.95, min(finite.max(), DIVERGED * finite.min()) * 1.05)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(title or "LR finder")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_sweep(pr: PhaseRun, out_dir: str, stem: str, steps: int | None = None, start_lr: float = START_LR,
              end_lr: float = END_LR) -> LRFindResult:
    """Sweep phase run ``pr`` after its :meth:`~kbench.trainer.phase.PhaseRun.data`
    (on ``pr.net`` and ``pr.train_seq``, with the recipe's optimizer; ``steps`` default
    ``recipe.lr_find_steps``), restore ``pr.run.e2e``'s variables and write the files
    ``<stem>.*`` into ``out_dir``."""
    recipe, tools = pr.run.recipe, pr.tools
    steps = steps or recipe.lr_find_steps

    def compile_fn(net, schedule):
        tools.compile(net, pr.run.model.from_logits, schedule, recipe.optimizer, recipe.weight_decay, recipe.momentum,
                      label_smoothing=recipe.label_smoothing, soft_targets=recipe.mixes)

    lrs, losses, smoothed, diverged = sweep(pr.net, pr.train_seq, compile_fn, pr.run.e2e.variables, steps,
                                            start_lr, end_lr, check=tools.guard.check)
    valley, steepest = suggest(lrs, smoothed, steps)
    result = LRFindResult(lrs, losses, smoothed, valley, steepest, RULE, RULE_SOURCE, steps, diverged)
    return write_outputs(result, out_dir, stem, title=f"LR finder: phase {pr.plan.phase.name}")


def auto_learning_rate(pr: PhaseRun) -> float:
    """The learning rate of a ``learning_rate: auto`` phase: the suggestion of a sweep on
    the phase (:func:`run_sweep`), logged, its files ``lr_find-<phase>.*`` written into the run folder."""
    name = pr.plan.phase.name
    pr.tools.log(f"phase {name}: learning_rate auto, running the LR finder ({pr.run.recipe.lr_find_steps} steps)")
    r = run_sweep(pr, pr.run.run_dir, f"lr_find-{name}")
    pr.tools.log(f"phase {name}: LR finder suggests {r.suggestion:.3g} ({RULE_SOURCE}; steepest descent at "
                 f"{r.steepest:.3g}{', stopped early: the loss diverged' if r.diverged else ''}); using it")
    return r.suggestion


def phase_index(recipe: Recipe, phase: str | int | None) -> int:
    """Index of ``phase`` (a name or an index; None = the first phase with epochs > 0) in ``recipe``.

    Raises:
        KbenchError: no such phase, or no phase with epochs (None).
    """
    names = [p.name for p in recipe.phases]
    if phase is None:
        first = next((i for i, p in enumerate(recipe.phases) if p.epochs > 0), None)
        if first is None:
            raise KbenchError(f"recipe {recipe.name!r} has no phase with epochs > 0; name one with --phase ({names})")
        return first
    if isinstance(phase, int) and not isinstance(phase, bool) and 0 <= phase < len(names):
        return phase
    if phase in names:
        return names.index(phase)
    raise KbenchError(f"unknown phase {phase!r}; recipe {recipe.name!r} has phases {names}")


def lr_find(model: TransferModel, datamodule: DataModule, recipe: Recipe, phase: str | int | None = None,
            trainer: Trainer | None = None, out_dir: str | None = None, steps: int | None = None,
            start_lr: float = START_LR, end_lr: float = END_LR) -> LRFindResult:
    """Run the LR finder on one phase of ``recipe`` and write ``lr_find.csv``, ``.json``, ``.png``.

    The phase trains what it would train in a fit (its trainable set, on the
    frozen-prefix cache when it applies, with the recipe's optimizer and the trainer's
    batch limits), starting from ``model``'s current weights (a later phase's sweep on
    a fresh model does not see what earlier phases would have trained). Every variable
    of the model and the layers' ``trainable`` flags are as before afterwards.

    Args:
        phase: a phase name or index (None: the first phase with epochs > 0).
        trainer: whose loop settings to use (batch limits, jit, console); None = a
            default :class:`~kbench.trainer.Trainer` (no process set-up, no progress bars).
        out_dir: folder for the files (None: a new ``<root>/<trainer name>-lr_find-<time>``).
        steps: sweep steps (None = ``recipe.lr_find_steps``); ``start_lr``, ``end_lr``: the range.

    Returns:
        The :class:`LRFindResult` (suggestion, steepest, curve, paths).

    Raises:
        KbenchError: unknown phase, a layer prefix that matches nothing, data errors,
            a loss not finite from the first step.
    """
    from kbench.recipes import check_train_layers
    from kbench.trainer.phase import PhaseRun
    from kbench.trainer.results import make_run_dir
    from kbench.trainer.trainer import Trainer

    trainer = trainer or Trainer(process_setup=False, enable_progress_bar=False)
    index = phase_index(recipe, phase)
    datamodule.setup()
    check_train_layers(model.base, recipe.phases)
    out_dir = out_dir or make_run_dir(trainer.default_root_dir, f"{trainer.name}-lr_find")
    run = FitRun(model, datamodule, recipe, out_dir, model.compose(base_training=None),
                 FeatureCache(model, datamodule, trainer.tools))
    plan = PhasePlan(index, recipe.phases[index], max(1, recipe.phases[index].epochs), cut_for(run, recipe.phases[index]))
    run.cache.plan([plan.cut] if plan.cut else [])
    flags = [(layer, layer.trainable) for layer in [model.base, *model.base.layers]]
    pr = PhaseRun(trainer, run, plan)
    try:
        pr.data(pr.apply()[0])
        return run_sweep(pr, out_dir, "lr_find", steps, start_lr, end_lr)
    finally:
        for layer, trainable in flags:
            layer.trainable = trainable


__all__ = ["CSV_COLUMNS", "FOUND_BY", "LRFindResult", "RULE", "RULE_SOURCE", "auto_learning_rate", "lr_find",
           "phase_index", "run_sweep", "smooth", "steepest_index", "suggest", "sweep", "valley_index",
           "write_outputs"]
