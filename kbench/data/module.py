"""The DataModule: load a data source, take subsets, split, and serve batches.

The sources (:data:`kbench.data.sources.SOURCES`: one module each, e.g.
:mod:`kbench.data.cifar`) return images once, as ``uint8`` RGB at their stored size
(CIFAR: 32x32); the batches (:mod:`kbench.data.batches`) resize them on the fly to
the model's input size. Preprocessing is *not* done here: it is the first layer of
the model (:class:`kbench.models.layers.Preprocess`), so it can never be applied
twice or touch a cached array.

Bad input (image files: see :mod:`kbench.data.images`) gets a :class:`kbench.KbenchError`
naming the file, folder, array or index and what to do; unusable files in an image
folder are listed and skipped with a warning, or refused with ``strict``.

:class:`~kbench.data.batches.BatchSequence`, :func:`~kbench.data.batches.resize_batch`,
:class:`~kbench.data.splits.Split`, :func:`~kbench.data.splits.stratified_split` and
the names below marked re-exported stay importable from here (their home before the
split).
"""

from __future__ import annotations

from kbench import KbenchError
from kbench.data.augment import make_augmenter
from kbench.data.augment_policy import IMAGE_OPS, check_image_ops
from kbench.data.batches import BatchSequence, resize_batch  # noqa: F401  (resize_batch: re-exported)
from kbench.data.cifar import CIFAR10_CLASSES  # noqa: F401  (re-exported)
from kbench.data.images import IMAGE_EXTENSIONS, decode_image, read_image  # noqa: F401  (re-exported)
from kbench.data.sources import INTERPOLATIONS, SOURCES, check_source, get_loader  # noqa: F401  (SOURCES: re-exported)
from kbench.data.splits import Split, stratified_split, subset_per_class
from kbench.data.weights import check_class_weight_spec, resolve_class_weight


