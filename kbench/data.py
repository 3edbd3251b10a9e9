"""The DataModule: load, split and batch images (decoded and resized with OpenCV).

Images are held once, as ``uint8`` RGB at their stored size (CIFAR: 32x32); each
batch is resized on the fly to the model's input size, so no resized float copy
of the whole data set ever exists. Preprocessing is *not* done here: it is the
first layer of the model (:class:`kbench.models.Preprocess`), so it can never be
applied twice or touch a cached array.

Sources (``source``):

* ``cifar10`` / ``cifar100``: a local copy first (``root`` option or the
  ``KBENCH_DATA_DIR`` environment variable: the official ``cifar-10-python.tar.gz``
  / ``cifar-100-python.tar.gz``, their extracted folders, or an image-folder copy
  with ``train/`` and ``test/``), then ``keras.datasets`` (its cache in
  ``~/.keras/datasets``, else a download).
* ``folder``: ``root/train/<class>/*`` and ``root/test/<class>/*``, or a single
  ``root/<class>/*`` tree that is split into train and test.
* ``npz``: a file with ``x_train, y_train, x_test, y_test`` (uint8 or float images
  ``(N, h, w, 3)`` in [0, 255], integer labels ``(N,)``) and optional ``class_names``.
"""

from __future__ import annotations

import math
import os
import pickle
import tarfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import keras
import numpy as np

from kbench import KbenchError

