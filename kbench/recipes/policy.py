"""The fine-tuning toolkit's settings as data: learning-rate schedule, warm-up, layer-wise
learning rates and BatchNormalization mode per phase (:data:`PHASE_POLICY`, each also a
``recipe`` key that every phase inherits unless it sets its own), and the optimizer-wide
settings of the recipe (:data:`RECIPE_POLICY`: gradient accumulation, clipping, EMA, SWA,
LR-finder steps).

Keras-free: the config checks these values without a backend. The Keras objects they
describe are built in :mod:`kbench.recipes.schedules` (schedules, layer-wise optimizer)
and :mod:`kbench.recipes.optimizers`.

Sources of the defaults and shapes:

* ``cosine``: Keras ``CosineDecay`` (SGDR, Loshchilov & Hutter 2017), decaying to
  ``final_lr_fraction * learning_rate``; linear warm-up from 0 as Keras does.
* ``one_cycle``: fastai ``fit_one_cycle`` (Smith 2018): cosine warm-up from
  ``learning_rate / 25`` over the first 25 % of the updates, then cosine annealing to
  ``final_lr_fraction * learning_rate`` (fastai's ``div=25``, ``pct_start=0.25``).
* ``step``: ``learning_rate`` x 0.1 at 50 % and again at 75 % of the phase's updates
  (the ResNet / torchvision ``MultiStepLR`` milestones).
* ``layer_decay``: timm ``--layer-decay`` (BEiT, Bao et al. 2021): the head trains at
  ``learning_rate``, the top backbone block at ``learning_rate * decay``, the next block
  down at ``learning_rate * decay**2``, and so on.
* ``lr_mult``: fastai's ``slice`` / discriminative learning rates written as explicit
  multipliers by layer-name prefix.
* ``bn``: ``frozen`` keeps every BatchNormalization in inference mode with its moving
  statistics fixed (kbench's ``base_inference``); ``train`` (fastai ``train_bn``) lets the
  BatchNormalization layers of trainable blocks use batch statistics and update theirs.
"""

from __future__ import annotations

import math
import re

from kbench import KbenchError

SCHEDULES = ("constant", "cosine", "step", "one_cycle")
BN_MODES = ("frozen", "train")
# schedule constants (sources above)
ONE_CYCLE_DIV, ONE_CYCLE_PCT = 25.0, 0.25
STEP_MILESTONES, STEP_GAMMA = (0.5, 0.75), 0.1

# Per-phase settings: {key: default}. A phase's null inherits the recipe key of the same name.
PHASE_POLICY = {"schedule": "constant", "warmup_steps": 0, "warmup_epochs": 0.0, "final_lr_fraction": 0.0,
                "layer_decay": None, "lr_mult": None, "bn": None}
# Optimizer-wide recipe settings: {key: default}.
RECIPE_POLICY = {"accumulate_steps": 1, "clip_norm": None, "ema": None, "swa_epochs": 0, "lr_find_steps": 100}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_lr_mult(v, at: str) -> None:
    if not isinstance(v, dict) or not v:
        raise KbenchError(f"{at}: lr_mult must be a mapping of layer-name prefix to multiplier, e.g. "
                          f"{{block4: 0.1, block5: 0.3}}, or null; got {v!r}")
    for k, m in v.items():
        if not isinstance(k, str) or not k:
            raise KbenchError(f"{at}: lr_mult key {k!r} is not a layer-name prefix (a non-empty string)")
        if not _is_number(m) or m < 0:
            raise KbenchError(f"{at}: lr_mult[{k!r}] must be a number >= 0 (0 = do not update), got {m!r}")


