"""Models: the backbone registry (:mod:`~kbench.models.registry`, keras-free), kbench's
layers, heads and the :class:`TransferModel` (:mod:`~kbench.models.transfer`), and
loading a saved ``model.keras`` on any backend (:mod:`~kbench.models.saved`).

Public names resolve lazily, so ``import kbench.models.registry`` imports no keras.
"""

from kbench import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["BACKBONES", "HEADS", "PREPROCESS_MODES", "BackboneSpec", "check_input_size", "get_spec"],
                    "kbench.models.registry"),
    **dict.fromkeys(["ClassNames", "Preprocess", "TransferModel", "build_backbone", "build_head", "build_model",
                     "check_weights_file"], "kbench.models.transfer"),
    **dict.fromkeys(["LoadedModel", "REFUSED_MODEL_SUFFIXES", "load_saved_model"], "kbench.models.saved"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
