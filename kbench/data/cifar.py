"""The ``cifar10`` / ``cifar100`` data sources: find a local copy, read the official
python-pickle release, or download through ``keras.datasets`` (split out of :mod:`kbench.data`).

Where a copy is looked for, in order: the ``--data.root`` path, then the
``KBENCH_DATA_DIR`` environment variable (:data:`DATA_ENV`). Each may be the
official ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``, its extracted
folder (``cifar-10-batches-py/`` / ``cifar-100-python/``), a folder holding either,
or an image-folder copy with ``train/`` and ``test/`` (read as a ``folder`` source:
:func:`kbench.data.folder.load_image_folder`). Without either path the
data comes from ``keras.datasets`` (its cache in ``~/.keras/datasets``, else a
download). CIFAR-100 uses its 100 fine labels.

:func:`load_cifar_source` is both sources' loader (:data:`kbench.data.sources.SOURCES`).
Every reader here returns ``((x_train, y_train), (x_test, y_test), class_names)``:
``uint8`` RGB ``(N, 32, 32, 3)`` images and ``int32 (N,)`` labels, like
:func:`kbench.data.npz.load_npz`.
"""

from __future__ import annotations

import os
import pickle
import tarfile
from typing import TYPE_CHECKING

import keras
import numpy as np

from kbench import KbenchError
from kbench.data.folder import load_image_folder
from kbench.data.splits import SourceData

if TYPE_CHECKING:
    from kbench.data.module import DataModule

DATA_ENV = "KBENCH_DATA_DIR"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
#: source -> (official archive name, its extracted folder name)
CIFAR_RELEASES = {"cifar10": ("cifar-10-python.tar.gz", "cifar-10-batches-py"),
                  "cifar100": ("cifar-100-python.tar.gz", "cifar-100-python")}

Arrays = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], list[str]]


def cifar_pickle(path_or_file) -> dict:
    """One pickled batch of the official release, with its bytes keys decoded to str."""
    d = pickle.load(path_or_file, encoding="bytes")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def cifar_from_batches(kind: str, read) -> Arrays:
    """Parse the official python-pickle CIFAR release; ``read(name)`` returns a file object."""
    def arr(d):
        return d["data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()

    if kind == "cifar10":
        parts = [cifar_pickle(read(f"data_batch_{i}")) for i in range(1, 6)]
        test = cifar_pickle(read("test_batch"))
        names = [n.decode() for n in cifar_pickle(read("batches.meta"))["label_names"]]
        xtr = np.concatenate([arr(p) for p in parts])
        ytr = np.concatenate([np.asarray(p["labels"]) for p in parts])
        ytest = np.asarray(test["labels"])
    else:
        train = cifar_pickle(read("train"))
        test = cifar_pickle(read("test"))
        names = [n.decode() for n in cifar_pickle(read("meta"))["fine_label_names"]]
        xtr, ytr, ytest = arr(train), np.asarray(train["fine_labels"]), np.asarray(test["fine_labels"])
    return (xtr, ytr.astype(np.int32)), (arr(test), ytest.astype(np.int32)), names


def find_local_cifar(kind: str, roots: list[str]) -> str | None:
    """The first local copy of ``kind`` in or at ``roots`` (already user-expanded):
    an archive path, an extracted release folder or an image folder with ``train/``."""
    tar_name, dir_name = CIFAR_RELEASES[kind]
    for r in roots:
        for cand in (r, os.path.join(r, tar_name), os.path.join(r, dir_name), os.path.join(r, kind)):
            if os.path.isfile(cand) and cand.endswith(".tar.gz"):
                return cand
            if os.path.isdir(cand) and (os.path.isdir(os.path.join(cand, "train"))
                                        or os.path.isfile(os.path.join(cand, "test_batch"))
                                        or os.path.isfile(os.path.join(cand, "meta"))):
                return cand
    return None


def load_cifar_release(kind: str, path: str) -> Arrays:
    """Read the official release from its ``.tar.gz`` archive or its extracted folder at ``path``."""
    if path.endswith(".tar.gz"):
        with tarfile.open(path) as tar:
            members = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
            return cifar_from_batches(kind, lambda n: tar.extractfile(members[n]))
    return cifar_from_batches(kind, lambda n: open(os.path.join(path, n), "rb"))


def no_local_cifar(kind: str, roots: list[str]) -> KbenchError:
    """The error for local ``roots`` (as given) where :func:`find_local_cifar` found nothing."""
    missing = [r for r in roots if not os.path.exists(os.path.expanduser(r))]
    if missing:
        return KbenchError(f"data root {missing[0]!r} does not exist; pass an existing path to --data.root "
                           f"(or {DATA_ENV})")
    tar_name, dir_name = CIFAR_RELEASES[kind]
    return KbenchError(
        f"no {kind} copy found in {', '.join(roots)}: expected {tar_name}, "
        f"its extracted folder {dir_name}/, or an image folder with train/ and test/"
    )


def download_cifar(kind: str) -> Arrays:
    """``kind`` through ``keras.datasets`` (its cache, else a download).

    Raises:
        KbenchError: the download failed (offline): names the local copies accepted instead.
    """
    tar_name, dir_name = CIFAR_RELEASES[kind]
    try:
        ds = keras.datasets.cifar10 if kind == "cifar10" else keras.datasets.cifar100
        (xtr, ytr), (xte, yte) = ds.load_data()
    except Exception as e:  # no network: URLError, HTTPError, OSError, ...
        raise KbenchError(
            f"could not download {kind} through keras.datasets ({type(e).__name__}: {str(e)[:200]}). "
            f"Offline, point kbench at a local copy with --data.root PATH or the {DATA_ENV} "
            f"environment variable; accepted: the official {tar_name}, its extracted "
            f"{dir_name}/ folder, or an image folder PATH/{{train,test}}/<class>/*.jpg"
        ) from None
    names = CIFAR10_CLASSES if kind == "cifar10" else cifar100_names()
    return (xtr, ytr.reshape(-1).astype(np.int32)), (xte, yte.reshape(-1).astype(np.int32)), names


def cifar100_names() -> list[str]:
    """The fine label names from the ``keras.datasets`` cache, else ``"0".."99"``."""
    meta = os.path.join(os.path.expanduser("~/.keras/datasets"), "cifar-100-python", "meta")
    try:
        with open(meta, "rb") as f:
            return [n.decode() for n in cifar_pickle(f)["fine_label_names"]]
    except OSError:
        return [str(i) for i in range(100)]


def load_cifar_source(dm: DataModule) -> SourceData:
    """The ``cifar10`` / ``cifar100`` sources' loader (``dm.source`` says which): the local
    copy at ``dm.root`` or ``$KBENCH_DATA_DIR`` (an image-folder copy is read with ``dm``'s
    options), else ``keras.datasets``. ``dm`` is not modified.

    Raises:
        KbenchError: a local path is given but holds no copy (:func:`no_local_cifar`),
            or the download failed (:func:`download_cifar`).
    """
    roots = [r for r in (dm.root, os.environ.get(DATA_ENV)) if r]
    local = find_local_cifar(dm.source, [os.path.expanduser(r) for r in roots])
    if local and os.path.isdir(os.path.join(local, "train")):
        return load_image_folder(dm, local)
    if local:
        return SourceData.from_arrays(load_cifar_release(dm.source, local))
    if roots:
        raise no_local_cifar(dm.source, roots)
    return SourceData.from_arrays(download_cifar(dm.source))