class DataModule:
    """Loads a data set, splits it and serves batches (Lightning's DataModule role).

    Args:
        source: one of :data:`kbench.data.sources.SOURCES`.
        root: local data path (see :mod:`kbench.data.sources`); for ``cifar*`` optional.
        val_split: fraction of each training class held out for validation.
        test_split: for a single-tree ``folder``, fraction held out for testing.
        batch_size: images per batch.
        seed: seeds the split, the subsets and the per-epoch shuffling.
        max_train_per_class / max_test_per_class: stratified subsets (None = all).
        interpolation: OpenCV resize interpolation name.
        augment: random horizontal flips on training batches (alone: the two-view
            frozen-prefix cache; see :mod:`kbench.data.augment_policy`).
        crop_padding, translate, randaugment, randaugment_magnitude: the other training
            image ops (:data:`~kbench.data.augment_policy.IMAGE_OPS`; any of them turns the
            frozen-prefix cache off).
        strict: ``folder`` sources: unusable files (empty, truncated, not an image)
            and hidden/system/stray entries are an error listing them, instead of
            being skipped with a warning that lists them (see :func:`kbench.data.images.report_skipped`).
        progress: report the decoding of an image folder on stderr (a bar on a terminal,
            else a start and an end line: :func:`kbench.data.images.decode_all`); False: silent.
        class_weight: None, ``balanced`` or ``{class index or name: weight}``
            (:mod:`kbench.data.weights`; resolved by :meth:`class_weights`).

    After :meth:`setup`: ``train``, ``val``, ``test`` (:class:`Split`),
    ``class_names`` (list of str), ``num_classes``; for ``folder`` sources also
    ``skipped`` (``(path, reason)`` of every entry not used) and ``notes``
    (``(path, note)`` of files decoded by content despite their extension).
    From the start: ``image_ops``, the training image ops by key (``augment`` and the above).

    Raises:
        KbenchError: an option out of range (named, with its allowed range).
    """

    def __init__(self, source: str = "cifar10", root: str | None = None, val_split: float = 0.1,
                 test_split: float = 0.2, batch_size: int = 64, seed: int = 0,
                 max_train_per_class: int | None = None, max_test_per_class: int | None = None,
                 interpolation: str = "linear", augment: bool = False, strict: bool = False,
                 progress: bool = True, crop_padding: int = 0, translate: float = 0.0, randaugment: int = 0,
                 randaugment_magnitude: float = IMAGE_OPS["randaugment_magnitude"], class_weight=None):
        check_source(source)
        check_class_weight_spec(class_weight)
        self.image_ops = {"augment": augment, "crop_padding": crop_padding, "translate": translate,
                          "randaugment": randaugment, "randaugment_magnitude": randaugment_magnitude}
        check_image_ops(self.image_ops)
        if not 0 <= val_split < 1:
            raise KbenchError(f"data.val_split must be in [0, 1), got {val_split}")
        if not 0 < test_split < 1:
            raise KbenchError(f"data.test_split must be in (0, 1), got {test_split}")
        for key, k in (("max_train_per_class", max_train_per_class), ("max_test_per_class", max_test_per_class)):
            if k is not None and k < 1:
                raise KbenchError(f"data.{key} must be >= 1 or null (= all images), got {k}")
        if batch_size < 1:
            raise KbenchError(f"data.batch_size must be >= 1, got {batch_size}")
        if interpolation not in INTERPOLATIONS:
            raise KbenchError(f"unknown interpolation {interpolation!r}; choose one of: {', '.join(INTERPOLATIONS)}")
        self.source, self.root, self.val_split, self.test_split = source, root, val_split, test_split
        self.batch_size, self.seed, self.augment, self.strict = batch_size, seed, augment, strict
        self.progress, self.class_weight = progress, class_weight
        self.max_train_per_class, self.max_test_per_class = max_train_per_class, max_test_per_class
        self.interpolation = interpolation
        self.train = self.val = self.test = None
        self.class_names: list[str] = []
        self.skipped: list[tuple[str, str]] = []
        self.notes: list[tuple[str, str]] = []

    deterministic = True  # batches are a function of (seed, epoch): the frozen-prefix cache and exact resume work

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_weights(self) -> dict[int, float] | None:
        """``class_weight`` resolved to ``{class index: weight}`` after :meth:`setup`
        (``balanced``: from the training split's counts); None without class weights.

        Raises:
            KbenchError: see :func:`kbench.data.weights.resolve_class_weight`.
        """
        return resolve_class_weight(self.class_weight, self.class_names, lambda: self.train.y)

    # ---------------------------------------------------------------- loading
    def setup(self) -> DataModule:
        """Load the source (its loader from :data:`kbench.data.sources.SOURCES`), take
        the per-class subsets, split off validation. Idempotent.

        Raises:
            KbenchError: missing/unreadable data (with the accepted local sources);
                folder: fewer than 2 class folders, empty class folders, different
                class folders in train and test, a class left without usable images,
                unusable files with ``strict``; npz: missing arrays, wrong shapes or
                lengths, labels out of range, NaN/inf or out-of-range pixel values.
        """
        if self.train is not None:
            return self
        data = get_loader(self.source)(self)
        full, test, names = data.train, data.test, data.class_names
        self._check_labels(full, names, "train")
        self._check_labels(test, names, "test")
        full = full.take(subset_per_class(full.y, self.max_train_per_class, self.seed))
        test = test.take(subset_per_class(test.y, self.max_test_per_class, self.seed + 1))
        tr, va = stratified_split(full.y, self.val_split, self.seed)
        self.train, self.val, self.test, self.class_names = full.take(tr), full.take(va), test, names
        self.skipped, self.notes = data.skipped, data.notes
        return self

    @staticmethod
    def _check_labels(s: Split, names: list[str], split: str) -> None:
        if len(s) and (s.y.min() < 0 or s.y.max() >= len(names)):
            raise KbenchError(f"{split} labels must be in [0, {len(names)}), found {s.y.min()}..{s.y.max()}")

    # ---------------------------------------------------------------- batches
    def loader(self, split: str, image_size: int | None, shuffle: bool = False,
               limit_batches: int | float | None = None, batch_size: int | None = None,
               augment: bool = True, targets: dict | None = None) -> BatchSequence:
        """A :class:`~kbench.data.batches.BatchSequence` over ``split`` (``"train"``,
        ``"val"``, ``"test"``): ``float32 (b, image_size, image_size, 3)`` images in
        [0, 255] and ``int32 (b,)`` labels; for ``split == "train"`` with ``augment`` the
        module's image ops (:attr:`image_ops`) and the ``targets`` mixing
        (``{"mixup", "cutmix"}``, the recipe's: ``float32 (b, num_classes)`` soft targets)."""
        s = {"train": self.train, "val": self.val, "test": self.test}[split]
        aug = make_augmenter(self.image_ops, targets, self.num_classes) if augment and split == "train" else None
        return BatchSequence(s.x, s.y, batch_size or self.batch_size, image_size, shuffle=shuffle,
                             seed=self.seed, limit_batches=limit_batches, augment=aug or False,
                             interpolation=INTERPOLATIONS[self.interpolation])
