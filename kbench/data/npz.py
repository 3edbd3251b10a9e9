"""The ``npz`` data source: load and validate ``x_train, y_train, x_test, y_test``
(and optional ``class_names``) from one ``.npz`` file (split out of :mod:`kbench.data`).

Images: RGB ``(N, h, w, 3)``, gray ``(N, h, w)`` / ``(N, h, w, 1)`` (copied to R, G, B)
or RGBA ``(N, h, w, 4)`` (alpha dropped); ``uint8`` or any integer / float dtype
whose values lie in [0, 255] (rounded to ``uint8``). Refused: NaN / infinite values,
values outside [0, 255] (already normalised data), floats in [0, 1] (multiply by 255),
channels-first arrays. Labels: class indices ``(N,)`` or ``(N, 1)`` (integers or
whole-number floats) or one-hot ``(N, C)``; one per image; in ``[0, len(class_names))``
(without ``class_names``: non-negative, and the number of classes is the largest
label + 1, or C for one-hot labels). At least 2 classes.

:func:`load_npz_source` is the source's loader (:data:`kbench.data.sources.SOURCES`).
"""

from __future__ import annotations

import os
import zipfile
from typing import TYPE_CHECKING

import numpy as np

from kbench import KbenchError
from kbench.data.splits import SourceData

if TYPE_CHECKING:
    from kbench.data.module import DataModule


def load_npz(path: str) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], list[str]]:
    """Load and validate an npz data set.

    Returns:
        ``((x_train, y_train), (x_test, y_test), class_names)``: ``uint8`` RGB
        ``(N, h, w, 3)`` images and ``int32 (N,)`` labels.

    Raises:
        KbenchError: missing or unreadable file, missing arrays, wrong shape, dtype
            or length, NaN / out-of-range pixels, labels out of range (each names
            the file, the array, the first bad index where there is one, and the fix).
    """
    if not os.path.isfile(path):
        raise KbenchError(f"npz file {path!r} does not exist; pass --data.root FILE.npz")
    how = "save one with numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise KbenchError(f"{path}: not a readable .npz file ({type(e).__name__}: {str(e)[:200]}); {how}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise KbenchError(f"{path}: holds a single array, not an .npz archive; {how}")
    with z:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z.files]
        if missing:
            raise KbenchError(f"{path}: missing arrays {missing}; need x_train, y_train, x_test, y_test")
        try:
            arrays = {k: z[k] for k in z.files if k in ("x_train", "y_train", "x_test", "y_test", "class_names")}
        except ValueError as e:  # object arrays need pickle, which is refused
            raise KbenchError(f"{path}: {e}; store plain numeric arrays (and class_names as strings)") from None
    names = None
    if "class_names" in arrays:
        cn = arrays["class_names"]
        if cn.ndim != 1:
            raise KbenchError(f"{path}: class_names has shape {cn.shape}; expected a 1-D list of names")
        names = [str(c) for c in cn]
    splits, n = [], 0
    for s in ("train", "test"):
        x = check_images(path, f"x_{s}", arrays[f"x_{s}"])
        y, cols = check_labels(path, f"y_{s}", arrays[f"y_{s}"], len(x), f"x_{s}")
        splits.append((x, y))
        n = max(n, cols, int(y.max()) + 1)
    n = len(names) if names is not None else n
    for s, (_, y) in zip(("train", "test"), splits):
        bad = np.flatnonzero((y < 0) | (y >= n))
        if len(bad):
            why = (f"class_names has {n} entries, so labels must be in [0, {n})" if names is not None
                   else "labels are class indices 0, 1, ...")
            raise KbenchError(f"{path}: y_{s}[{bad[0]}] = {y[bad[0]]} is out of range ({len(bad)} such label(s)): "
                              f"{why}; fix the labels" + (" or class_names" if names is not None else ""))
    if n < 2:
        raise KbenchError(f"{path}: only {n} class; a classifier needs at least 2")
    return splits[0], splits[1], names if names is not None else [str(i) for i in range(n)]


