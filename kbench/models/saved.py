"""Load a ``.keras`` model saved by kbench (``model.keras``), safely, on any backend
(split out of :mod:`kbench.models`).

Only ``.keras`` zip archives with a Keras ``config.json`` are opened, in Keras safe
mode and without their optimizer; pickles, ``.h5`` full models and NumPy files are
refused by name. The model's own layers (:mod:`kbench.models.layers`) tell the rest:
:class:`~kbench.models.layers.Preprocess` its preprocessing mode and
:class:`~kbench.models.layers.ClassNames` its class names (older files without it:
the run's ``results.json`` beside the file, else class indices). Imports only the
layers, not :mod:`kbench.models.transfer` (no import cycle between them).
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from typing import NamedTuple

import keras

from kbench import KbenchError
from kbench.models.layers import ClassNames, Preprocess

REFUSED_MODEL_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".joblib", ".npy", ".npz", ".h5", ".hdf5", ".tf", ".pb")


class LoadedModel(NamedTuple):
    """A kbench model read back by :func:`load_saved_model` (unpacks as a 5-tuple).

    Attributes:
        model: the end-to-end ``keras.Model``: ``float32 (b, image_size, image_size, 3)``
            RGB pixels in [0, 255] -> ``float32 (b, len(class_names))``.
        class_names: list of str, index = class id.
        preprocess: the :class:`~kbench.models.Preprocess` mode inside the model (one of
            :data:`kbench.models.PREPROCESS_MODES`).
        image_size: input side in pixels.
        from_logits: True when the output is logits, False when it is softmax probabilities.
    """

    model: keras.Model
    class_names: list[str]
    preprocess: str
    image_size: int
    from_logits: bool


def _refuse_model_file(path: str, why: str) -> KbenchError:
    return KbenchError(
        f"model file {path!r} {why}; only .keras files saved by kbench are accepted "
        "(pickled files are refused for safety: .pkl, .pickle, .pt, .pth)"
    )


def _names_from_results(path: str, n: int) -> list[str] | None:
    """``class_names`` from a run's ``results.json`` (plain JSON) if it lists ``n`` of them."""
    try:
        with open(path) as f:
            names = json.load(f).get("class_names")
    except (OSError, ValueError, AttributeError):
        return None
    return [str(c) for c in names] if isinstance(names, list) and len(names) == n else None


def check_model_archive(path: str) -> str:
    """Refuse anything but a ``.keras`` zip archive holding a Keras ``config.json``.

    Returns:
        ``path`` with ``~`` expanded (the messages show it as given).

    Raises:
        KbenchError: the file is missing or not a file; has another suffix (pickles,
            ``.h5`` full models, NumPy files...) or is not a zip archive with a Keras config.
    """
    shown = path
    path = os.path.expanduser(str(path))
    if not os.path.exists(path):
        raise KbenchError(f"model file {shown!r} does not exist; pass the model.keras written by a kbench run")
    if not os.path.isfile(path):
        raise _refuse_model_file(shown, "is not a file")
    low = path.lower()
    if low.endswith(REFUSED_MODEL_SUFFIXES) or not low.endswith(".keras"):
        raise _refuse_model_file(shown, "is not a .keras file")
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
    except (zipfile.BadZipFile, OSError):
        raise _refuse_model_file(shown, "is not a .keras archive (not a zip file)") from None
    if "config.json" not in names:
        raise _refuse_model_file(shown, "is a zip file without a Keras config.json")
    return path


def _class_names(model: keras.Model, path: str, shown: str) -> tuple[list[str], bool]:
    """``(class_names, from_logits)`` from the model's last layer (:class:`ClassNames`); for
    files saved before it existed, the run's ``results.json`` beside ``path``, else
    indices (with a warning)."""
    last = model.layers[-1]
    if isinstance(last, ClassNames):
        return list(last.class_names), last.from_logits
    n = int(model.output_shape[-1])
    from_logits = last.get_config().get("activation") != "softmax"
    names = _names_from_results(os.path.join(os.path.dirname(path), "results.json"), n)
    if names is None:
        names = [str(i) for i in range(n)]
        warnings.warn(f"model file {shown!r} carries no class names (saved before kbench stored them) "
                      f"and has no results.json beside it; using class indices 0..{n - 1}", stacklevel=3)
    return names, from_logits


def load_saved_model(path: str) -> LoadedModel:
    """Load a ``.keras`` model saved by kbench (``model.keras``) on the current backend.

    The file must be a ``.keras`` zip archive (:func:`check_model_archive`); it is
    loaded with Keras safe mode (``safe_mode=True``: no lambda or other arbitrary
    code is deserialized) and without its optimizer (``compile=False``). This
    module imports the custom layers (:class:`Preprocess`, :class:`ClassNames`),
    which registers them with Keras. Models saved before :class:`ClassNames`
    existed take their class names from the run's ``results.json`` beside the file,
    else ``"0".."n-1"`` with a warning.

    Returns:
        A :class:`LoadedModel` ``(model, class_names, preprocess, image_size, from_logits)``.

    Raises:
        KbenchError: the file is missing; has another suffix (pickles, ``.h5`` full
            models, NumPy files...) or is not a zip archive with a Keras config;
            cannot be deserialized in safe mode; or is a Keras model without
            kbench's ``Preprocess`` layer or with a non-square image input.
    """
    shown, path = path, check_model_archive(path)
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as e:  # keras raises TypeError / ValueError / KeyError for configs it cannot rebuild
        raise KbenchError(
            f"model file {shown!r} could not be loaded in Keras safe mode ({type(e).__name__}: {str(e)[:300]}); "
            "only .keras files saved by kbench are accepted"
        ) from None
    pre = [layer for layer in model.layers if isinstance(layer, Preprocess)]
    if not isinstance(model, keras.Model) or not pre:
        raise KbenchError(f"model file {shown!r} is a Keras model but not one saved by kbench "
                          "(it has no kbench Preprocess layer)")
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] != 3:
        raise KbenchError(f"model file {shown!r}: input shape {shape} is not (batch, size, size, 3)")
    names, from_logits = _class_names(model, path, shown)
    return LoadedModel(model, names, pre[0].mode, int(shape[1]), from_logits)
