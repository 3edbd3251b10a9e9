"""The :class:`TransferModel` (backbone from :mod:`kbench.models.registry` + a head from
:mod:`kbench.models.heads`, with kbench's layers from :mod:`kbench.models.layers`) and
:func:`build_model`, which builds one from config values.

Loading a saved ``model.keras`` is :mod:`kbench.models.saved`. The registry names,
the layers and :func:`build_head` stay importable from here (their home before the
split).
"""

from __future__ import annotations

import os
import warnings

import keras
from keras import layers

from kbench import KbenchError, backend  # noqa: F401 - backend: JAX-on-CPU kernels (kbench.backend.use_fast_cpu_kernels)
from kbench.models.heads import HEADS, build_head  # noqa: F401  (re-exported)
from kbench.models.layers import ClassNames, Preprocess  # noqa: F401  (re-exported)
from kbench.models.registry import (  # noqa: F401  (re-exported)
    BACKBONES,
    CAFFE_MEAN_BGR,
    PREPROCESS_MODES,
    TORCH_MEAN,
    TORCH_STD,
    BackboneSpec,
    check_input_size,
    get_spec,
)


def check_weights_file(weights: str) -> str:
    """Validate a ``--model.weights`` path (not ``imagenet``/``none``) and return it expanded.

    Raises:
        KbenchError: the file does not exist, or is a pickle (refused).
    """
    path = os.path.expanduser(weights)
    if not os.path.isfile(path):
        raise KbenchError(
            f"weights file {weights!r} does not exist; pass an existing file, 'imagenet' or 'none' "
            "to --model.weights"
        )
    if path.endswith((".pkl", ".pickle", ".pt", ".pth")):
        raise KbenchError(f"weights file {weights!r}: pickled files are refused; use a Keras .weights.h5 file")
    return path


def build_backbone(spec: BackboneSpec, size: int, weights: str) -> keras.Model:
    """Construct the headless backbone for a ``size`` x ``size`` x 3 input.

    Args:
        weights: ``"imagenet"`` (downloaded by keras), ``"none"`` (random init) or a
            path to a Keras weights file for this architecture (``include_top=False``).

    Raises:
        KbenchError: size below the minimum, missing or mismatching weights file,
            or ImageNet weights that cannot be downloaded.
    """
    check_input_size(spec, size)
    shape = (size, size, 3)
    if weights == "none":
        return spec.build(include_top=False, weights=None, input_shape=shape)
    if weights == "imagenet":
        try:
            return spec.build(include_top=False, weights="imagenet", input_shape=shape)
        except Exception as e:  # urllib / OSError / HTTP errors differ by platform
            raise KbenchError(
                f"could not get the ImageNet weights for {spec.name!r} ({type(e).__name__}: {e}). "
                "Without network access pass a local file with --model.weights PATH "
                "(a Keras weights file of the headless backbone), or --model.weights none"
            ) from None
    path = check_weights_file(weights)
    base = spec.build(include_top=False, weights=None, input_shape=shape)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            base.load_weights(path)
        # Keras only warns when part of a file does not match and keeps random weights there.
        partial = [str(w.message) for w in caught if "Skipping" in str(w.message) or "mismatch" in str(w.message)]
        if partial:
            raise ValueError(f"only part of the file matched ({len(partial)} warning(s): {partial[0][:200]})")
    except Exception as e:  # keras raises ValueError / KeyError / OSError for mismatches
        raise KbenchError(
            f"weights file {weights!r} does not fit backbone {spec.name!r} "
            f"({type(e).__name__}: {str(e)[:300]}); use weights saved from the same "
            "keras.applications architecture with include_top=False"
        ) from None
    return base


