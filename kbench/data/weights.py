"""Class weights for imbalanced data (``data.class_weight``); NumPy only, no keras.

The option takes one of:

* ``null``: no weighting (every sample weighs 1);
* ``balanced``: ``w_c = n_samples / (n_classes * count_c)`` from the *training*
  split's label counts, scikit-learn's formula
  (``sklearn.utils.class_weight.compute_class_weight("balanced", ...)``, itself from
  King & Zeng, "Logistic Regression in Rare Events Data", 2001);
* a mapping class index or class name -> weight (finite, >= 0); classes not named
  weigh 1.

The trainer resolves the option to ``{class index: weight}`` once the classes are
known (:func:`resolve_class_weight`, called before the run folder is written) and
passes it to ``keras.Model.fit(class_weight=...)``: every training input kbench gives
``fit`` is a ``keras.utils.PyDataset`` (kbench's own batches, cached features, and the
wrapper around your own pipelines in :mod:`kbench.data.external`), whose keras adapter
turns class weights into per-sample weights on every backend. Keras's
cross-entropy then averages ``w_i * ce_i`` over the batch size (reduction
``sum_over_batch_size``: divided by the number of samples, not by the sum of the
weights). Validation and test losses stay unweighted.
"""

from __future__ import annotations

import math
from typing import Literal, Optional, Union

import numpy as np

from kbench import KbenchError

CLASS_WEIGHT_MODES = ("balanced",)
# The config type of ``data.class_weight`` (kbench.config.DataConfig).
ClassWeight = Optional[Union[Literal[CLASS_WEIGHT_MODES], dict[Union[int, str], float]]]


def check_class_weight_spec(spec) -> None:
    """The option's form, before any data is read: None, ``balanced`` or a mapping
    of int/str keys to finite weights >= 0.

    Raises:
        KbenchError: names the bad value and what is accepted.
    """
    if spec is None or spec in CLASS_WEIGHT_MODES:
        return
    if not isinstance(spec, dict):
        raise KbenchError(f"data.class_weight must be null, 'balanced' or a mapping class index or name -> "
                          f"weight, got {spec!r}")
    for key, w in spec.items():
        if not isinstance(key, (int, str)) or isinstance(key, bool):
            raise KbenchError(f"data.class_weight key {key!r} must be a class index or a class name")
        if isinstance(w, bool) or not isinstance(w, (int, float, np.number)) or not math.isfinite(w) or w < 0:
            raise KbenchError(f"data.class_weight[{key!r}] = {w!r}: weights must be finite numbers >= 0")


def resolve_class_weight(spec, class_names: list[str], train_labels) -> dict[int, float] | None:
    """``{class index: weight}`` for every class (None when ``spec`` is None).

    Args:
        spec: the ``data.class_weight`` value (see the module docstring).
        class_names: the data's classes (index = class id).
        train_labels: a callable returning the training split's ``int (N,)`` labels
            (called only for ``balanced``).

    Raises:
        KbenchError: a key that is neither a class index in ``[0, n_classes)`` nor a
            class name (the classes are listed), a negative or non-finite weight,
            ``balanced`` with a class that has no training sample.
    """
    check_class_weight_spec(spec)
    if spec is None:
        return None
    n = len(class_names)
    if spec == "balanced":
        counts = np.bincount(np.asarray(train_labels(), np.int64), minlength=n)[:n]
        empty = [class_names[c] for c in np.flatnonzero(counts == 0)]
        if empty:
            raise KbenchError(f"data.class_weight: balanced needs every class in the training split; "
                              f"{empty} have no training sample: give a mapping instead")
        return {c: float(counts.sum() / (n * counts[c])) for c in range(n)}
    out = dict.fromkeys(range(n), 1.0)
    for key, w in spec.items():
        index = _class_index(key, class_names)
        out[index] = float(w)
    return out


def _class_index(key, class_names: list[str]) -> int:
    """Class index of a ``data.class_weight`` key (an index, a class name, or an
    index written as a string, e.g. from a command line)."""
    if isinstance(key, str) and key in class_names:
        return class_names.index(key)
    if isinstance(key, int) or (isinstance(key, str) and key.lstrip("-").isdigit()):
        if 0 <= int(key) < len(class_names):
            return int(key)
    shown = class_names if len(class_names) <= 20 else [*class_names[:20], "..."]
    raise KbenchError(f"data.class_weight: unknown class {key!r}; use a class index in [0, {len(class_names)}) "
                      f"or one of the class names {shown}")


__all__ = ["CLASS_WEIGHT_MODES", "ClassWeight", "check_class_weight_spec", "resolve_class_weight"]
