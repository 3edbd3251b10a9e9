"""Data: images and labels in, batches out; one concern per module.

* :mod:`~kbench.data.module`: the :class:`DataModule` (load a source, subsets, validation split, batches).
* :mod:`~kbench.data.sources`: the source table (:data:`SOURCES`, name -> loader) and interpolations (keras-free).
* :mod:`~kbench.data.cifar`, :mod:`~kbench.data.folder`, :mod:`~kbench.data.npz`: one module per source.
* :mod:`~kbench.data.splits`: :class:`Split`, :class:`SourceData` and the seeded stratified selections.
* :mod:`~kbench.data.batches`: :class:`BatchSequence` and :func:`resize_batch` (per-batch OpenCV resize).
* :mod:`~kbench.data.augment`: the seeded per-batch training augmentation; its settings, checks and
  cache rules in :mod:`~kbench.data.augment_policy` (keras-free).
* :mod:`~kbench.data.images`: decoding image files by content, and what in a folder is not an image.
* :mod:`~kbench.data.external`, :mod:`~kbench.data.pipelines`: your own data (:func:`from_arrays`, :func:`from_pipelines`).
* :mod:`~kbench.data.weights`: ``data.class_weight`` (``balanced`` or a mapping) resolved per class.

Public names resolve lazily, so importing a keras-free module here imports no keras.
"""

from kbench import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["CIFAR10_CLASSES", "DATA_ENV"], "kbench.data.cifar"),
    **dict.fromkeys(["IMAGE_EXTENSIONS", "decode_image", "read_image"], "kbench.data.images"),
    **dict.fromkeys(["INTERPOLATIONS", "SOURCES", "check_source", "get_loader"], "kbench.data.sources"),
    **dict.fromkeys(["SourceData", "Split", "stratified_split", "subset_per_class"], "kbench.data.splits"),
    **dict.fromkeys(["BatchSequence", "TwoViewSequence", "resize_batch"], "kbench.data.batches"),
    **dict.fromkeys(["Augmenter", "flip_mask", "make_augmenter"], "kbench.data.augment"),
    **dict.fromkeys(["IMAGE_OPS", "TARGET_OPS", "cache_off_reason"], "kbench.data.augment_policy"),
    **dict.fromkeys(["DataModule"], "kbench.data.module"),
    **dict.fromkeys(["from_arrays", "from_pipelines"], "kbench.data.external"),
    **dict.fromkeys(["CLASS_WEIGHT_MODES", "resolve_class_weight"], "kbench.data.weights"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