class TransferModel:
    """A backbone plus a new head, composed as a Keras functional model.

    The layers (and therefore the variables) are created once; :meth:`compose`
    and :meth:`split` wire them into different graphs that share them:

    * ``compose()``: ``image (b, s, s, 3) float [0, 255] -> Preprocess -> base -> head``;
    * ``split(cut)``: a frozen prefix ``image -> base[:cut]`` and a trainable
      suffix ``features -> base[cut:] -> head`` for the frozen-prefix cache.

    Attributes:
        spec, base, preprocess, head, image_size, num_classes, class_names.
        from_logits: True when the head outputs logits (``gap``/``flatten``),
            False for the softmax ``article`` head.
    """

    def __init__(self, spec: BackboneSpec, base: keras.Model, preprocess: str, head: list[layers.Layer],
                 image_size: int, num_classes: int, class_names: list[str] | None = None):
        self.spec, self.base, self.head = spec, base, head
        self.preprocess = Preprocess(preprocess, name="preprocess")
        self.image_size, self.num_classes = image_size, num_classes
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.from_logits = head[-1].get_config().get("activation") != "softmax"
        self.names_layer = ClassNames(self.class_names, self.from_logits, name="class_names")
        self.base_training: bool | None = None
        self.keras_model = self.compose()

    def _apply_head(self, x):
        for layer in self.head:
            x = layer(x)
        return x

    def compose(self, base_training: bool | None = None) -> keras.Model:
        """(Re)build the end-to-end model; ``base_training=False`` keeps the whole
        backbone (BatchNormalization, dropout) in inference mode, ``None`` lets it
        follow ``fit``/``evaluate``. Shares all variables with earlier graphs.

        The last layer is the variable-free pass-through :class:`ClassNames`, so a
        saved model carries its class names (:func:`kbench.models.saved.load_saved_model`)."""
        self.base_training = base_training
        inputs = keras.Input((self.image_size, self.image_size, 3), name="image")
        x = self.base(self.preprocess(inputs), training=base_training)
        out = self.names_layer(self._apply_head(x))
        self.keras_model = keras.Model(inputs, out, name=f"{self.spec.name}_transfer")
        return self.keras_model

    def split(self, cut: str) -> tuple[keras.Model, keras.Model]:
        """Prefix/suffix pair at the output of base layer ``cut``.

        Returns:
            ``(prefix, suffix)``: ``prefix`` maps images ``(b, s, s, 3)`` to the
            ``cut`` features in inference mode; ``suffix`` maps those features to
            the head output, sharing variables with :attr:`keras_model`.

        Raises:
            ValueError: ``cut`` is not a bottleneck of the backbone graph (some path
                bypasses it), so no suffix model exists.
        """
        cut_t = self.base.get_layer(cut).output
        inputs = keras.Input((self.image_size, self.image_size, 3), name="image")
        pre_base = keras.Model(self.base.input, cut_t, name=f"prefix_{cut}")
        prefix = keras.Model(inputs, pre_base(self.preprocess(inputs), training=False), name="frozen_prefix")
        feats = keras.Input(tuple(cut_t.shape[1:]), name=f"{cut}_features")
        if cut == self.base.layers[-1].name:
            x = feats
        else:
            rest = keras.Model(cut_t, self.base.output, name=f"suffix_{cut}")
            x = rest(feats, training=self.base_training)
        suffix = keras.Model(feats, self._apply_head(x), name="trainable_suffix")
        return prefix, suffix


def build_model(backbone: str, weights: str, image_size: int | None, head: str, head_dropout: float,
                preprocess: str, num_classes: int, class_names: list[str] | None = None,
                head_hidden: int = 512) -> TransferModel:
    """Build a :class:`TransferModel` from config values (see ``config.ModelConfig``).

    ``image_size`` ``None`` means the registry's default size; ``preprocess``
    ``"auto"`` means the registry's mode.

    Raises:
        KbenchError: unknown backbone/head/preprocess, size below minimum, bad weights.
    """
    spec = get_spec(backbone)
    size = spec.input_size(image_size)
    mode = spec.preprocess if preprocess == "auto" else preprocess
    if mode not in PREPROCESS_MODES:
        raise KbenchError(f"unknown preprocess mode {mode!r}; choose one of: auto, {', '.join(PREPROCESS_MODES)}")
    base = build_backbone(spec, size, weights)
    return TransferModel(spec, base, mode, build_head(head, num_classes, head_dropout, head_hidden), size,
                         num_classes, class_names)