def check_phase_policy(row: dict, at: str, epochs: int | None = None) -> None:
    """Check the :data:`PHASE_POLICY` values of a phase entry (or of the recipe section).

    Args:
        row: a mapping holding (some of) the keys; ``None`` values mean "inherit".
        at: where the values come from, for the message (``phase 2 of recipe.phases ('top')``).
        epochs: the phase's epochs, to refuse a warm-up longer than the phase.

    Raises:
        KbenchError: one message naming the first bad key and value and what to write.
    """
    s = row.get("schedule")
    if s is not None and s not in SCHEDULES:
        raise KbenchError(f"{at}: schedule {s!r} is not known; choose one of: {', '.join(SCHEDULES)}")
    ws, we = row.get("warmup_steps"), row.get("warmup_epochs")
    if ws is not None and (not _is_int(ws) or ws < 0):
        raise KbenchError(f"{at}: warmup_steps must be an integer >= 0 (optimizer updates), got {ws!r}")
    if we is not None and (not _is_number(we) or we < 0):
        raise KbenchError(f"{at}: warmup_epochs must be a number >= 0, got {we!r}")
    if ws and we:
        raise KbenchError(f"{at}: give warmup_steps ({ws}) or warmup_epochs ({we}), not both")
    if we and epochs and we >= epochs:
        raise KbenchError(f"{at}: warmup_epochs={we} is not shorter than the phase ({epochs} epoch(s)); use less "
                          f"than {epochs}")
    f = row.get("final_lr_fraction")
    if f is not None and (not _is_number(f) or not 0 <= f <= 1):
        raise KbenchError(f"{at}: final_lr_fraction must be a number in [0, 1] (the last learning rate as a "
                          f"fraction of learning_rate), got {f!r}")
    d = row.get("layer_decay")
    if d is not None and (not _is_number(d) or not 0 < d <= 1):
        raise KbenchError(f"{at}: layer_decay must be a number in (0, 1] (e.g. 0.7: each block down trains at "
                          f"0.7x the one above), or null for none; got {d!r}")
    if row.get("lr_mult") is not None:
        _check_lr_mult(row["lr_mult"], at)
    b = row.get("bn")
    if b is not None and b not in BN_MODES:
        raise KbenchError(f"{at}: bn {b!r} is not valid; choose frozen (BatchNormalization in inference mode) or "
                          "train (BatchNormalization of trainable blocks trains), or null")


def check_recipe_policy(cfg) -> None:
    """Check the :data:`RECIPE_POLICY` values of a ``recipe`` config section.

    Raises:
        KbenchError: one message naming the ``recipe.<key>``, its value and what to write.
    """
    a = cfg.accumulate_steps
    if not _is_int(a) or a < 1:
        raise KbenchError(f"recipe.accumulate_steps must be an integer >= 1 (1 = no accumulation), got {a!r}")
    c = cfg.clip_norm
    if c is not None and (not _is_number(c) or c <= 0):
        raise KbenchError(f"recipe.clip_norm must be a number > 0 (global gradient norm) or null, got {c!r}")
    e = cfg.ema
    if e is not None and (not _is_number(e) or not 0 < e < 1):
        raise KbenchError(f"recipe.ema must be a number in (0, 1), e.g. 0.999 (the EMA momentum), or null for "
                          f"no EMA; got {e!r}")
    s = cfg.swa_epochs
    if not _is_int(s) or s < 0:
        raise KbenchError(f"recipe.swa_epochs must be an integer >= 0 (0 = no SWA), got {s!r}")
    n = cfg.lr_find_steps
    if not _is_int(n) or n < 5:
        raise KbenchError(f"recipe.lr_find_steps must be an integer >= 5, got {n!r}")
    check_phase_policy({k: getattr(cfg, k) for k in PHASE_POLICY}, "recipe")


def check_averaging(phases: list, swa_epochs: int, ema: float | None) -> None:
    """Check the weight-averaging settings against the phases: SWA averages the last
    ``swa_epochs`` epochs of the last phase that trains (the last with epochs > 0), so it
    needs that many; EMA and SWA are two ways of averaging the same weights, so one at a time.

    Args:
        phases: the recipe's phases (objects with ``name`` and ``epochs``).
        swa_epochs: ``recipe.swa_epochs`` (0 = no SWA).
        ema: ``recipe.ema`` (None = no EMA).

    Raises:
        KbenchError: one message naming the values and what to write.
    """
    if not swa_epochs:
        return
    if ema is not None:
        raise KbenchError(f"recipe.ema={ema} and recipe.swa_epochs={swa_epochs} are both set; average the weights "
                          "one way: set recipe.ema: null or recipe.swa_epochs: 0")
    last = next((p for p in reversed(phases) if p.epochs > 0), None)
    if last is None or swa_epochs > last.epochs:
        where = f"the last phase that trains ({last.name!r}) has {last.epochs}" if last else "no phase trains"
        raise KbenchError(f"recipe.swa_epochs={swa_epochs} is more than the epochs SWA can average: {where}; "
                          f"use recipe.swa_epochs <= {last.epochs if last else 0}")


def inherit(row: dict, cfg) -> dict:
    """``row``'s :data:`PHASE_POLICY` values, each ``None`` replaced by the recipe's ``cfg.<key>``
    (and that ``None`` by the default)."""
    out = {}
    for k, default in PHASE_POLICY.items():
        v = row.get(k)
        if v is None:
            v = getattr(cfg, k, None)
        out[k] = default if v is None else v
    return out


