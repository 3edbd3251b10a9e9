"""The four ways to reuse a pretrained network, as named phases.

A recipe is a list of :class:`Phase`. Before each phase the trainer calls
:func:`apply_phase` (what is trainable, BatchNormalization mode) and recompiles;
epochs continue across phases. This mirrors Lightning's ``BaseFinetuning``
(``freeze_before_training`` + unfreeze at an epoch), written as data.

* ``feature_extraction``: backbone frozen, head trained.
* ``fine_tune``: feature extraction, then the top of the backbone unfrozen at a
  lower learning rate (default 10x lower). BatchNormalization stays in inference
  mode, so its moving statistics never change.
* ``full``: pretrained weights as the initializer, everything trainable.
* ``scratch``: architecture only (``weights: none``), everything trainable.
* ``seed_tutorial``: the reference article as written (one epoch, frozen
  backbone, the article's head, pixels / 255, Adam 1e-3, batch 32).
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from kbench import KbenchError

RECIPES = ("feature_extraction", "fine_tune", "full", "scratch", "seed_tutorial")


@dataclass(frozen=True)
class Phase:
    """One training phase.

    Attributes:
        name: phase name written to ``metrics.csv``.
        epochs: epochs in this phase (>= 0).
        learning_rate: optimizer learning rate for the phase.
        train_base: which backbone layers train: ``"none"``, ``"all"``,
            ``"from:<prefix>"`` (from the first layer whose name starts with
            ``<prefix>`` to the top) or ``"last:<N>"`` (the last N layers).
        base_inference: run the whole backbone in inference mode
            (BatchNormalization uses and keeps its moving statistics, no dropout).
    """

    name: str
    epochs: int
    learning_rate: float
    train_base: str
    base_inference: bool = True


def make_phases(recipe: str, epochs: int, learning_rate: float, fine_tune_epochs: int = 0,
                fine_tune_learning_rate: float | None = None, unfreeze: str = "auto",
                default_unfreeze: str = "block5") -> list[Phase]:
    """Phases of a named recipe.

    Args:
        unfreeze: for ``fine_tune``: ``"auto"`` (the registry's top block,
            ``default_unfreeze``), a layer-name prefix such as ``"block5"``,
            ``"last:N"`` or ``"all"``.

    Raises:
        KbenchError: unknown recipe name or non-positive values.
    """
    if recipe not in RECIPES:
        raise KbenchError(f"unknown recipe {recipe!r}; choose one of: {', '.join(RECIPES)}")
    if epochs < 0 or fine_tune_epochs < 0:
        raise KbenchError(f"epochs must be >= 0, got epochs={epochs}, fine_tune_epochs={fine_tune_epochs}")
    if learning_rate <= 0:
        raise KbenchError(f"learning rate must be > 0, got {learning_rate}")
    if recipe in ("feature_extraction", "seed_tutorial"):
        return [Phase(recipe, epochs, learning_rate, "none")]
    if recipe in ("full", "scratch"):
        return [Phase(recipe, epochs, learning_rate, "all", base_inference=False)]
    ft_lr = fine_tune_learning_rate if fine_tune_learning_rate is not None else learning_rate / 10
    if ft_lr <= 0:
        raise KbenchError(f"fine-tune learning rate must be > 0, got {ft_lr}")
    target = default_unfreeze if unfreeze == "auto" else unfreeze
    if target == "all":
        spec = "all"
    elif target.startswith("last:"):
        spec = target
    else:
        spec = f"from:{target}"
    return [Phase("feature_extraction", epochs, learning_rate, "none"),
            Phase("fine_tune", fine_tune_epochs, ft_lr, spec)]


def first_trainable_index(base: keras.Model, train_base: str) -> int:
    """Index in ``base.layers`` of the lowest layer that trains (``len(layers)`` if none).

    Raises:
        KbenchError: the prefix matches no layer, or N is not a positive integer.
    """
    n = len(base.layers)
    if train_base == "none":
        return n
    if train_base == "all":
        return 1  # layer 0 is the InputLayer
    if train_base.startswith("last:"):
        try:
            k = int(train_base[5:])
        except ValueError:
            k = 0
        if k <= 0:
            raise KbenchError(f"unfreeze {train_base!r}: N must be a positive integer, e.g. last:4")
        return max(1, n - k)
    prefix = train_base.removeprefix("from:")
    for i, layer in enumerate(base.layers):
        if layer.name.startswith(prefix):
            return i
    blocks = sorted({layer.name.split("_")[0] for layer in base.layers[1:]})
    raise KbenchError(
        f"unfreeze {prefix!r} matches no layer of {base.name!r}; use a layer-name prefix "
        f"(e.g. one of {', '.join(blocks[:12])}), 'last:N' or 'all'"
    )


def apply_phase(base: keras.Model, phase: Phase) -> int:
    """Set ``trainable`` on every backbone layer for ``phase``.

    Layers from :func:`first_trainable_index` up train; the rest are frozen. In a
    phase with ``base_inference`` BatchNormalization layers stay frozen too, so
    their moving mean/variance never change (Keras runs a frozen BN in inference
    mode).

    Returns:
        The index of the first trainable layer (``len(base.layers)`` if none).
    """
    start = first_trainable_index(base, phase.train_base)
    base.trainable = start < len(base.layers)
    for i, layer in enumerate(base.layers):
        train = i >= start
        if phase.base_inference and isinstance(layer, keras.layers.BatchNormalization):
            train = False
        layer.trainable = train
    return start


def count_params(model: keras.Model) -> tuple[int, int]:
    """``(trainable, non_trainable)`` parameter counts (BN moving stats are non-trainable)."""
    t = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    nt = sum(int(np.prod(v.shape)) for v in model.non_trainable_variables if "seed_generator" not in v.path)
    return t, nt


def _leaf_layers(layer):
    subs = getattr(layer, "layers", None)
    if subs:
        for sub in subs:
            yield from _leaf_layers(sub)
    else:
        yield layer


def frozen_variables(model: keras.Model) -> list:
    """Variables of every frozen (``trainable=False``) layer: frozen weights and the
    moving statistics of frozen BatchNormalization layers. Random-generator states
    (dropout's ``SeedGenerator``) are left out: they advance by design. The moving
    statistics of a *trainable* BatchNormalization (``full``/``scratch``) update
    by design and are not included either."""
    seen, out = set(), []
    for layer in _leaf_layers(model):
        if layer.trainable:
            continue
        for v in layer.variables:
            if "seed_generator" not in v.path and id(v) not in seen:
                seen.add(id(v))
                out.append(v)
    return out


def snapshot_frozen(model: keras.Model) -> dict[str, np.ndarray]:
    """Copies of every variable of :func:`frozen_variables`."""
    return {v.path: np.array(keras.ops.convert_to_numpy(v.value), copy=True) for v in frozen_variables(model)}


def check_frozen_unchanged(model: keras.Model, before: dict[str, np.ndarray], phase: str) -> None:
    """Fail loudly if any variable frozen during ``phase`` changed (bit-for-bit).

    Raises:
        RuntimeError: lists the variables that changed; this is a kbench bug or a
            callback that modified frozen weights, never a user error.
    """
    changed = []
    for v in frozen_variables(model):
        old = before.get(v.path)
        if old is not None and not np.array_equal(old, keras.ops.convert_to_numpy(v.value)):
            changed.append(v.path)
    if changed:
        raise RuntimeError(f"phase {phase!r} changed {len(changed)} frozen variable(s): {', '.join(changed[:10])}")


def cache_cut(base: keras.Model, start: int) -> str | None:
    """Name of the deepest base layer whose output can serve as a frozen-prefix cache.

    Searches down from the layer just below the first trainable one (``start``)
    for an output that every path of the graph passes through (a bottleneck), so
    that ``base[cut:]`` is a model of its own. Returns ``None`` when nothing below
    ``start`` qualifies.
    """
    top = min(start, len(base.layers)) - 1
    for i in range(top, max(0, top - 64), -1):
        layer = base.layers[i]
        if i == len(base.layers) - 1:
            return layer.name
        try:
            keras.Model(layer.output, base.output)
        except (ValueError, KeyError):
            continue
        return layer.name
    return None


OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")


@dataclass
class Recipe:
    """A recipe ready to run: phases plus optimizer settings.

    Attributes:
        name: recipe name (see ``kbench.recipes.RECIPES``).
        phases: the :class:`~kbench.recipes.Phase` list, run in order.
        optimizer: one of :data:`OPTIMIZERS`.
        weight_decay: decoupled weight decay (adamw) or L2 factor for others; 0 = off.
        momentum: SGD momentum.
        cache: ``"auto"`` uses the frozen-prefix cache where it is exact; ``"off"`` never.
        pretrained: False when the recipe trains the architecture from scratch
            (``scratch``): ``model.weights`` is then ignored.
    """

    name: str
    phases: list[Phase]
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    cache: str = "auto"
    pretrained: bool = True


def make_optimizer(name: str, lr: float, weight_decay: float = 0.0, momentum: float = 0.9):
    """A fresh Keras optimizer (a new one per phase: Keras recompiles per phase)."""
    wd = weight_decay or None
    if name == "adam":
        return keras.optimizers.Adam(lr, weight_decay=wd)
    if name == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=weight_decay or 0.004)
    if name == "sgd":
        return keras.optimizers.SGD(lr, momentum=momentum, weight_decay=wd)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(lr, weight_decay=wd)
    raise KbenchError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")


def build_recipe(cfg, default_unfreeze: str) -> Recipe:
    """The :class:`Recipe` that a :class:`~kbench.config.RecipeConfig` describes.

    Args:
        cfg: the ``recipe`` config section.
        default_unfreeze: the backbone's top block (registry ``unfreeze``), used where
            the recipe says ``unfreeze: auto``.

    Raises:
        KbenchError: unknown recipe, bad epochs or learning rates.
    """
    phases = make_phases(cfg.name, cfg.epochs, cfg.learning_rate, cfg.fine_tune_epochs, cfg.fine_tune_learning_rate,
                         cfg.unfreeze, default_unfreeze)
    return Recipe(cfg.name, phases, cfg.optimizer, cfg.weight_decay, cfg.momentum, cfg.cache,
                  pretrained=cfg.name != "scratch")
