"""The source table: names and order, dispatch through it (a new source = a module + a
row), keras-free names, the split helpers. (DataModule's keywords = DataConfig's fields:
tests/models/test_package.py, with build_model's.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kbench import KbenchError
from kbench.data import SOURCES, DataModule, SourceData, Split, get_loader, subset_per_class
from kbench.data.cifar import load_cifar_source
from kbench.data.folder import load_folder_source
from kbench.data.npz import load_npz_source

ROOT = Path(__file__).resolve().parents[2]
CALLS: list = []


def toy_loader(dm: DataModule) -> SourceData:
    """A source defined outside kbench: 3 classes of 8 train / 4 test images of 5x5 px."""
    CALLS.append(dm)
    y_train, y_test = np.repeat(np.arange(3, dtype=np.int32), 8), np.repeat(np.arange(3, dtype=np.int32), 4)
    x_train = np.broadcast_to(np.arange(24, dtype=np.uint8)[:, None, None, None], (24, 5, 5, 3)).copy()
    return SourceData(Split(x_train, y_train), Split(np.zeros((12, 5, 5, 3), np.uint8), y_test), ["a", "b", "c"])


def test_source_names_in_order_and_each_row_resolves_to_its_module():
    assert tuple(SOURCES) == ("cifar10", "cifar100", "folder", "npz") and list(SOURCES) == list(SOURCES.keys())
    assert [get_loader(name) for name in SOURCES] == [load_cifar_source, load_cifar_source, load_folder_source,
                                                     load_npz_source]
    with pytest.raises(KbenchError, match=r"unknown data source 'csv'; choose one of: cifar10, cifar100, folder, npz"):
        get_loader("csv")


def test_a_new_source_is_one_table_row(monkeypatch):
    monkeypatch.setitem(SOURCES, "toy", f"{__name__}:toy_loader")
    CALLS.clear()
    dm = DataModule("toy", val_split=0.25, batch_size=5, seed=3, max_test_per_class=2, progress=False).setup()
    assert CALLS == [dm] and dm.class_names == ["a", "b", "c"] and dm.num_classes == 3
    assert (len(dm.train), len(dm.val), len(dm.test)) == (18, 6, 6)
    assert np.bincount(dm.val.y).tolist() == [2, 2, 2] and np.bincount(dm.test.y).tolist() == [2, 2, 2]
    # train and val are disjoint and together the whole training split (images 0..23 by value)
    seen = np.concatenate([dm.train.x[:, 0, 0, 0], dm.val.x[:, 0, 0, 0]])
    assert sorted(seen.tolist()) == list(range(24))
    xb, yb = dm.loader("train", 7)[0]
    assert xb.shape == (5, 7, 7, 3) and yb.tolist() == dm.train.y[:5].tolist()
    assert dm.setup() is dm and len(CALLS) == 1  # idempotent: loaded once


def test_sources_and_splits_import_no_keras():
    code = ("import sys, kbench.data.sources, kbench.data.splits, kbench.data\n"
            "assert 'keras' not in sys.modules, 'keras imported'\n"
            "print(tuple(kbench.data.sources.SOURCES))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "('cifar10', 'cifar100', 'folder', 'npz')"


def test_subset_per_class_is_seeded_and_idempotent():
    y = np.repeat(np.arange(4), [9, 5, 2, 7])
    idx = subset_per_class(y, 3, seed=1)
    assert np.bincount(y[idx]).tolist() == [3, 3, 2, 3] and np.all(np.diff(idx) > 0)
    assert np.array_equal(idx, subset_per_class(y, 3, seed=1))
    assert not np.array_equal(idx, subset_per_class(y, 3, seed=2))
    again = subset_per_class(y[idx], 3, seed=5)  # a loader's early subset is kept by the DataModule's
    assert np.array_equal(again, np.arange(len(idx)))
    assert np.array_equal(subset_per_class(y, None, seed=0), np.arange(len(y)))


def test_split_take_keeps_lists_of_different_sizes():
    s = Split([np.zeros((2, 3, 3), np.uint8), np.zeros((4, 4, 3), np.uint8), np.ones((1, 1, 3), np.uint8)],
              np.array([0, 1, 1], np.int32))
    part = s.take(np.array([2, 0]))
    assert isinstance(part.x, list) and [im.shape for im in part.x] == [(1, 1, 3), (2, 3, 3)]
    assert part.y.tolist() == [1, 0] and len(part) == 2
