"""The classification heads placed on the backbone's feature map, as one table.

:data:`HEADS` maps a head's name to its builder ``(num_classes, dropout, hidden) ->
list of keras layers``; :func:`build_head` looks it up. Adding a head is one builder
here and one row in :data:`HEADS` (the config's ``model.head`` choices are its names).

keras-free at import (each builder imports keras when called), so a parent process
or the config can list the heads without a backend. Every head's last layer
computes in float32 (mixed-precision guidance); it outputs logits, except for the
softmax ``article`` head (:attr:`kbench.models.TransferModel.from_logits`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from kbench import KbenchError


def _dropout_and_logits(num_classes: int, dropout: float) -> list:
    """``Dropout(dropout) -> Dense(num_classes)`` float32 logits.

    The Dropout gets an explicit seed drawn from NumPy's global generator (seeded by
    the trainer), so its masks come from the layer's own seed state on every backend
    (unseeded dropout on PyTorch draws from torch's global generator, which data
    loaders also consume).
    """
    from keras import layers

    seed = int(np.random.randint(0, 2**31 - 1))
    return [layers.Dropout(dropout, seed=seed, name="head_dropout"),
            layers.Dense(num_classes, dtype="float32", name="logits")]


def gap_head(num_classes: int, dropout: float, hidden: int) -> list:
    """GlobalAveragePooling2D -> Dropout(dropout) -> Dense(num_classes) logits (``hidden`` unused)."""
    from keras import layers

    return [layers.GlobalAveragePooling2D(name="head_pool"), *_dropout_and_logits(num_classes, dropout)]


def flatten_head(num_classes: int, dropout: float, hidden: int) -> list:
    """Flatten -> Dropout(dropout) -> Dense(num_classes) logits (``hidden`` unused)."""
    from keras import layers

    return [layers.Flatten(name="head_flatten"), *_dropout_and_logits(num_classes, dropout)]


def mlp_head(num_classes: int, dropout: float, hidden: int) -> list:
    """Flatten -> BatchNormalization -> Dense(hidden, ReLU) -> Dropout(dropout) ->
    Dense(num_classes) logits. The BatchNormalization rescales features of very
    different magnitudes (VGG16 activations reach several hundred)."""
    from keras import layers

    return [layers.Flatten(name="head_flatten"), layers.BatchNormalization(name="head_bn"),
            layers.Dense(hidden, activation="relu", name="head_hidden"), *_dropout_and_logits(num_classes, dropout)]


def article_head(num_classes: int, dropout: float, hidden: int) -> list:
    """The seed tutorial's head: Flatten -> Dense 1000, 800, 400, 200, 100 (ReLU) ->
    Dense(num_classes, softmax) probabilities (``dropout`` and ``hidden`` unused)."""
    from keras import layers

    dense = [layers.Dense(u, activation="relu", name=f"head_dense_{u}") for u in (1000, 800, 400, 200, 100)]
    return [layers.Flatten(name="head_flatten"), *dense,
            layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")]


#: head name -> builder ``(num_classes, dropout, hidden) -> [layers]``, in the config's order.
HEADS: dict[str, Callable[[int, float, int], list]] = {
    "gap": gap_head,
    "flatten": flatten_head,
    "mlp": mlp_head,
    "article": article_head,
}


def build_head(kind: str, num_classes: int, dropout: float, hidden: int = 512) -> list:
    """The layers placed on top of the backbone's feature map: ``HEADS[kind]``'s builder.

    Args:
        kind: a name in :data:`HEADS`.
        num_classes: units of the last Dense layer.
        dropout: rate of the Dropout before it (``gap``, ``flatten``, ``mlp``).
        hidden: units of the ``mlp`` head's hidden Dense layer.

    Returns:
        New, unbuilt ``keras.layers.Layer`` objects, applied in order.

    Raises:
        KbenchError: unknown ``kind`` (the message lists the valid ones).
    """
    if kind not in HEADS:
        raise KbenchError(f"unknown head {kind!r}; choose one of: {', '.join(HEADS)}")
    return HEADS[kind](num_classes, dropout, hidden)
