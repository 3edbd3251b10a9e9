"""Recipes as data: a :class:`Recipe` is a list of :class:`Phase` plus optimizer settings.

Before each phase the trainer calls :func:`~kbench.recipes.freezing.apply_phase` (what
is trainable, BatchNormalization mode) and recompiles; epochs continue across phases.
This mirrors Lightning's ``BaseFinetuning`` (``freeze_before_training`` + unfreeze at an
epoch), written as data.

:func:`build_recipe` makes the recipe from the ``recipe`` config: a named preset
(:mod:`~kbench.recipes.presets`) or the user's own ``recipe.phases``, a list of
:class:`PhaseConfig` entries such as::

    recipe:
      phases:
        - {name: head, epochs: 3, learning_rate: 1e-3, train: none}
        - {name: top, epochs: 2, learning_rate: 1e-4, train: "from:block5"}
        - {name: all, epochs: 1, learning_rate: 1e-5, train: all}

Both go through the same checks (:func:`phase_configs`) and resolution
(:func:`resolve_phases`). Keras-free, so the config can check a recipe without a backend.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import asdict, dataclass, field, fields
from types import SimpleNamespace
from typing import Optional

from kbench import KbenchError
from kbench.data.augment_policy import TARGET_OPS, check_target_ops
from kbench.recipes.policy import (
    RECIPE_POLICY,
    check_averaging,
    check_phase_policy,
    check_recipe_policy,
    inherit,
    train_base,
    train_form,
)
from kbench.recipes.presets import PRESET_KEYS, PRESETS, check_unfreeze_blocks

CACHE_MODES = ("auto", "off")
# The label of a recipe.phases list when recipe.name is left at its default (a preset's name).
CUSTOM_LABEL = "custom"
# Phase names and recipe labels: they are written to metrics.csv and name run folders.
NAME_PATTERN = re.compile(r"[\w.+-]+")
AUTO_LR = "auto"  # learning_rate: auto = the LR finder's suggestion (kbench.trainer.lr_finder)


@dataclass(frozen=True)
class Phase:
    """One training phase, resolved for a backbone.

    Attributes:
        name: phase name written to ``metrics.csv``.
        epochs: epochs in this phase (>= 0).
        learning_rate: optimizer learning rate for the phase.
        train_base: which backbone layers train: ``"none"``, ``"all"``,
            ``"from:<prefix>"`` (from the first layer whose name starts with
            ``<prefix>`` to the top) or ``"last:<N>"`` (the last N layers).
        base_inference: run the whole backbone in inference mode
            (BatchNormalization uses and keeps its moving statistics, no dropout);
            False for ``bn: train``.
        schedule, warmup_steps, warmup_epochs, final_lr_fraction: the learning-rate
            schedule (:mod:`kbench.recipes.policy`).
        layer_decay: timm-style layer-wise decay (None = off).
        lr_mult: ``((layer-name prefix, multiplier), ...)`` (empty = none).
        top_block: the backbone's top-block prefix (registry), which numbers the blocks
            for ``layer_decay``.

    ``learning_rate`` is the string ``"auto"`` until the trainer replaces it with the LR
    finder's suggestion.
    """

    name: str
    epochs: int
    learning_rate: float | str
    train_base: str
    base_inference: bool = True
    schedule: str = "constant"
    warmup_steps: int = 0
    warmup_epochs: float = 0.0
    final_lr_fraction: float = 0.0
    layer_decay: float | None = None
    lr_mult: tuple = ()
    top_block: str = field(default="", compare=False)


@dataclass
class PhaseConfig:
    """One entry of ``recipe.phases``, as a user writes it (all keys but ``base_inference`` required).

    Attributes:
        name: the phase's name in ``metrics.csv`` and ``results.json``: letters, digits
            and ``_ . + -``, unique within the list.
        epochs: epochs of the phase, an integer >= 0 (0 skips the phase).
        learning_rate: the optimizer's learning rate in this phase, > 0.
        train: which backbone layers train (the head always trains): ``none`` (frozen
            backbone), ``all``, ``auto`` (from the backbone's top block in the registry,
            e.g. ``block5`` for VGG16), ``from:<prefix>`` (from the first layer whose name
            starts with ``<prefix>`` to the top), ``last:<N>`` (the top N layers) or a
            plain ``<prefix>`` (same as ``from:<prefix>``).
        base_inference: run the backbone in inference mode: BatchNormalization stays frozen
            and keeps its moving statistics, backbone dropout is off. ``null`` (default):
            true unless ``train`` is ``all``, as the presets do (``fine_tune`` keeps
            BatchNormalization frozen, ``full``/``scratch`` train it).
        schedule, warmup_steps, warmup_epochs, final_lr_fraction, layer_decay, lr_mult, bn:
            the phase's own learning-rate schedule, layer-wise learning rates and
            BatchNormalization mode (:data:`~kbench.recipes.policy.PHASE_POLICY`); null
            inherits the ``recipe`` key of the same name. ``bn: frozen`` is
            ``base_inference: true``, ``bn: train`` is ``base_inference: false``.

    ``learning_rate`` may also be ``auto``: the LR finder's suggestion for the phase.
    """

    name: str
    epochs: int
    learning_rate: float | str
    train: str
    base_inference: Optional[bool] = None
    schedule: Optional[str] = None
    warmup_steps: Optional[int] = None
    warmup_epochs: Optional[float] = None
    final_lr_fraction: Optional[float] = None
    layer_decay: Optional[float] = None
    lr_mult: Optional[dict] = None
    bn: Optional[str] = None


PHASE_KEYS = tuple(f.name for f in fields(PhaseConfig))
REQUIRED_PHASE_KEYS = PHASE_KEYS[:4]


@dataclass
class Recipe:
    """A recipe ready to run: phases plus optimizer settings.

    Attributes:
        name: a preset's name (:data:`~kbench.recipes.presets.PRESETS`) or the label of a
            ``recipe.phases`` list; ``results.json`` records it as ``recipe``.
        phases: the :class:`Phase` list, run in order.
        optimizer: one of :data:`~kbench.recipes.optimizers.OPTIMIZERS`.
        weight_decay: decoupled weight decay (adamw) or L2 factor for others; 0 = off.
        momentum: SGD momentum.
        cache: one of :data:`CACHE_MODES`: ``"auto"`` uses the frozen-prefix cache where it
            is exact; ``"off"`` never.
        pretrained: False when the recipe trains the architecture from scratch
            (``scratch``): ``model.weights`` is then ignored.
        accumulate_steps, clip_norm, ema, swa_epochs, lr_find_steps: optimizer-wide
            settings (:data:`~kbench.recipes.policy.RECIPE_POLICY`).
        mixup, cutmix, label_smoothing: training-target settings
            (:data:`~kbench.data.augment_policy.TARGET_OPS`; 0 = off).
    """

    name: str
    phases: list[Phase]
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    cache: str = "auto"
    pretrained: bool = True
    accumulate_steps: int = 1
    clip_norm: float | None = None
    ema: float | None = None
    swa_epochs: int = 0
    lr_find_steps: int = 100
    mixup: float = 0.0
    cutmix: float = 0.0
    label_smoothing: float = 0.0

    @property
    def targets(self) -> dict:
        """The :data:`~kbench.data.augment_policy.TARGET_OPS` values of the recipe."""
        return {k: getattr(self, k) for k in TARGET_OPS}

    @property
    def mixes(self) -> bool:
        """True when MixUp or CutMix turn the training targets into soft targets."""
        return bool(self.mixup or self.cutmix)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_phase_values(row: dict, at: str) -> None:
    """Raise one :class:`KbenchError` for the first bad value of a phase entry."""
    name = row["name"]
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise KbenchError(f"{at}: name {name!r} is not a usable phase name; use letters, digits and _ . + - "
                          "(e.g. head)")
    if not _is_int(row["epochs"]) or row["epochs"] < 0:
        raise KbenchError(f"{at}: epochs must be an integer >= 0 (0 skips the phase), got {row['epochs']!r}")
    lr = row["learning_rate"]
    if lr != AUTO_LR and (not _is_number(lr) or lr <= 0):
        raise KbenchError(f"{at}: learning_rate must be a number > 0 (e.g. 1e-4) or auto (the LR finder's "
                          f"suggestion), got {lr!r}")
    try:
        train_form(row["train"])
    except ValueError as e:
        raise KbenchError(f"{at}: train {e}") from None
    if row["base_inference"] is not None and not isinstance(row["base_inference"], bool):
        raise KbenchError(f"{at}: base_inference must be true, false or null (= true unless train is all), "
                          f"got {row['base_inference']!r}")
    check_phase_policy(row, at, row["epochs"])
    if row["bn"] is not None and row["base_inference"] is not None and row["base_inference"] != (row["bn"] == "frozen"):
        raise KbenchError(f"{at}: bn {row['bn']!r} contradicts base_inference {row['base_inference']!r} (bn: frozen "
                          "is base_inference: true, bn: train is false); give one of them")


def _phase_config(row, at: str) -> PhaseConfig:
    """One checked :class:`PhaseConfig` from a mapping (or a PhaseConfig)."""
    if isinstance(row, PhaseConfig):
        row = asdict(row)
    if not isinstance(row, dict):
        raise KbenchError(f"{at} is {row!r}, not a mapping; write each phase as "
                          "{name: ..., epochs: ..., learning_rate: ..., train: ...}")
    unknown = [k for k in row if k not in PHASE_KEYS]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), PHASE_KEYS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise KbenchError(f"{at}: unknown key {unknown[0]!r}.{hint} Valid keys: {', '.join(PHASE_KEYS)}")
    missing = [k for k in REQUIRED_PHASE_KEYS if k not in row]
    if missing:
        raise KbenchError(f"{at}: missing key {', '.join(missing)}; every phase needs {', '.join(REQUIRED_PHASE_KEYS)} "
                          f"(the others are optional: {', '.join(PHASE_KEYS[4:])})")
    row = {**dict.fromkeys(PHASE_KEYS[4:]), **row}
    _check_phase_values(row, f"{at} ({row['name']!r})" if isinstance(row["name"], str) else at)
    lr = row["learning_rate"]
    return PhaseConfig(**{**row, "learning_rate": lr if lr == AUTO_LR else float(lr)})


def phase_configs(rows, where: str = "recipe.phases") -> list[PhaseConfig]:
    """Check a phase list (mappings with :class:`PhaseConfig`'s keys, or PhaseConfig objects).

    Args:
        where: what the list is called in messages (``recipe.phases``).

    Raises:
        KbenchError: one message naming the phase (1-based position and name), the bad
            key or value, and what to write instead.
    """
    if not isinstance(rows, (list, tuple)) or not rows:
        raise KbenchError(f"{where} must be a non-empty list of phases, e.g. [{{name: head, epochs: 3, "
                          f"learning_rate: 1e-3, train: none}}], or null for the recipe.name preset; got {rows!r}")
    out, seen = [], {}
    for i, row in enumerate(rows, 1):
        pc = _phase_config(row, f"phase {i} of {where}")
        if pc.name in seen:
            raise KbenchError(f"phase {i} of {where}: name {pc.name!r} is already phase {seen[pc.name]}'s; "
                              "give every phase its own name")
        seen[pc.name] = i
        out.append(pc)
    return out


def resolve_phases(configs: list[PhaseConfig], default_unfreeze: str, defaults=None) -> list[Phase]:
    """The :class:`Phase` list of checked :class:`PhaseConfig` entries for a backbone whose
    registry top block is ``default_unfreeze`` (what ``train: auto`` means).

    Args:
        defaults: the ``recipe`` config section whose :data:`~kbench.recipes.policy.PHASE_POLICY`
            keys a phase's null values inherit (None = the built-in defaults).

    Raises:
        KbenchError: a ``train`` value the backbone cannot resolve (``blocks:K`` deeper than
            its numbered blocks), or a warm-up longer than the phase.
    """
    out = []
    for pc in configs:
        try:
            base = train_base(pc.train, default_unfreeze)
        except ValueError as e:
            raise KbenchError(f"phase {pc.name!r}: train {e}") from None
        pol = inherit(asdict(pc), defaults)
        check_phase_policy(pol, f"phase {pc.name!r}", pc.epochs)
        bn = pol.pop("bn")
        inference = (pc.base_inference if pc.base_inference is not None else
                     bn == "frozen" if bn is not None else base != "all")
        lr = pc.learning_rate if pc.learning_rate == AUTO_LR else float(pc.learning_rate)
        out.append(Phase(pc.name, pc.epochs, lr, base, inference, **{**pol, "lr_mult": tuple((pol["lr_mult"] or {}).items())},
                         top_block=default_unfreeze))
    return out


def recipe_label(cfg) -> str:
    """The recipe's name: ``cfg.name`` for a preset; for ``recipe.phases`` a label of the
    user's own, or :data:`CUSTOM_LABEL` when ``recipe.name`` is left at its default.

    Args:
        cfg: a :class:`~kbench.config.RecipeConfig`.

    Raises:
        KbenchError: an unknown preset name, a preset name other than the default next to
            ``recipe.phases`` (the phases are not that preset's), or an unusable label.
    """
    name = cfg.name
    if cfg.phases is None:
        if name not in PRESETS:
            raise KbenchError(f"recipe.name {name!r} is not a recipe preset; choose one of: {', '.join(PRESETS)} "
                              "(or give recipe.phases, and recipe.name labels them)")
        return name
    if name == _defaults(cfg)["name"]:
        return CUSTOM_LABEL
    if name in PRESETS:
        raise KbenchError(f"recipe.name {name!r} is a preset, but recipe.phases replaces the preset's phases; drop "
                          f"recipe.name (the recipe is then labelled {CUSTOM_LABEL!r}) or give a label of your own")
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise KbenchError(f"recipe.name {name!r} is not a usable label for recipe.phases (it names run folders); "
                          "use letters, digits and _ . + -")
    return name


def _defaults(cfg) -> dict:
    return {f.name: f.default for f in fields(cfg)}


def _check_preset_keys(cfg) -> None:
    """The :data:`~kbench.recipes.presets.PRESET_KEYS` values, each named in its message."""
    for key in ("epochs", "fine_tune_epochs"):
        v = getattr(cfg, key)
        if not _is_int(v) or v < 0:
            raise KbenchError(f"recipe.{key} must be an integer >= 0, got {v!r}")
    for key in ("learning_rate", "fine_tune_learning_rate"):
        v = getattr(cfg, key)
        if (v is not None or key == "learning_rate") and (not _is_number(v) or v <= 0):
            raise KbenchError(f"recipe.{key} must be a number > 0, got {v!r}")
    try:
        train_form(cfg.unfreeze)
    except ValueError as e:
        raise KbenchError(f"recipe.unfreeze {e}") from None
    check_unfreeze_blocks(cfg)


def _check_phases_replace_presets(cfg) -> None:
    """Refuse preset keys changed from their defaults next to ``recipe.phases``."""
    defaults = _defaults(cfg)
    changed = [f"recipe.{k}={getattr(cfg, k)!r}" for k in PRESET_KEYS if getattr(cfg, k) != defaults[k]]
    if changed:
        raise KbenchError(f"recipe.phases replaces the preset's phases, so {', '.join(changed)} would have no "
                          f"effect; drop {'it' if len(changed) == 1 else 'them'} and set epochs, learning_rate and train in each phase")


def _recipe_phases(cfg, default_unfreeze: str) -> tuple[list[Phase], bool]:
    """``(phases, pretrained)`` of a recipe config (name already checked by :func:`recipe_label`)."""
    if cfg.phases is None:
        _check_preset_keys(cfg)
        preset = PRESETS[cfg.name]
        rows, where, pretrained = preset.phases(cfg), f"recipe {cfg.name!r}", preset.pretrained
    else:
        _check_phases_replace_presets(cfg)
        rows, where, pretrained = cfg.phases, "recipe.phases", True
    return resolve_phases(phase_configs(rows, where), default_unfreeze, cfg), pretrained


def make_phases(recipe: str, epochs: int, learning_rate: float, fine_tune_epochs: int = 0,
                fine_tune_learning_rate: float | None = None, unfreeze: str = "auto",
                default_unfreeze: str = "block5", unfreeze_blocks: int = 3) -> list[Phase]:
    """Phases of a named preset.

    Args:
        unfreeze: for ``fine_tune``: ``"auto"`` (the registry's top block,
            ``default_unfreeze``), a layer-name prefix such as ``"block5"``,
            ``"last:N"`` or ``"all"``.
        unfreeze_blocks: for ``gradual_unfreeze``: the deepest stage trains the top
            ``unfreeze_blocks`` blocks.

    Raises:
        KbenchError: unknown recipe name or a bad value (named in the message).
    """
    cfg = SimpleNamespace(name=recipe, phases=None, epochs=epochs, learning_rate=learning_rate,
                          fine_tune_epochs=fine_tune_epochs, fine_tune_learning_rate=fine_tune_learning_rate,
                          unfreeze=unfreeze, unfreeze_blocks=unfreeze_blocks)
    recipe_label(cfg)
    return _recipe_phases(cfg, default_unfreeze)[0]


def build_recipe(cfg, default_unfreeze: str) -> Recipe:
    """The :class:`Recipe` that a :class:`~kbench.config.RecipeConfig` describes.

    ``recipe.phases`` (when not null) replaces the preset's phases: ``recipe.name`` is
    then a label (see :func:`recipe_label`), the preset keys
    (:data:`~kbench.recipes.presets.PRESET_KEYS`) must stay at their defaults, and the
    model starts from ``model.weights``.

    Args:
        cfg: the ``recipe`` config section.
        default_unfreeze: the backbone's top block (registry ``unfreeze``), used where
            the recipe says ``auto``.

    Raises:
        KbenchError: unknown recipe, bad phases, epochs or learning rates (one message
            naming the key or phase and what to do).
    """
    label = recipe_label(cfg)
    check_recipe_policy(cfg)
    phases, pretrained = _recipe_phases(cfg, default_unfreeze)
    check_averaging(phases, cfg.swa_epochs, cfg.ema)
    if cfg.cache not in CACHE_MODES:
        raise KbenchError(f"recipe.cache {cfg.cache!r} is not valid; choose one of: {', '.join(CACHE_MODES)}")
    targets = {k: getattr(cfg, k, v) for k, v in TARGET_OPS.items()}
    check_target_ops(targets)
    return Recipe(label, phases, cfg.optimizer, cfg.weight_decay, cfg.momentum, cfg.cache, pretrained=pretrained,
                  **{k: getattr(cfg, k) for k in RECIPE_POLICY}, **targets)
