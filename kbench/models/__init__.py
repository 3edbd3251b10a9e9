"""Models: the backbone registry, kbench's own layers (preprocessing, class names,
heads), the :class:`TransferModel` (backbone + head) and loading a saved ``model.keras``."""

from kbench.models.saved import REFUSED_MODEL_SUFFIXES, LoadedModel, load_saved_model
from kbench.models.transfer import (
    BACKBONES,
    HEADS,
    PREPROCESS_MODES,
    BackboneSpec,
    ClassNames,
    Preprocess,
    TransferModel,
    build_backbone,
    build_head,
    build_model,
    check_input_size,
    check_weights_file,
    get_spec,
)

__all__ = ["BACKBONES", "HEADS", "PREPROCESS_MODES", "BackboneSpec", "ClassNames", "Preprocess", "TransferModel",
           "build_backbone", "build_head", "build_model", "check_input_size", "check_weights_file", "get_spec",
           "LoadedModel", "REFUSED_MODEL_SUFFIXES", "load_saved_model"]
