"""Data: RGB decoding, resize, stratified split, subsets, sources and their errors."""

from __future__ import annotations

import re

import cv2
import keras
import numpy as np
import pytest

from kbench import KbenchError
from kbench.data import BatchSequence, DataModule, read_image, resize_batch, stratified_split


def test_read_image_is_rgb(tmp_path):
    bgr = np.zeros((8, 8, 3), np.uint8)
    bgr[..., 2] = 255  # OpenCV stores BGR: this is pure red
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    img = read_image(str(tmp_path / "red.png"))
    assert img.dtype == np.uint8 and img.shape == (8, 8, 3)
    assert img[0, 0].tolist() == [255, 0, 0]


def test_read_image_converts_gray_rgba_16bit(tmp_path):
    cv2.imwrite(str(tmp_path / "g.png"), np.full((4, 4), 77, np.uint8))
    cv2.imwrite(str(tmp_path / "a.png"), np.dstack([np.full((4, 4, 3), 10, np.uint8), np.full((4, 4), 0, np.uint8)]))
    cv2.imwrite(str(tmp_path / "w.png"), np.full((4, 4, 3), 65535, np.uint16))
    assert read_image(str(tmp_path / "g.png"))[0, 0].tolist() == [77, 77, 77]
    assert read_image(str(tmp_path / "a.png"))[0, 0].tolist() == [10, 10, 10]
    assert read_image(str(tmp_path / "w.png"))[0, 0].tolist() == [255, 255, 255]
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    assert read_image(str(tmp_path / "bad.jpg")) is None


def test_resize_batch_shape_dtype_and_values():
    imgs = np.full((3, 32, 32, 3), 200, np.uint8)
    out = resize_batch(imgs, 64)
    assert out.shape == (3, 64, 64, 3) and out.dtype == np.float32
    assert np.all(out == 200.0)


def test_stratified_split_disjoint_seeded_per_class():
    y = np.repeat(np.arange(10), [100, 90, 80, 70, 60, 50, 40, 30, 20, 10])
    keep, held = stratified_split(y, 0.1, seed=3)
    assert len(np.intersect1d(keep, held)) == 0 and len(keep) + len(held) == len(y)
    assert np.bincount(y[held]).tolist() == [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]
    again, _ = stratified_split(y, 0.1, seed=3)
    other, _ = stratified_split(y, 0.1, seed=4)
    assert np.array_equal(keep, again) and not np.array_equal(keep, other)
    assert held.max() > len(y) - 10 or held.min() < 100  # not "the last 10%"
    assert not np.array_equal(held, np.arange(len(y) - len(held), len(y)))


def test_batch_sequence_order_per_epoch_and_limit():
    x = np.arange(10, dtype=np.float32).reshape(10, 1)
    y = np.arange(10, dtype=np.int32)
    s = BatchSequence(x, y, 4, None, shuffle=True, seed=1)
    assert len(s) == 3 and s.batch_sizes() == [4, 4, 2]
    e0 = np.concatenate([s[i][1] for i in range(3)])
    s.on_epoch_end()
    e1 = np.concatenate([s[i][1] for i in range(3)])
    assert sorted(e0.tolist()) == list(range(10)) == sorted(e1.tolist())
    assert not np.array_equal(e0, e1)
    s.epoch = 0
    s._order = None
    assert np.array_equal(np.concatenate([s[i][1] for i in range(3)]), e0)
    assert len(BatchSequence(x, y, 4, None, limit_batches=1)) == 1
    assert len(BatchSequence(x, y, 4, None, limit_batches=0.5)) == 1


def test_image_batches_do_not_touch_stored_uint8():
    x = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    keep = x.copy()
    xb, _ = BatchSequence(x, np.zeros(5, np.int32), 5, 48)[0]
    assert xb.shape == (5, 48, 48, 3) and xb.dtype == np.float32
    np.testing.assert_array_equal(x, keep)


def test_folder_source_real_cifar(cifar_dir):
    dm = DataModule("folder", str(cifar_dir), val_split=0.1, seed=0).setup()
    assert dm.class_names[:3] == ["airplane", "automobile", "bird"] and dm.num_classes == 10
    assert (len(dm.train), len(dm.val), len(dm.test)) == (270, 30, 100)
    assert np.bincount(dm.val.y).tolist() == [3] * 10
    assert dm.train.x.dtype == np.uint8 and dm.train.x.shape[1:] == (32, 32, 3)
    # cifar10 source finds the same image-folder copy through --data.root
    dm2 = DataModule("cifar10", str(cifar_dir.parent), max_train_per_class=5, max_test_per_class=2).setup()
    assert (len(dm2.train) + len(dm2.val), len(dm2.test)) == (50, 20)


