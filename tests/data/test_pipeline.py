"""Input pipeline (issue 14): plain progress lines when stderr is not a terminal (decoding,
feature cache), batched resize and prefetched batches identical to on-demand ones."""

from __future__ import annotations

import io
import re

import cv2
import numpy as np
import pytest
from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter
from rich.console import Console

from kbench import progress
from kbench.data import BatchSequence, DataModule, flip_mask, resize_batch
from kbench.data import batches as batches_module
from kbench.data import images as images_module
from kbench.data.augment import Augmenter
from kbench.data.images import decode_all, list_class_tree
from kbench.models import build_model
from kbench.recipes import cache_cut
from kbench.trainer.cache import FeatureCache
from kbench.trainer.loop import LoopTools

LINE = re.compile(r"^(.*): (\d+)/(\d+) images \((\d+)%\), (\d+) images/s, .* elapsed")


def _counts(text: str, what: str) -> list[tuple[int, int]]:
    """``(done, total)`` of the progress lines of ``what`` in ``text``."""
    return [(int(m[2]), int(m[3])) for m in map(LINE.match, text.splitlines()) if m and m[1] == what]


def _files(root, split="train") -> list[str]:
    tree, _ = list_class_tree(str(root / split))
    return [f for c in sorted(tree) for f in tree[c]]