def schedule_updates(phase, batches_per_epoch: int, epochs: int, accumulate: int = 1) -> tuple[int, int]:
    """``(updates, warmup)``: the optimizer updates ``phase`` makes over ``epochs`` epochs of
    ``batches_per_epoch`` batches with ``accumulate`` batches per update, and its warm-up
    in updates (``warmup_steps``, or ``warmup_epochs`` converted and rounded).

    Raises:
        KbenchError: the warm-up is not shorter than the phase (names the phase, both counts).
    """
    updates = max(1, (batches_per_epoch * epochs) // accumulate)
    warmup = phase.warmup_steps or round(phase.warmup_epochs * batches_per_epoch / accumulate)
    if warmup and warmup >= updates:
        raise KbenchError(f"phase {phase.name!r}: the warm-up ({warmup} optimizer updates) is not shorter than the "
                          f"phase ({updates} updates: {epochs} epoch(s) x {batches_per_epoch} batches"
                          + (f" / accumulate_steps {accumulate}" if accumulate > 1 else "")
                          + "); lower warmup_steps / warmup_epochs or train the phase longer")
    return updates, warmup


TRAIN_FORMS = "none, all, auto, blocks:<K>, from:<layer-name prefix>, last:<N> or a layer-name prefix"


def train_form(train: str) -> tuple[str, str | int | None]:
    """Parse a ``train`` value (see :class:`PhaseConfig`).

    Returns:
        ``("none" | "all" | "auto", None)``, ``("from", prefix)`` or ``("last", N)``.

    Raises:
        ValueError: why the value is not valid (the caller says where it came from).
    """
    if not isinstance(train, str):
        raise ValueError(f"{train!r} is not a string; use {TRAIN_FORMS}")
    if train in ("none", "all", "auto"):
        return train, None
    kind, sep, rest = train.partition(":")
    if not sep and train.strip():
        return "from", train
    if kind == "from" and rest and ":" not in rest:
        return "from", rest
    if kind in ("last", "blocks"):
        if rest.isascii() and rest.isdigit() and int(rest) > 0:
            return kind, int(rest)
        raise ValueError(f"{train!r}: {'N' if kind == 'last' else 'K'} must be a positive integer, e.g. {kind}:{4 if kind == 'last' else 2}")
    raise ValueError(f"{train!r} is not valid; use {TRAIN_FORMS}")


def train_base(train: str, default_unfreeze: str) -> str:
    """:attr:`Phase.train_base` for a ``train`` value: ``none``, ``all``, ``from:<prefix>``
    or ``last:<N>``; ``auto`` becomes the backbone's ``default_unfreeze`` (registry) and
    ``blocks:<K>`` the top K blocks, numbered down from it
    (:func:`~kbench.recipes.policy.block_prefix`: ``blocks:2`` of VGG16 is ``from:block4``).

    Raises:
        ValueError: ``train`` (or ``default_unfreeze`` for ``auto``) is not valid.
    """
    kind, arg = train_form(train)
    if kind == "blocks":
        kind, arg = "from", block_prefix(default_unfreeze, arg)
    if kind == "auto":
        kind, arg = train_form(default_unfreeze)
        if kind == "auto":
            raise ValueError(f"'auto' needs the backbone's top block, got default_unfreeze={default_unfreeze!r}")
    return kind if arg is None else f"{kind}:{arg}"


_NUMBERED = re.compile(r"^(.*?)(\d+)$")


def block_prefix(top_block: str, k: int) -> str:
    """The layer-name prefix of the ``k``-th block from the top (``k`` = 1 is ``top_block``).

    Blocks are numbered by the trailing number of the registry's top-block prefix:
    ``block5`` -> ``block4``, ``block3``...; ``conv5`` -> ``conv4``...; ``block_16`` ->
    ``block_15``... Whether the prefix names a layer is checked against the model
    (:func:`kbench.recipes.freezing.first_trainable_index`).

    Raises:
        ValueError: ``k`` < 1, or ``top_block`` ends in no number (the backbone's blocks are
            not numbered) or the block would be numbered below 0.
    """
    m = _NUMBERED.match(top_block)
    if k < 1 or not m or int(m.group(2)) - (k - 1) < 0:
        top = f"blocks are numbered down from the top block {top_block!r}"
        raise ValueError(f"blocks:{k} does not exist ({top} to 0, so K is at most {int(m.group(2)) + 1}; "
                         "use a smaller K, or train: all)" if m and k >= 1 else
                         f"blocks:{k} does not exist ({top}, which ends in no number; use from:<layer-name prefix>)")
    return f"{m.group(1)}{int(m.group(2)) - (k - 1)}"


__all__ = ["BN_MODES", "PHASE_POLICY", "RECIPE_POLICY", "SCHEDULES", "block_prefix", "check_averaging",
           "check_phase_policy", "check_recipe_policy", "inherit", "schedule_updates", "train_base",
           "train_form"]
