"""CIFAR sources: the official python-pickle release (tar.gz and extracted folder) found
through --data.root, and the errors for a root that is missing or holds no copy."""

from __future__ import annotations

import io
import pickle
import tarfile

import numpy as np
import pytest

from kbench import KbenchError
from kbench.data import DataModule


def _batch(rng, n: int, labels_key: str, n_classes: int) -> dict:
    """One batch as the official release stores it: bytes keys, ``data`` rows in CHW order."""
    return {b"data": rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8),
            labels_key.encode(): rng.integers(0, n_classes, n).tolist()}


def _release(kind: str, folder, seed: int = 0) -> dict[str, dict]:
    """Write a tiny fake official release into ``folder``; returns ``{file name: batch}``."""
    rng = np.random.default_rng(seed)
    if kind == "cifar10":
        files = {f"data_batch_{i}": _batch(rng, 6, "labels", 10) for i in range(1, 6)}
        files["test_batch"] = _batch(rng, 4, "labels", 10)
        files["batches.meta"] = {b"label_names": [f"c{i}".encode() for i in range(10)]}
    else:
        files = {"train": _batch(rng, 12, "fine_labels", 100), "test": _batch(rng, 5, "fine_labels", 100),
                 "meta": {b"fine_label_names": [f"f{i}".encode() for i in range(100)]}}
    folder.mkdir(parents=True)
    for name, d in files.items():
        (folder / name).write_bytes(pickle.dumps(d))
    return files


def _tar(folder, out) -> None:
    with tarfile.open(out, "w:gz") as tar:
        for p in sorted(folder.iterdir()):
            data = p.read_bytes()
            info = tarfile.TarInfo(f"{folder.name}/{p.name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("kind, dir_name, tar_name", [("cifar10", "cifar-10-batches-py", "cifar-10-python.tar.gz"),
                                                       ("cifar100", "cifar-100-python", "cifar-100-python.tar.gz")])
def test_official_release_extracted_and_tar(tmp_path, kind, dir_name, tar_name):
    files = _release(kind, tmp_path / "extracted" / dir_name)
    _tar(tmp_path / "extracted" / dir_name, tmp_path / tar_name)
    if kind == "cifar10":
        train = [files[f"data_batch_{i}"] for i in range(1, 6)]
        test, key, names = files["test_batch"], b"labels", [f"c{i}" for i in range(10)]
    else:
        train, test, key, names = [files["train"]], files["test"], b"fine_labels", [f"f{i}" for i in range(100)]
    x_train = np.concatenate([b[b"data"] for b in train]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    y_train = np.concatenate([b[key] for b in train])
    x_test = test[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    for root in (tmp_path / "extracted", tmp_path, tmp_path / tar_name):
        dm = DataModule(kind, str(root), val_split=0.0).setup()
        assert dm.class_names == names
        assert dm.train.x.dtype == np.uint8 and dm.train.y.dtype == np.int32
        np.testing.assert_array_equal(dm.train.x, x_train)  # HWC, same order (val_split 0, no subset)
        np.testing.assert_array_equal(dm.train.y, y_train)
        np.testing.assert_array_equal(dm.test.x, x_test)
        np.testing.assert_array_equal(dm.test.y, test[key])


def test_missing_root_and_root_without_a_copy(tmp_path, monkeypatch):
    monkeypatch.delenv("KBENCH_DATA_DIR", raising=False)
    with pytest.raises(KbenchError, match=r"data root .*nope.* does not exist"):
        DataModule("cifar10", str(tmp_path / "nope")).setup()
    with pytest.raises(KbenchError, match=r"no cifar100 copy found in .*cifar-100-python.tar.gz.*cifar-100-python/"):
        DataModule("cifar100", str(tmp_path)).setup()
