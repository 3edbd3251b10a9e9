"""Data: the :class:`DataModule` (load, split, batch) in :mod:`~kbench.data.module`, the
data sources' names (:mod:`~kbench.data.sources`, keras-free), one module per source
(:mod:`~kbench.data.cifar`, :mod:`~kbench.data.npz`, image folders) and image decoding
(:mod:`~kbench.data.images`).

Public names resolve lazily, so importing a keras-free module here imports no keras.
"""

from kbench import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["CIFAR10_CLASSES", "DATA_ENV"], "kbench.data.cifar"),
    **dict.fromkeys(["IMAGE_EXTENSIONS", "decode_image", "read_image"], "kbench.data.images"),
    **dict.fromkeys(["INTERPOLATIONS", "SOURCES"], "kbench.data.sources"),
    **dict.fromkeys(["BatchSequence", "DataModule", "Split", "resize_batch", "stratified_split"],
                    "kbench.data.module"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
