"""Weight averaging for a fit: EMA (``recipe.ema``) and SWA (``recipe.swa_epochs``).

**EMA** (Polyak averaging; timm ``--model-ema``) is Keras's own: an optimizer built
with ``use_ema=True, ema_momentum=recipe.ema`` keeps ``average = m * average + (1 - m)
* weight`` of every variable it trains after each update (the first update copies the
weight), as optimizer variables, so ``optimizer.npz`` of a checkpoint holds it. kbench
puts the averaged weights in the model for what is judged and kept
(:class:`EmaWeights`, two callbacks around the checkpoint callbacks):

* validation at each epoch end runs on the EMA weights (as Keras
  ``SwapEMAWeights`` does; the swap here copies through NumPy, exact on every backend);
* the epoch checkpoint is written while they are swapped in: ``model.npz`` holds the
  EMA weights (what ``restore_best`` tests and ``model.keras`` keeps) and the
  optimizer's average slots hold the raw training weights, flagged by
  ``"ema_in_model": true`` in ``state.json``; resuming inside the phase swaps them
  back after restoring the optimizer (:meth:`Averaging.optimizer_restored`), so
  training continues from the raw weights with the same average;
* after the checkpoint the raw weights go back for training. Keras's ``fit`` ends
  with ``optimizer.finalize_variable_values``, which copies the averages into the
  model: each phase therefore ends with the EMA weights, and the next phase (a fresh
  optimizer, its average starting from those weights) trains on from them. The
  one-epoch ``fit`` that finishes a resumed epoch undoes that copy
  (:meth:`Averaging.tail_fit`), since its phase goes on.

Keras averages trainable variables only: BatchNormalization moving statistics are
those of the raw training (timm's ``ModelEmaV2`` averages them too). With
``accumulate_steps`` the average is updated at every micro-batch (Keras's
``BaseOptimizer.apply``).

**SWA** (Izmailov et al. 2018, "Averaging Weights Leads to Wider Optima and Better
Generalization"; ``torch.optim.swa_utils`` semantics): an equal-weight running average
of the trainable weights at the end of each of the last ``swa_epochs`` epochs of the
last phase that trains (:class:`SwaAverage`, updated by :class:`SwaCallback` before the
epoch checkpoint, which saves it as ``swa.npz`` with ``"swa"`` in ``state.json``).
After that phase the average replaces the weights, the moving statistics of every
trainable BatchNormalization layer are recomputed with one pass over the training data (:func:`recalibrate_bn`, ``torch.optim.swa_utils.update_bn``),
the average is validated, and it is what is tested and saved (``results.json``
``swa``), not the best epoch.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import keras
import numpy as np

from kbench.recipes.policy import check_averaging
from kbench.trainer import checkpoint


def _numpy(v) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(v.value if hasattr(v, "value") else v))


def ema_optimizers(optimizer) -> list:
    """The built Keras optimizers inside ``optimizer`` that keep an EMA (``use_ema``):
    itself, the inner one of a ``LossScaleOptimizer``, or the members of a
    ``MultiOptimizer`` (the lookup Keras's ``SwapEMAWeights`` does)."""
    opt = getattr(optimizer, "inner_optimizer", optimizer)
    members = getattr(opt, "optimizers", None) or [opt]
    return [o for o in members if getattr(o, "use_ema", False) and getattr(o, "built", False)]


def swap_ema(optimizer) -> None:
    """Exchange the values of the variables ``optimizer`` trains and of their EMA copies
    (``_model_variables_moving_average``, Keras's names), exactly, on any backend."""
    for opt in ema_optimizers(optimizer):
        for var, avg in zip(opt._trainable_variables, opt._model_variables_moving_average):
            if avg is not None:
                raw = _numpy(var)
                var.assign(_numpy(avg))
                avg.assign(raw)


class EmaWeights:
    """EMA weights in the model at validation and at the epoch checkpoint, raw
    weights while training (see the module docstring).

    Put :attr:`before` ahead of the checkpoint callbacks and :attr:`after` behind
    them in a phase's callback list.

    Attributes:
        in_model: the EMA weights are in the model now (the raw ones in the
            optimizer's average slots).
        keep_raw: the running ``fit`` is the tail of a resumed epoch: keep a copy of
            the raw weights at its end (:attr:`raw`), which Keras's
            ``finalize_variable_values`` then overwrites with the EMA.
        raw: that copy (NumPy arrays, in ``model.trainable_variables`` order), or None.
    """

    def __init__(self):
        self.in_model, self.keep_raw = False, False
        self.raw: list | None = None
        self.before, self.after = _EmaIn(self), _EmaOut(self)

    def put(self, model: keras.Model, ema: bool) -> None:
        """Have the EMA (``ema``) or the raw weights in ``model``'s trainable variables."""
        if self.in_model != ema:
            swap_ema(model.optimizer)
            self.in_model = ema


class _EmaIn(keras.callbacks.Callback):
    def __init__(self, owner: EmaWeights):
        super().__init__()
        self.owner = owner

    def on_test_begin(self, logs=None):  # validation inside fit (no standalone evaluate gets this callback)
        self.owner.put(self.model, True)

    def on_epoch_end(self, epoch, logs=None):
        self.owner.put(self.model, True)


class _EmaOut(keras.callbacks.Callback):
    def __init__(self, owner: EmaWeights):
        super().__init__()
        self.owner = owner

    def on_epoch_end(self, epoch, logs=None):
        self.owner.put(self.model, False)
        if self.owner.keep_raw:
            self.owner.raw = [_numpy(v) for v in self.model.trainable_variables]


class SwaAverage:
    """Equal-weight running average of a model's trainable weights, one sample per
    averaged epoch: ``avg += (w - avg) / n`` (``torch.optim.swa_utils.AveragedModel``'s
    default), in float32 NumPy arrays on the host.

    Attributes:
        epochs: the global epochs (1-based) averaged so far.
        index: positions in ``model.variables`` of the averaged variables.
        arrays: the average, one array per averaged variable (None before the first epoch).
    """

    def __init__(self):
        self.epochs: list[int] = []
        self.index: list[int] = []
        self.arrays: list[np.ndarray] | None = None

    def update(self, model: keras.Model, epoch: int) -> None:
        """Add ``model``'s trainable weights at the end of global epoch ``epoch`` (1-based)."""
        if self.arrays is None:
            where = {id(v): i for i, v in enumerate(model.variables)}
            self.index = [where[id(v)] for v in model.trainable_variables]
            self.arrays = [_numpy(model.variables[i]).astype(np.float32) for i in self.index]
        else:
            n = len(self.epochs) + 1
            for a, i in zip(self.arrays, self.index):
                a += (_numpy(model.variables[i]).astype(np.float32) - a) / np.float32(n)
        self.epochs.append(epoch)

    def assign_to(self, model: keras.Model) -> None:
        """Put the average into ``model``'s averaged variables."""
        for a, i in zip(self.arrays, self.index):
            model.variables[i].assign(a)

    def state(self) -> dict:
        """``state.json`` ``swa``: ``{"epochs", "index"}`` (the arrays go to ``swa.npz``)."""
        return {"epochs": list(self.epochs), "index": list(self.index)}

    def load(self, ckpt: str, saved: dict) -> None:
        """Take the average of checkpoint ``ckpt`` (``saved`` = its ``state.json``), if it has one."""
        swa = saved.get("swa")
        if swa and swa.get("epochs"):
            self.epochs, self.index = list(swa["epochs"]), list(swa["index"])
            self.arrays = [a.astype(np.float32) for a in checkpoint.load_arrays(ckpt, "swa")]


class SwaCallback(keras.callbacks.Callback):
    """Adds ``model``'s weights to ``average`` at the end of every epoch from global
    epoch ``first`` (0-based, as Keras counts) on. Put it before the epoch checkpoint."""

    def __init__(self, average: SwaAverage, model: keras.Model, first: int):
        super().__init__()
        self.average, self.e2e, self.first = average, model, first

    def on_epoch_end(self, epoch, logs=None):
        if epoch >= self.first:
            self.average.update(self.e2e, epoch + 1)


def recalibrate_bn(net: keras.Model, batches) -> int:
    """Recompute the moving statistics of ``net``'s trainable BatchNormalization layers
    with one pass over ``batches`` (a sequence of ``(x, y)``), as
    ``torch.optim.swa_utils.update_bn`` does: the moving mean and variance become the
    average over batches of each batch's mean and (biased, Keras's) variance (momentum
    ``(n-1)/n`` at batch ``n``; torch's ``momentum=None``). Frozen layers
    (``trainable=False``: Keras runs them in inference mode) keep theirs; nested models
    are searched. Runs ``net`` eagerly with ``training=True`` (dropout active, as torch;
    Keras 3 passes the outer ``training`` to nested models, as ``fit`` does).

    Returns:
        The number of layers whose statistics changed.
    """
    layers = [la for la in net._flatten_layers(include_self=False, recursive=True)
              if isinstance(la, keras.layers.BatchNormalization) and la.trainable]
    if not layers or not len(batches):
        return 0
    before = [_numpy(la.moving_mean) for la in layers]
    momenta = [la.momentum for la in layers]
    try:
        for n in range(1, len(batches) + 1):
            for la in layers:
                la.momentum = (n - 1) / n
            net(batches[n - 1][0], training=True)
    finally:
        for la, m in zip(layers, momenta):
            la.momentum = m
    return sum(not np.array_equal(b, _numpy(la.moving_mean)) for b, la in zip(before, layers))


class Averaging:
    """The weight averaging of one ``Trainer.fit``: the phases' EMA callbacks and the
    SWA average (see the module docstring).

    Args:
        recipe: the :class:`~kbench.recipes.Recipe` (``ema``, ``swa_epochs``, phases).
        plans: the fit's :class:`~kbench.trainer.plan.PhasePlan` list; SWA runs in the
            last one with epochs, over its last ``min(swa_epochs, epochs)`` epochs.
        log: where to say what was averaged.

    Raises:
        KbenchError: ``swa_epochs`` more than the last training phase's epochs, or
            ``ema`` and ``swa_epochs`` both set (:func:`~kbench.recipes.policy.check_averaging`).
    """

    def __init__(self, recipe, plans: list, log: Callable[[str], None] = print):
        check_averaging(recipe.phases, recipe.swa_epochs, recipe.ema)
        self.ema, self.log = recipe.ema, log
        self.ema_weights: EmaWeights | None = None
        trained = [p for p in plans if p.epochs > 0]
        self.swa_plan = trained[-1] if recipe.swa_epochs and trained else None
        self.swa_epochs = min(recipe.swa_epochs, self.swa_plan.epochs) if self.swa_plan else 0
        self.swa = SwaAverage()
        if self.swa_plan and self.swa_epochs < recipe.swa_epochs:
            log(f"[yellow]SWA: phase {self.swa_plan.phase.name!r} runs {self.swa_plan.epochs} epoch(s) here "
                f"(trainer caps), so SWA averages {self.swa_epochs}, not recipe.swa_epochs={recipe.swa_epochs}")

    def callbacks(self, plan, start_epoch: int, model: keras.Model) -> tuple[list, list]:
        """``(before, after)``: callbacks for phase ``plan`` (first started after global
        epoch ``start_epoch``; ``model`` = the end-to-end model) to put ahead of and
        behind the checkpoint callbacks."""
        self.ema_weights = EmaWeights() if self.ema is not None else None
        before, after = [], []
        if self.ema_weights:
            before, after = [self.ema_weights.before], [self.ema_weights.after]
        if self.swa_plan is not None and plan.index == self.swa_plan.index:
            before.append(SwaCallback(self.swa, model, start_epoch + plan.epochs - self.swa_epochs))
        return before, after

    def state(self) -> dict:
        """What ``state.json`` records: ``ema_in_model`` with EMA, ``swa`` once SWA averaged an epoch."""
        out = {}
        if self.ema is not None:
            out["ema_in_model"] = bool(self.ema_weights and self.ema_weights.in_model)
        if self.swa.epochs:
            out["swa"] = self.swa.state()
        return out

    def arrays(self) -> dict:
        """The checkpoint's extra array files: ``{"swa": average}`` once SWA averaged an epoch."""
        return {"swa": self.swa.arrays} if self.swa.epochs else {}

    def resume(self, ckpt: str, saved: dict) -> None:
        """Take the SWA average of the checkpoint a run resumes from."""
        self.swa.load(ckpt, saved)

    def optimizer_restored(self, net: keras.Model, saved: dict) -> None:
        """After a checkpoint's optimizer slots were assigned to ``net.optimizer``: if the
        checkpoint was written with the EMA weights in the model, swap the raw ones back."""
        if saved.get("ema_in_model"):
            swap_ema(net.optimizer)

    @contextmanager
    def tail_fit(self):
        """Around the ``fit`` that finishes a resumed epoch: keep the raw weights of its
        end, for :meth:`continue_phase`."""
        if self.ema_weights:
            self.ema_weights.keep_raw, self.ema_weights.raw = True, None
        try:
            yield
        finally:
            if self.ema_weights:
                self.ema_weights.keep_raw = False

    def continue_phase(self, net: keras.Model) -> None:
        """Before the phase's next ``fit`` after :meth:`tail_fit`: put back the raw weights
        that Keras's ``finalize_variable_values`` replaced with the EMA at the tail's end
        (the phase goes on, as in a run that was not interrupted)."""
        raw = self.ema_weights.raw if self.ema_weights else None
        if raw is not None:
            for v, a in zip(net.trainable_variables, raw):
                v.assign(a)
            self.ema_weights.raw = None

    def apply_swa(self, model: keras.Model, sequences: Callable[[], tuple], evaluate) -> dict | None:
        """Put the SWA average into ``model`` (end to end), recalibrate BatchNormalization
        and validate: ``sequences() -> (net, train, val)`` gives the SWA phase's trained
        model and data (``val`` None: no validation split), ``evaluate(net, seq)`` its
        ``{"loss", "accuracy"}``.

        Returns:
            ``results.json`` ``swa``: ``{"epochs", "bn_layers_recalibrated", "val_loss",
            "val_accuracy"}``, or None when SWA is off or averaged no epoch.
        """
        if self.swa_plan is None or not self.swa.epochs:
            if self.swa_plan is not None:
                self.log("[yellow]SWA: no epoch of the last phase was averaged (stopped early); testing the best "
                         "epoch instead")
            return None
        self.swa.assign_to(model)
        net, train, val = sequences()
        n_bn = recalibrate_bn(net, train)
        out = evaluate(net, val) if val is not None else {}
        self.log(f"SWA: average of epochs {self.swa.epochs}, {n_bn} BatchNormalization layer(s) recalibrated"
                 + (f", val_accuracy {out['accuracy']:.4f}" if out else ""))
        return {"epochs": list(self.swa.epochs), "bn_layers_recalibrated": n_bn,
                "val_loss": out.get("loss"), "val_accuracy": out.get("accuracy")}

    def results(self, swa: dict | None) -> dict:
        """``results.json`` keys: ``ema`` (the momentum; the tested weights are the EMA) when
        EMA is on, ``swa`` (what :meth:`apply_swa` returned) when SWA is on."""
        out = {"ema": self.ema} if self.ema is not None else {}
        return {**out, "swa": swa} if self.swa_plan is not None else out


__all__ = ["Averaging", "EmaWeights", "SwaAverage", "SwaCallback", "ema_optimizers", "recalibrate_bn", "swap_ema"]