def test_line_progress_lines_and_silence(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(progress, "INTERVAL_S", 0.0)
    lines = progress.LineProgress("step", 10, stream=out)
    for done in (3, 7, 10):
        lines.update(done)
    lines.finish()  # nothing new since the last line
    assert _counts(out.getvalue(), "step") == [(3, 10), (7, 10), (10, 10)]
    assert "eta" in out.getvalue().splitlines()[0] and "eta" not in out.getvalue().splitlines()[-1]
    monkeypatch.setattr(progress, "INTERVAL_S", 3600.0)
    quiet = io.StringIO()
    short = progress.LineProgress("short", 10, stream=quiet)
    short.update(10)
    short.finish()
    assert quiet.getvalue() == ""  # a step shorter than the interval prints nothing


def test_decode_all_prints_progress_lines_when_not_a_terminal(cifar_dir, capsys, monkeypatch):
    files = _files(cifar_dir)
    where = str(cifar_dir / "train")
    decode_all(files, where)  # default interval: a fast folder gets its start and end lines only
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith(f"decoding {len(files)} images") and err[1].startswith("decoded")
    monkeypatch.setattr(progress, "INTERVAL_S", 0.0)
    monkeypatch.setattr(images_module, "DECODE_CHUNK", 16)
    decoded = decode_all(files, where)
    counts = _counts(capsys.readouterr().err, f"decoding {where}")
    done = [d for d, _ in counts]
    assert len(counts) == -(-len(files) // 16) and done == sorted(set(done))
    assert counts[-1] == (len(files), len(files)) and all(t == len(files) for _, t in counts)
    assert sum(d.image is not None for d in decoded) == len(files) == 300


def test_feature_cache_prints_progress_lines_when_not_a_terminal(cifar_dir, capsys, monkeypatch):
    monkeypatch.setattr(progress, "INTERVAL_S", 0.0)
    dm = DataModule("folder", str(cifar_dir), batch_size=16, max_train_per_class=5, progress=False).setup()
    tm = build_model("mobilenetv3small", "none", 32, "gap", 0.0, "auto", dm.num_classes, dm.class_names)
    cut = cache_cut(tm.base, len(tm.base.layers))
    log = Console(file=io.StringIO())  # not a terminal: the rich bar is off, plain lines on stderr
    cache = FeatureCache(tm, dm, LoopTools(log, {"train": 1.0, "val": 1.0, "test": 1.0}, enable_progress_bar=True))
    feats = cache.get("train", cut)
    counts = _counts(capsys.readouterr().err, f"cache {cut} (train)")
    n = len(dm.train.y)
    assert len(feats) == n == 40  # 5 per class, 20 % of them held out for validation
    assert [d for d, _ in counts] == [16, 32, 40] and {t for _, t in counts} == {n}


def _old_batch(x, y, idx, size, seed, epoch, i):
    """Batch ``i`` as kbench built it before prefetching: image by image, then the flip."""
    xb = np.stack([cv2.resize(x[j], (size, size), interpolation=cv2.INTER_LINEAR) for j in idx]).astype(np.float32)
    m = flip_mask(seed, epoch, i, len(idx))
    xb[m] = xb[m, :, ::-1]
    return xb, y[idx]


def _through_keras(seq, epochs: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The batches keras's PyDataset adapter (as in ``Model.fit``) serves, epoch after epoch."""
    adapter, out = PyDatasetAdapter(seq, shuffle=False), []
    for _ in range(epochs):
        adapter.on_epoch_begin()
        out += [(np.asarray(xb), np.asarray(yb)) for xb, yb in adapter.get_numpy_iterator()]
        adapter.on_epoch_end()
    return out


@pytest.mark.parametrize("size", [48, 32])
def test_prefetched_batches_equal_the_on_demand_ones(cifar_dir, monkeypatch, size):
    files = _files(cifar_dir, "test")
    x = np.stack([d.image for d in decode_all(files, "test", progress=False)])
    y = np.repeat(np.arange(10, dtype=np.int32), 10)
    served = _through_keras(BatchSequence(x, y, 32, size, shuffle=True, seed=5, augment=True), 2)
    monkeypatch.setattr(batches_module, "PREFETCH_BATCHES", 0)
    plain = _through_keras(BatchSequence(x, y, 32, size, shuffle=True, seed=5, augment=True), 2)
    assert len(served) == len(plain) == 8
    for k, ((xb, yb), (xp, yp)) in enumerate(zip(served, plain)):
        epoch, i = divmod(k, 4)
        idx = np.random.default_rng([5, epoch]).permutation(100)[i * 32:(i + 1) * 32]  # the seeded order
        xo, yo = _old_batch(x, y, idx, size, 5, epoch, i)
        assert xb.dtype == np.float32 and xb.shape == (len(idx), size, size, 3)
        np.testing.assert_array_equal(xb, xp)
        np.testing.assert_array_equal(xb, xo)
        np.testing.assert_array_equal(yb, yo)
        np.testing.assert_array_equal(yp, yo)


def test_prefetched_keras_layer_augmentation_and_tail_are_exact(cifar_dir, monkeypatch):
    x = np.stack([d.image for d in decode_all(_files(cifar_dir, "test")[:64], "t", progress=False)])
    y = np.arange(64, dtype=np.int32) % 10
    aug = Augmenter(flip=True, crop_padding=2, translate=0.1)
    seq = BatchSequence(x, y, 16, 32, shuffle=True, seed=1, augment=aug)
    served = _through_keras(seq, 1)
    tail = BatchSequence(x, y, 16, 32, shuffle=True, seed=1, augment=aug).tail(2)
    for i in range(len(tail)):  # resuming inside the epoch: the same batches, prefetched too
        np.testing.assert_array_equal(tail[i][0], served[2 + i][0])
    monkeypatch.setattr(batches_module, "PREFETCH_BATCHES", 0)
    again = BatchSequence(x, y, 16, 32, shuffle=True, seed=1, augment=aug)
    assert len(served) == len(again) == 4
    for i, (xb, yb) in enumerate(served):  # one batch at a time, nothing built ahead
        xa, ya = again[i]
        np.testing.assert_array_equal(xb, xa)
        np.testing.assert_array_equal(yb, ya)


def test_resize_batch_array_and_list_give_the_same_pixels():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (5, 20, 30, 3), dtype=np.uint8)
    for size, interp in [(24, cv2.INTER_LINEAR), (64, cv2.INTER_CUBIC), (12, cv2.INTER_AREA)]:
        want = np.stack([cv2.resize(im, (size, size), interpolation=interp) for im in x]).astype(np.float32)
        np.testing.assert_array_equal(resize_batch(x, size, interp), want)
        np.testing.assert_array_equal(resize_batch(list(x), size, interp), want)
    square = x[:, :20, :20]
    np.testing.assert_array_equal(resize_batch(square, 20), square.astype(np.float32))
