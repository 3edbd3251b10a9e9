"""Freezing for a phase: which backbone layers train, the BatchNormalization mode, the
parameter counts, the frozen-variable audit and where the frozen-prefix cache can cut.

The cache cut moves with each phase's lowest trainable layer: :func:`cache_cut` takes
the index that :func:`first_trainable_index` (or :func:`apply_phase`) returns.
"""

from __future__ import annotations

import inspect

import keras
import numpy as np

from kbench import KbenchError
from kbench.recipes.layerwise import block_starts
from kbench.recipes.phases import Phase
from kbench.recipes.policy import block_prefix


def first_trainable_index(base: keras.Model, train_base: str) -> int:
    """Index in ``base.layers`` of the lowest layer that trains (``len(layers)`` if none).

    Args:
        train_base: :attr:`~kbench.recipes.Phase.train_base`: ``none``, ``all``,
            ``from:<prefix>`` (or a plain prefix) or ``last:<N>``.

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
            raise KbenchError(f"train {train_base!r}: N must be a positive integer, e.g. last:4")
        return max(1, n - k)
    prefix = train_base.removeprefix("from:")
    for i, layer in enumerate(base.layers):
        if layer.name.startswith(prefix):
            return i
    blocks = sorted({layer.name.split("_")[0] for layer in base.layers[1:]})
    raise KbenchError(
        f"layer-name prefix {prefix!r} matches no layer of {base.name!r}; use a layer-name prefix "
        f"(e.g. one of {', '.join(blocks[:12])}), 'last:N' or 'all'"
    )


def check_train_layers(base: keras.Model, phases: list[Phase]) -> list[int]:
    """:func:`first_trainable_index` of every phase, so that a prefix that matches no layer
    fails before the first phase trains, not when its phase begins.

    Returns:
        The first trainable layer index of each phase.

    Raises:
        KbenchError: names the phase and the layer-name prefix that matches no layer.
    """
    out = []
    for p in phases:
        try:
            out.append(first_trainable_index(base, p.train_base))
        except KbenchError as e:
            raise KbenchError(f"phase {p.name!r}: {_too_deep(base, p) or e}") from None
    return out


def numbered_blocks(base: keras.Model, top_block: str) -> int:
    """How many numbered blocks ``base`` has from ``top_block`` down: the largest ``K``
    such that ``train: blocks:1`` ... ``blocks:K`` all name layers (0 if none does)."""
    return len(block_starts([layer.name for layer in base.layers], top_block))


def _too_deep(base: keras.Model, phase: Phase) -> str | None:
    """The message for a ``from:<prefix>`` that is a numbered block below the backbone's
    lowest one (``blocks:6`` of VGG16 is ``block0``), else None."""
    top, prefix = phase.top_block, phase.train_base.removeprefix("from:")
    n = numbered_blocks(base, top) if top else 0
    k = n + 1
    while n:
        try:
            if block_prefix(top, k) == prefix:
                return (f"train {phase.train_base!r} (= blocks:{k}) is deeper than {base.name!r} goes: it has only "
                        f"{n} numbered blocks, from its top block {top!r} down to {block_prefix(top, n)!r}; use "
                        f"blocks:1 to blocks:{n}, or train: all")
        except ValueError:
            return None
        k += 1
    return None


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
    """Copies of every variable of :func:`frozen_variables`, by variable path."""
    return {v.path: np.array(keras.ops.convert_to_numpy(v), copy=True) for v in frozen_variables(model)}


def training_bn_layers(model: keras.Model) -> list[str]:
    """Names of the BatchNormalization layers of ``model`` (nested models included) whose
    moving statistics a training step may update: the trainable ones. Keras runs a
    BatchNormalization with ``trainable=False`` in inference mode (its moving mean and
    variance are then used and never changed), so every other BatchNormalization is
    covered by :func:`frozen_variables` and the audit."""
    return [layer.name for layer in _leaf_layers(model)
            if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]


def check_frozen_unchanged(model: keras.Model, before: dict[str, np.ndarray], phase: str) -> int:
    """Fail loudly if any variable frozen during ``phase`` changed (bit-for-bit).

    Returns:
        How many variables were compared (the audit's size, for ``results.json``).

    Raises:
        RuntimeError: lists the variables that changed; this is a kbench bug or a
            callback that modified frozen weights, never a user error.
    """
    changed, checked = [], 0
    for v in frozen_variables(model):
        old = before.get(v.path)
        if old is not None:
            checked += 1
            if not np.array_equal(old, keras.ops.convert_to_numpy(v)):
                changed.append(v.path)
    if changed:
        raise RuntimeError(f"phase {phase!r} changed {len(changed)} frozen variable(s): {', '.join(changed[:10])}")
    return checked


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


def training_mode_layers(base: keras.Model, cut: str) -> list[str]:
    """Layers up to and including ``cut`` whose output could depend on the ``training``
    flag (their ``call`` takes ``training``: Dropout, StochasticDepth, ...), other than
    BatchNormalization: below a phase's first trainable layer every BatchNormalization is
    frozen (:func:`apply_phase`) and Keras runs a frozen one in inference mode whatever
    the flag. When this is empty, the prefix computes the same features with
    ``training=True`` as the cache does with ``training=False``, so the frozen-prefix
    cache stays exact for a phase that runs the backbone in training mode (``bn: train``).
    Conservative: a layer that takes ``training`` and ignores it (Keras 3.15 ``Dense``)
    is listed too."""
    names = [layer.name for layer in base.layers]
    out = []
    for layer in base.layers[1:names.index(cut) + 1]:
        for leaf in _leaf_layers(layer):
            if (not isinstance(leaf, keras.layers.BatchNormalization)
                    and "training" in inspect.signature(leaf.call).parameters):
                out.append(leaf.name)
    return out
