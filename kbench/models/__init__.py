"""Models: what is built on top of ``keras.applications``, one concern per module.

* :mod:`~kbench.models.registry`: the backbone table (:data:`BACKBONES`; keras-free).
* :mod:`~kbench.models.heads`: the head table (:data:`HEADS`, :func:`build_head`; keras-free).
* :mod:`~kbench.models.layers`: kbench's saved layers (``kbench>Preprocess``, ``kbench>ClassNames``).
* :mod:`~kbench.models.transfer`: :class:`TransferModel` and :func:`build_model` (backbone + head).
* :mod:`~kbench.models.saved`: loading a saved ``model.keras`` safely on any backend.
* :mod:`~kbench.models.export`: a run's backbone as a ``--model.weights`` file (``python -m kbench.models.export``).

Public names resolve lazily, so ``import kbench.models.registry`` imports no keras.
"""

from kbench import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["BACKBONES", "PREPROCESS_MODES", "BackboneSpec", "check_input_size", "get_spec"],
                    "kbench.models.registry"),
    **dict.fromkeys(["HEADS", "build_head"], "kbench.models.heads"),
    **dict.fromkeys(["ClassNames", "Preprocess"], "kbench.models.layers"),
    **dict.fromkeys(["TransferModel", "build_backbone", "build_model", "check_weights_file"],
                    "kbench.models.transfer"),
    **dict.fromkeys(["LoadedModel", "REFUSED_MODEL_SUFFIXES", "check_model_archive", "load_saved_model"],
                    "kbench.models.saved"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