DATA_ENV = "KBENCH_DATA_DIR"
SOURCES = ("cifar10", "cifar100", "folder", "npz")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
INTERPOLATIONS = {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR,
                  "cubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA}
_CIFAR = {"cifar10": ("cifar-10-python.tar.gz", "cifar-10-batches-py"),
          "cifar100": ("cifar-100-python.tar.gz", "cifar-100-python")}


@dataclass
class Split:
    """Images and labels of one split.

    ``x``: ``uint8`` array ``(N, h, w, 3)`` RGB, or a list of such ``(h, w, 3)``
    arrays when sizes differ; ``y``: ``int32`` array ``(N,)`` in ``[0, num_classes)``.
    """

    x: np.ndarray | list
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


def read_image(path: str) -> np.ndarray | None:
    """Decode one image file with OpenCV into ``uint8`` RGB ``(h, w, 3)``.

    Grayscale, palette, RGBA and 16-bit files are converted (alpha dropped, 16-bit
    scaled to 8-bit). Returns ``None`` when OpenCV cannot decode the file.
    """
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        return None
    if img.dtype == np.uint16:
        img = (img / 257.0).round().astype(np.uint8)
    elif img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    if img.shape[2] == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _stack(images: list[np.ndarray]) -> np.ndarray | list:
    shapes = {im.shape for im in images}
    return np.stack(images) if len(shapes) == 1 and images else images


def _list_tree(root: str) -> dict[str, list[str]]:
    """``{class_name: [file paths]}`` for a ``root/<class>/*`` tree (hidden entries ignored)."""
    classes = sorted(d for d in os.listdir(root) if not d.startswith(".") and os.path.isdir(os.path.join(root, d)))
    out = {}
    for c in classes:
        files = sorted(f for f in os.listdir(os.path.join(root, c)) if not f.startswith("."))
        out[c] = [os.path.join(root, c, f) for f in files if os.path.isfile(os.path.join(root, c, f))]
    return out


def _decode_files(files: list[str], labels: list[int], strict: bool) -> Split:
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        images = list(pool.map(read_image, files, chunksize=256))
    bad = [f for f, im in zip(files, images) if im is None]
    if bad:
        listing = "\n  ".join(bad[:50]) + (f"\n  ... and {len(bad) - 50} more" if len(bad) > 50 else "")
        msg = f"{len(bad)} file(s) could not be decoded as images:\n  {listing}"
        if strict:
            raise KbenchError(msg + "\nremove or fix them, or drop --data.strict to skip them with a warning")
        warnings.warn(msg + "\nskipped (use --data.strict true to make this an error)", stacklevel=2)
    keep = [i for i, im in enumerate(images) if im is not None]
    return Split(_stack([images[i] for i in keep]), np.asarray([labels[i] for i in keep], np.int32))


def _subset_per_class(y: np.ndarray, k: int | None, seed: int) -> np.ndarray:
    """Sorted indices of at most ``k`` random samples per class (all when ``k`` is None)."""
    if k is None:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    idx = [rng.permutation(np.flatnonzero(y == c))[:k] for c in np.unique(y)]
    return np.sort(np.concatenate(idx))


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, shuffled, per-class split of indices ``0..len(y)-1``.

    Each class contributes ``round(fraction * n_class)`` samples to the second
    part (at least one when ``fraction > 0`` and the class has two or more).

    Returns:
        ``(keep, held_out)``: disjoint sorted ``int64`` index arrays covering all samples.
    """
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n = int(round(fraction * len(idx)))
        if fraction > 0 and n == 0 and len(idx) > 1:
            n = 1
        held.append(idx[:n])
        keep.append(idx[n:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def _cifar_pickle(path_or_file) -> dict:
    d = pickle.load(path_or_file, encoding="bytes")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def _cifar_from_batches(kind: str, read) -> tuple[Split, Split, list[str]]:
    """Parse the official python-pickle CIFAR release; ``read(name)`` returns a file object."""
    def arr(d):
        return d["data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()

    if kind == "cifar10":
        parts = [_cifar_pickle(read(f"data_batch_{i}")) for i in range(1, 6)]
        test = _cifar_pickle(read("test_batch"))
        names = [n.decode() for n in _cifar_pickle(read("batches.meta"))["label_names"]]
        xtr = np.concatenate([arr(p) for p in parts])
        ytr = np.concatenate([np.asarray(p["labels"]) for p in parts])
        ytest = np.asarray(test["labels"])
    else:
        train = _cifar_pickle(read("train"))
        test = _cifar_pickle(read("test"))
        names = [n.decode() for n in _cifar_pickle(read("meta"))["fine_label_names"]]
        xtr, ytr, ytest = arr(train), np.asarray(train["fine_labels"]), np.asarray(test["fine_labels"])
    return Split(xtr, ytr.astype(np.int32)), Split(arr(test), ytest.astype(np.int32)), names


def _find_local_cifar(kind: str, roots: list[str]) -> str | None:
    tar_name, dir_name = _CIFAR[kind]
    for r in roots:
        for cand in (r, os.path.join(r, tar_name), os.path.join(r, dir_name), os.path.join(r, kind)):
            if os.path.isfile(cand) and cand.endswith(".tar.gz"):
                return cand
            if os.path.isdir(cand) and (os.path.isdir(os.path.join(cand, "train"))
                                        or os.path.isfile(os.path.join(cand, "test_batch"))
                                        or os.path.isfile(os.path.join(cand, "meta"))):
                return cand
    return None


class DataModule:
    """Loads a data set, splits it and serves batches (Lightning's DataModule role).

    Args:
        source: one of :data:`SOURCES`.
        root: local data path (see module docstring); for ``cifar*`` optional.
        val_split: fraction of each training class held out for validation.
        test_split: for a single-tree ``folder``, fraction held out for testing.
        batch_size: images per batch.
        seed: seeds the split, the subsets and the per-epoch shuffling.
        max_train_per_class / max_test_per_class: stratified subsets (None = all).
        interpolation: OpenCV resize interpolation name.
        augment: random horizontal flips on training batches (disables the
            frozen-prefix cache, whose features must be deterministic).
        strict: undecodable image files are an error instead of a warning.

    After :meth:`setup`: ``train``, ``val``, ``test`` (:class:`Split`),
    ``class_names`` (list of str), ``num_classes``.
    """

    def __init__(self, source: str = "cifar10", root: str | None = None, val_split: float = 0.1,
                 test_split: float = 0.2, batch_size: int = 64, seed: int = 0,
                 max_train_per_class: int | None = None, max_test_per_class: int | None = None,
                 interpolation: str = "linear", augment: bool = False, strict: bool = False):
        if source not in SOURCES:
            raise KbenchError(f"unknown data source {source!r}; choose one of: {', '.join(SOURCES)}")
        if not 0 <= val_split < 1:
            raise KbenchError(f"data.val_split must be in [0, 1), got {val_split}")
        if batch_size < 1:
            raise KbenchError(f"data.batch_size must be >= 1, got {batch_size}")
        if interpolation not in INTERPOLATIONS:
            raise KbenchError(f"unknown interpolation {interpolation!r}; choose one of: {', '.join(INTERPOLATIONS)}")
        self.source, self.root, self.val_split, self.test_split = source, root, val_split, test_split
        self.batch_size, self.seed, self.augment, self.strict = batch_size, seed, augment, strict
        self.max_train_per_class, self.max_test_per_class = max_train_per_class, max_test_per_class
        self.interpolation = interpolation
        self.train = self.val = self.test = None
        self.class_names: list[str] = []

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # ---------------------------------------------------------------- loading
    def setup(self) -> "DataModule":
        """Load the source, take subsets, split off validation. Idempotent.

        Raises:
            KbenchError: missing/unreadable data, with the accepted local sources.
        """
        if self.train is not None:
            return self
        if self.source in _CIFAR:
            full, test, names = self._load_cifar()
        elif self.source == "folder":
            full, test, names = self._load_folder()
        else:
            full, test, names = self._load_npz()
        self._check_labels(full, names, "train")
        self._check_labels(test, names, "test")
        full = self._take(full, _subset_per_class(full.y, self.max_train_per_class, self.seed))
        test = self._take(test, _subset_per_class(test.y, self.max_test_per_class, self.seed + 1))
        tr, va = stratified_split(full.y, self.val_split, self.seed)
        self.train, self.val, self.test, self.class_names = self._take(full, tr), self._take(full, va), test, names
        return self

    @staticmethod
    def _take(s: Split, idx: np.ndarray) -> Split:
        x = s.x[idx] if isinstance(s.x, np.ndarray) else [s.x[i] for i in idx]
        return Split(x, s.y[idx])

    @staticmethod
    def _check_labels(s: Split, names: list[str], split: str) -> None:
        if len(s) and (s.y.min() < 0 or s.y.max() >= len(names)):
            raise KbenchError(f"{split} labels must be in [0, {len(names)}), found {s.y.min()}..{s.y.max()}")

    def _load_cifar(self):
        roots = [r for r in (self.root, os.environ.get(DATA_ENV)) if r]
        local = _find_local_cifar(self.source, [os.path.expanduser(r) for r in roots])
        if local and os.path.isdir(os.path.join(local, "train")):
            return self._load_folder(local)
        if local and local.endswith(".tar.gz"):
            with tarfile.open(local) as tar:
                members = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
                return _cifar_from_batches(self.source, lambda n: tar.extractfile(members[n]))
        if local:
            return _cifar_from_batches(self.source, lambda n: open(os.path.join(local, n), "rb"))
        missing = [r for r in roots if not os.path.exists(os.path.expanduser(r))]
        if missing:
            raise KbenchError(f"data root {missing[0]!r} does not exist; pass an existing path to --data.root "
                              f"(or {DATA_ENV})")
        if roots:
            tar_name, dir_name = _CIFAR[self.source]
            raise KbenchError(
                f"no {self.source} copy found in {', '.join(roots)}: expected {tar_name}, "
                f"its extracted folder {dir_name}/, or an image folder with train/ and test/"
            )
        return self._download_cifar()

    def _download_cifar(self):
        tar_name, dir_name = _CIFAR[self.source]
        try:
            ds = keras.datasets.cifar10 if self.source == "cifar10" else keras.datasets.cifar100
            (xtr, ytr), (xte, yte) = ds.load_data()
        except Exception as e:  # no network: URLError, HTTPError, OSError, ...
            raise KbenchError(
                f"could not download {self.source} through keras.datasets ({type(e).__name__}: {str(e)[:200]}). "
                f"Offline, point kbench at a local copy with --data.root PATH or the {DATA_ENV} "
                f"environment variable; accepted: the official {tar_name}, its extracted "
                f"{dir_name}/ folder, or an image folder PATH/{{train,test}}/<class>/*.jpg"
            ) from None
        names = CIFAR10_CLASSES if self.source == "cifar10" else self._cifar100_names()
        return (Split(xtr, ytr.reshape(-1).astype(np.int32)), Split(xte, yte.reshape(-1).astype(np.int32)), names)

    @staticmethod
    def _cifar100_names() -> list[str]:
        meta = os.path.join(os.path.expanduser("~/.keras/datasets"), "cifar-100-python", "meta")
        try:
            with open(meta, "rb") as f:
                return [n.decode() for n in _cifar_pickle(f)["fine_label_names"]]
        except OSError:
            return [str(i) for i in range(100)]

    def _load_folder(self, root: str | None = None):
        root = os.path.expanduser(root or self.root or "")
        if not root or not os.path.isdir(root):
            raise KbenchError(f"data root {root!r} is not a folder; pass --data.root PATH to an image folder")
        if os.path.isdir(os.path.join(root, "train")):
            trees = {"train": _list_tree(os.path.join(root, "train"))}
            test_dir = os.path.join(root, "test")
            trees["test"] = _list_tree(test_dir) if os.path.isdir(test_dir) else {}
            names = sorted(trees["train"])
            if trees["test"] and sorted(trees["test"]) != names:
                raise KbenchError(
                    f"train and test class folders differ under {root}: only in train: "
                    f"{sorted(set(names) - set(trees['test']))}, only in test: {sorted(set(trees['test']) - set(names))}"
                )
        else:
            trees = {"all": _list_tree(root)}
            names = sorted(trees["all"])
        if len(names) < 2:
            raise KbenchError(f"{root}: found {len(names)} class folder(s) {names}; need at least 2")
        empty = [c for t in trees.values() for c, files in t.items() if not files]
        if empty:
            raise KbenchError(f"{root}: empty class folder(s): {', '.join(sorted(set(empty)))}")
        out = {}
        for split, tree in trees.items():
            files = [f for c in names for f in tree.get(c, [])]
            labels = [i for i, c in enumerate(names) for _ in tree.get(c, [])]
            if split == "train":
                keep = _subset_per_class(np.asarray(labels), self.max_train_per_class, self.seed)
            elif split == "test":
                keep = _subset_per_class(np.asarray(labels), self.max_test_per_class, self.seed + 1)
            else:
                keep = np.arange(len(files))
            out[split] = _decode_files([files[i] for i in keep], [labels[i] for i in keep], self.strict)
        if "all" in out:
            tr, te = stratified_split(out["all"].y, self.test_split, self.seed + 2)
            out["train"], out["test"] = self._take(out["all"], tr), self._take(out["all"], te)
        if not len(out["test"]):
            raise KbenchError(f"{root}: no test images (expected {root}/test/<class>/*)")
        return out["train"], out["test"], names

    def _load_npz(self):
        path = os.path.expanduser(self.root or "")
        if not os.path.isfile(path):
            raise KbenchError(f"npz file {path!r} does not exist; pass --data.root FILE.npz")
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z]
            if missing:
                raise KbenchError(f"{path}: missing arrays {missing}; need x_train, y_train, x_test, y_test")
            splits = []
            for s in ("train", "test"):
                x, y = z[f"x_{s}"], z[f"y_{s}"]
                if x.ndim != 4 or x.shape[-1] not in (1, 3):
                    raise KbenchError(f"{path}: x_{s} has shape {x.shape}; expected (N, h, w, 3)")
                y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
                if y.ndim != 1 or len(y) != len(x):
                    raise KbenchError(f"{path}: y_{s} has shape {y.shape}; expected ({len(x)},) integer labels")
                if np.issubdtype(x.dtype, np.floating):
                    if not np.isfinite(x).all():
                        raise KbenchError(f"{path}: x_{s} contains NaN or infinite values")
                    x = np.clip(x, 0, 255).round().astype(np.uint8)
                if x.shape[-1] == 1:
                    x = np.repeat(x, 3, axis=-1)
                splits.append(Split(x.astype(np.uint8), y.astype(np.int32)))
            n = int(max(splits[0].y.max(), splits[1].y.max())) + 1
            names = [str(c) for c in z["class_names"]] if "class_names" in z else [str(i) for i in range(n)]
        return splits[0], splits[1], names

    # ---------------------------------------------------------------- batches
    def loader(self, split: str, image_size: int | None, shuffle: bool = False,
               limit_batches: int | float | None = None, batch_size: int | None = None) -> "BatchSequence":
        """A :class:`BatchSequence` over ``split`` (``"train"``, ``"val"``, ``"test"``)."""
        s = {"train": self.train, "val": self.val, "test": self.test}[split]
        return BatchSequence(s.x, s.y, batch_size or self.batch_size, image_size, shuffle=shuffle,
                             seed=self.seed, limit_batches=limit_batches,
                             augment=self.augment and split == "train",
                             interpolation=INTERPOLATIONS[self.interpolation])


def resize_batch(images, size: int, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Resize ``uint8`` RGB images to ``(b, size, size, 3)`` ``float32`` in [0, 255] with OpenCV."""
    out = np.empty((len(images), size, size, 3), np.float32)
    for i, im in enumerate(images):
        out[i] = im if im.shape[:2] == (size, size) else cv2.resize(im, (size, size), interpolation=interpolation)
    return out


class BatchSequence(keras.utils.PyDataset):
    """Batches ``(x, y)`` of one split, reshuffled each epoch from ``(seed, epoch)``.

    ``x`` is either images (``uint8``, resized per batch to ``image_size``; the
    output is ``float32 (b, image_size, image_size, 3)`` in [0, 255]) or cached
    features (any float array, served as they are when ``image_size`` is None).
    ``y`` batches are ``int32 (b,)``. ``epoch`` can be set to resume an order.

    ``limit_batches``: int = number of batches, float = fraction of them.
    """

    def __init__(self, x, y, batch_size: int, image_size: int | None, shuffle: bool = False, seed: int = 0,
                 limit_batches: int | float | None = None, augment: bool = False,
                 interpolation: int = cv2.INTER_LINEAR):
        super().__init__(workers=1, use_multiprocessing=False)
        self.x, self.y, self.batch_size, self.image_size = x, y, batch_size, image_size
        self.shuffle, self.seed, self.augment, self.interpolation = shuffle, seed, augment, interpolation
        n = math.ceil(len(y) / batch_size)
        if isinstance(limit_batches, float):
            n = max(1, int(n * limit_batches)) if limit_batches > 0 else 0
        elif isinstance(limit_batches, int):
            n = min(n, limit_batches)
        self.n_batches = n
        self.epoch = 0

    def batch_sizes(self) -> list[int]:
        """Number of samples in each served batch (the last one may be smaller)."""
        n = len(self.y)
        return [min(self.batch_size, n - i * self.batch_size) for i in range(self.n_batches)]

    def order(self) -> np.ndarray:
        """Sample order of the current epoch."""
        if not self.shuffle:
            return np.arange(len(self.y))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.y))

    def on_epoch_begin(self):
        self._order = self.order()

    def on_epoch_end(self):
        self.epoch += 1
        self._order = None

    def __len__(self) -> int:
        return self.n_batches

    def __getitem__(self, i: int):
        if i >= self.n_batches:
            raise IndexError(i)
        order = getattr(self, "_order", None)
        if order is None:
            order = self._order = self.order()
        idx = order[i * self.batch_size:(i + 1) * self.batch_size]
        if self.image_size is None:
            return self.x[idx], self.y[idx]
        xb = resize_batch([self.x[j] for j in idx], self.image_size, self.interpolation)
        if self.augment:
            flip = np.random.default_rng([self.seed, self.epoch, i]).random(len(idx)) < 0.5
            xb[flip] = xb[flip, :, ::-1]
        return xb, self.y[idx]