def check_images(path: str, key: str, x: np.ndarray) -> np.ndarray:
    """Validate one npz image array and return it as ``uint8`` RGB ``(N, h, w, 3)``."""
    if x.ndim == 3:
        x = x[..., None]  # (N, h, w) grayscale
    channels_first = x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3)
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4) or channels_first:
        hint = "; it looks channels-first: store x.transpose(0, 2, 3, 1)" if channels_first else ""
        raise KbenchError(f"{path}: {key} has shape {x.shape}; expected (N, h, w, 3) RGB, (N, h, w, 1) or (N, h, w) "
                          f"gray{hint}")
    if len(x) == 0:
        raise KbenchError(f"{path}: {key} holds no images")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise KbenchError(f"{path}: {key} has dtype {x.dtype}; expected uint8 or float pixels in [0, 255]")
    if x.dtype != np.uint8:
        lo, hi, bad = np.inf, -np.inf, None
        for i in range(0, len(x), 4096):  # chunks: no full-size temporary copies
            c = x[i:i + 4096]
            if np.issubdtype(x.dtype, np.floating):
                finite = np.isfinite(c.reshape(len(c), -1)).all(axis=1)
                if not finite.all():
                    bad = i + int(np.flatnonzero(~finite)[0]) if bad is None else bad
                    continue
            lo, hi = min(lo, float(c.min())), max(hi, float(c.max()))
        if bad is not None:
            raise KbenchError(f"{path}: {key}[{bad}] contains NaN or infinite values; fix or remove those images")
        if lo < -0.5 or hi > 255.5:
            raise KbenchError(f"{path}: {key} values range {lo:g}..{hi:g}; expected raw pixels in [0, 255] "
                              "(kbench normalises inside the model: store the images before any normalisation)")
        if np.issubdtype(x.dtype, np.floating) and 0 < hi <= 1.0:
            raise KbenchError(f"{path}: {key} values range {lo:g}..{hi:g}, i.e. scaled to [0, 1]; expected pixels "
                              "in [0, 255]: store x * 255")
        x = np.clip(np.round(x), 0, 255).astype(np.uint8)
    if x.shape[-1] == 4:
        x = x[..., :3]  # RGBA: alpha dropped
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def check_labels(path: str, key: str, y: np.ndarray, n: int, xkey: str) -> tuple[np.ndarray, int]:
    """Validate one npz label array; returns ``(int32 (N,) labels, one-hot columns or 0)``.

    Accepted: integer (or integral float) class indices of shape ``(N,)`` or
    ``(N, 1)``, and one-hot ``(N, C)`` rows (converted with argmax).
    """
    cols = 0
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating) or y.dtype == bool):
        raise KbenchError(f"{path}: {key} has dtype {y.dtype}; labels must be integer class indices "
                          "(map names to indices and store the names as class_names)")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.reshape(-1)
    elif y.ndim == 2 and y.shape[1] > 1:
        if not (np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all()):
            raise KbenchError(f"{path}: {key} has shape {y.shape} but its rows are not one-hot (exactly one 1); "
                              f"store integer class indices of shape ({len(y)},)")
        y, cols = y.argmax(axis=1), y.shape[1]
    if y.ndim != 1:
        raise KbenchError(f"{path}: {key} has shape {y.shape}; expected ({n},) integer class indices "
                          f"(or ({n}, 1), or one-hot ({n}, C))")
    if len(y) != n:
        raise KbenchError(f"{path}: {key} has shape {y.shape} but {xkey} has {n} images; store one label per image, "
                          "in the same order")
    if np.issubdtype(y.dtype, np.floating):
        bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))
        if len(bad):
            raise KbenchError(f"{path}: {key}[{bad[0]}] = {y[bad[0]]} is not a class index; labels must be "
                              "whole numbers")
    return y.astype(np.int32), cols


def load_npz_source(dm: DataModule) -> SourceData:
    """The ``npz`` source's loader: :func:`load_npz` of ``dm.root`` (``~`` expanded).

    Raises:
        KbenchError: see :func:`load_npz`.
    """
    return SourceData.from_arrays(load_npz(os.path.expanduser(dm.root or "")))