def test_folder_skips_undecodable_files_and_strict_fails(cifar_dir, tmp_path):
    import shutil

    root = tmp_path / "imgs"
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            shutil.copytree(cifar_dir / split / c, root / split / c)
    (root / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"junk")
    with pytest.warns(UserWarning, match="broken.jpg"):
        dm = DataModule("folder", str(root), val_split=0.0).setup()
    assert len(dm.train) == 60 and dm.class_names == ["cat", "dog"]
    with pytest.raises(KbenchError, match="broken.jpg"):
        DataModule("folder", str(root), strict=True).setup()


def test_npz_source_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "d.npz"
    np.savez(p, x_train=rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8), y_train=np.repeat([0, 1], 20),
             x_test=rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8), y_test=np.repeat([0, 1], 5))
    dm = DataModule("npz", str(p), val_split=0.25).setup()
    assert (len(dm.train), len(dm.val), len(dm.test), dm.num_classes) == (30, 10, 10, 2)
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros((4, 8, 8, 3)), y_train=np.zeros(3), x_test=np.zeros((2, 8, 8, 3)), y_test=[0, 1])
    with pytest.raises(KbenchError, match=r"y_train has shape \(3,\)"):
        DataModule("npz", str(bad)).setup()


def test_offline_cifar_gives_one_clear_error(monkeypatch):
    def no_network():
        raise OSError("URL fetch failure: network unreachable")

    monkeypatch.delenv("KBENCH_DATA_DIR", raising=False)
    monkeypatch.setattr(keras.datasets.cifar10, "load_data", no_network)
    with pytest.raises(KbenchError, match=r"--data.root PATH or the KBENCH_DATA_DIR.*cifar-10-python.tar.gz"):
        DataModule("cifar10").setup()


def test_bad_options_named():
    with pytest.raises(KbenchError, match="'mnist'"):
        DataModule("mnist")
    with pytest.raises(KbenchError, match="val_split"):
        DataModule("cifar10", val_split=1.5)


def _tiny_folder(root, counts: dict[str, tuple[int, int]]) -> None:
    """``root/<split>/{a,b}/<i>.png``: ``counts[split]`` images in classes a and b."""
    for split, per_class in counts.items():
        for c, n in zip("ab", per_class):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                cv2.imwrite(str(root / split / c / f"{i}.png"), np.full((4, 4, 3), i, np.uint8))


def test_folder_decoding_progress_lines_off_a_terminal(tmp_path, capsys, monkeypatch):
    """stderr not a terminal: one line per split at the start (image count) and one at the
    end (time taken), nothing per file; progress=False prints nothing at all."""
    for var in ("FORCE_COLOR", "TTY_COMPATIBLE"):  # these make rich treat any stream as a terminal
        monkeypatch.delenv(var, raising=False)
    _tiny_folder(tmp_path, {"train": (3, 2), "test": (2, 2)})
    train, test = str(tmp_path / "train"), str(tmp_path / "test")
    DataModule("folder", str(tmp_path), val_split=0.0).setup()
    out = capsys.readouterr()
    err = out.err.splitlines()
    assert out.out == "" and len(err) == 4, out
    assert err[0] == f"decoding 5 images from {train} ..."
    assert re.fullmatch(rf"decoded 5 images from {re.escape(train)} in \d+\.\d s", err[1])
    assert err[2] == f"decoding 4 images from {test} ..."
    assert re.fullmatch(rf"decoded 4 images from {re.escape(test)} in \d+\.\d s", err[3])

    DataModule("folder", str(tmp_path), val_split=0.0, max_train_per_class=1).setup()
    assert capsys.readouterr().err.splitlines()[0] == f"decoding 2 images from {train} ..."  # the subset only

    (tmp_path / "train" / "a" / "broken.png").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="broken.png"):
        DataModule("folder", str(tmp_path), val_split=0.0).setup()
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"decoding 6 images from {train} ..."
    assert re.fullmatch(rf"decoded 6 images from {re.escape(train)} in \d+\.\d s \(1 not usable\)", err[1])

    with pytest.warns(UserWarning, match="broken.png"):
        DataModule("folder", str(tmp_path), val_split=0.0, progress=False).setup()
    assert capsys.readouterr() == ("", "")


def test_folder_decoding_progress_bar_on_a_terminal(tmp_path, capsys, monkeypatch):
    """stderr a terminal: a transient rich bar named after the split, not the plain lines."""
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    _tiny_folder(tmp_path, {"train": (3, 2), "test": (2, 2)})
    DataModule("folder", str(tmp_path), val_split=0.0).setup()
    err = capsys.readouterr().err
    assert "decoding train" in err and "decoding test" in err and "images from" not in err
