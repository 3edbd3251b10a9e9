"""Bad input (issue 4, "Reliability"): every user mistake gets one clear message naming
the file or value and what to do, never a raw traceback.

Image files are converted to RGB or listed and skipped (``--data.strict`` makes them
fatal); folder structure, npz arrays, config names and types, input size and weights
files are refused with a :class:`kbench.KbenchError` (exit status 2 from the CLI).
"""

from __future__ import annotations

import base64
import json
import shutil
import struct
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from marks import slow_on

from kbench import KbenchError
from kbench.data import DataModule
from kbench.data.images import decode_image, list_class_tree, read_image

# An 8x8 pure red CMYK JPEG (Adobe APP14, inverted CMYK as Photoshop and Pillow write it),
# made with Pillow: Image.new("RGB", (8, 8), (255, 0, 0)).convert("CMYK").save(f, "JPEG", quality=95).
# Stored as bytes because neither OpenCV nor the test dependencies can write CMYK.
CMYK_RED_JPEG = base64.b64decode(
    "/9j/7gAOQWRvYmUAZAAAAAAA/9sAQwACAQEBAQECAQEBAgICAgIEAwICAgIFBAQDBAYFBgYGBQYGBgcJCAYHCQcGBggLCAkKCgoK"
    "CgYICwwLCgwJCgoK/8AAFAgACAAIBEMRAE0RAFkRAEsRAP/EAB8AAAEFAQEBAQEBAAAAAAAAAAABAgMEBQYHCAkKC//EALUQAAIB"
    "AwMCBAMFBQQEAAABfQECAwAEEQUSITFBBhNRYQcicRQygZGhCCNCscEVUtHwJDNicoIJChYXGBkaJSYnKCkqNDU2Nzg5OkNERUZH"
    "SElKU1RVVldYWVpjZGVmZ2hpanN0dXZ3eHl6g4SFhoeIiYqSk5SVlpeYmZqio6Slpqeoqaqys7S1tre4ubrCw8TFxsfIycrS09TV"
    "1tfY2drh4uPk5ebn6Onq8fLz9PX29/j5+v/aAA4EQwBNAFkASwAAPwD9/K/n/r+f+v38r//Z"
)
RED = [255, 0, 0]


def _has(text: str, part: str) -> bool:
    """``part`` in ``text``, whitespace ignored: rich wraps long console lines."""
    return "".join(part.split()) in "".join(text.split())


# ------------------------------------------------------------------ image files
def _png(path: Path, rows: np.ndarray, color_type: int, bit_depth: int = 8, plte: bytes | None = None,
         trns: bytes | None = None) -> Path:
    """Write a PNG by hand (OpenCV cannot write palette or gray+alpha PNGs)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    h, w = rows.shape[:2]
    raw = b"".join(b"\x00" + rows[i].tobytes() for i in range(h))
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0))
    data += (chunk(b"PLTE", plte) if plte else b"") + (chunk(b"tRNS", trns) if trns else b"")
    path.write_bytes(data + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def _bgr(rgb) -> np.ndarray:
    return np.full((6, 5, 3), rgb[::-1], np.uint8)


CONVERSIONS = {
    # name: (writer(tmp_path) -> path, expected RGB of pixel (0, 0), tolerance)
    "gray8": (lambda d: _write(d / "g.png", np.full((6, 5), 77, np.uint8)), [77, 77, 77], 0),
    "gray16": (lambda d: _write(d / "g16.png", np.full((6, 5), 51400, np.uint16)), [200, 200, 200], 0),
    "rgb16_scaled_not_clipped": (lambda d: _write(d / "c16.png", np.dstack([np.full((6, 5), 1028, np.uint16),
                                 np.full((6, 5), 32896, np.uint16), np.full((6, 5), 65535, np.uint16)])),
                                 [255, 128, 4], 0),
    "rgba_alpha_dropped": (lambda d: _write(d / "a.png", np.dstack([_bgr(RED), np.zeros((6, 5), np.uint8)])), RED, 0),
    "gray_alpha": (lambda d: _png(d / "la.png", np.tile(np.array([90, 10], np.uint8), (6, 5, 1)), 4), [90] * 3, 0),
    "palette": (lambda d: _png(d / "p.png", np.zeros((6, 5), np.uint8), 3, plte=bytes([255, 0, 0, 0, 255, 0])),
                RED, 0),
    "palette_transparent": (lambda d: _png(d / "pt.png", np.zeros((6, 5), np.uint8), 3,
                                           plte=bytes([255, 0, 0, 0, 255, 0]), trns=b"\x00"), RED, 0),
    "rgb_jpeg": (lambda d: _write(d / "r.jpg", _bgr(RED)), RED, 6),
    "cmyk_jpeg": (lambda d: _bytes(d / "cmyk.jpg", CMYK_RED_JPEG), RED, 6),
    "webp": (lambda d: _write(d / "r.webp", _bgr(RED)), RED, 6),
    "bmp": (lambda d: _write(d / "r.bmp", _bgr(RED)), RED, 0),
}


def _write(path: Path, img: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), img), path
    return path


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", CONVERSIONS)
def test_every_pixel_format_becomes_uint8_rgb(tmp_path, case):
    """Grayscale, 16-bit (scaled by 1/257, not clipped), RGBA / gray+alpha (alpha dropped),
    palette and CMYK files all come out as uint8 RGB (h, w, 3) with R first."""
    write, expected, tol = CONVERSIONS[case]
    img = read_image(str(write(tmp_path)))
    assert img is not None and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    np.testing.assert_allclose(img[0, 0].astype(int), expected, atol=tol)


@pytest.mark.parametrize("content,name", [("png", "red.jpg"), ("jpeg", "red.png"), ("png", "red")])
def test_wrong_extension_decodes_by_content(tmp_path, content, name):
    ok, buf = cv2.imencode("." + content, _bgr(RED))
    path = _bytes(tmp_path / name, buf.tobytes())
    d = decode_image(str(path))
    np.testing.assert_allclose(d.image[0, 0].astype(int), RED, atol=6)
    assert d.problem is None and content.upper() in d.note


def _jpeg_bytes(seed=0) -> bytes:
    img = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", img)[1].tobytes()


def _png_bytes() -> bytes:
    return cv2.imencode(".png", np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))[1].tobytes()


BAD_FILES = {
    # name: (file name, content, words of the reason)
    "empty": ("empty.jpg", b"", "empty file"),
    "truncated_jpeg": ("half.jpg", _jpeg_bytes()[: len(_jpeg_bytes()) // 2], "truncated JPEG"),
    "truncated_jpeg_tail": ("tail.jpg", _jpeg_bytes()[:-2], "truncated JPEG"),
    "truncated_png": ("half.png", _png_bytes()[: len(_png_bytes()) // 2], "truncated PNG"),
    "text_file": ("notes.txt", b"these are my notes\n", "not an image"),
    "text_named_jpg": ("fake.jpg", b"<html>404 not found</html>", "not an image"),
    "binary_junk": ("blob.png", bytes(range(256)) * 4, "not an image"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_unusable_file_gets_a_reason(tmp_path, case):
    """Truncation is detected from the missing end marker, whatever OpenCV's decoder would return."""
    name, data, reason = BAD_FILES[case]
    path = _bytes(tmp_path / name, data)
    d = decode_image(str(path))
    assert d.image is None and reason in d.problem
    assert read_image(str(path)) is None


# ------------------------------------------------------------------ image folders
HIDDEN = {
    "ds_store": ".DS_Store",
    "thumbs_db": "Thumbs.db",
    "desktop_ini": "desktop.ini",
    "appledouble": "._img0.png",
    "hidden_folder": ".ipynb_checkpoints/img0-checkpoint.png",
    "macosx_folder": "__MACOSX/._img0.png",
}


def _small_folder(root: Path, classes=("cat", "dog"), n=3, splits=("train", "test")) -> Path:
    rng = np.random.default_rng(0)
    for s in splits:
        for c in classes:
            (root / s / c).mkdir(parents=True)
            for i in range(n):
                _write(root / s / c / f"img{i}.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    return root


def _add(root: Path, rel: str, data: bytes) -> Path:
    p = root / "train" / "cat" / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def _ours(record) -> str:
    return "\n".join(str(w.message) for w in record if str(w.message).startswith("kbench:"))


@pytest.mark.parametrize("case", [*BAD_FILES, *HIDDEN])
def test_bad_file_listed_and_skipped_or_fatal_with_strict(tmp_path, case):
    root = _small_folder(tmp_path / "d")
    if case in BAD_FILES:
        name, data, reason = BAD_FILES[case]
    else:
        name, data, reason = HIDDEN[case], b"\x00\x05\x16\x07junk", "hidden/system"
    bad = _add(root, name, data)
    if "/" in name:
        bad = bad.parent  # a hidden/system folder is listed once and not read
    with pytest.warns(UserWarning, match="not used as images") as record:
        dm = DataModule("folder", str(root), val_split=0.0).setup()
    msg = _ours(record)
    assert str(bad) in msg and reason in msg and "--data.strict" in msg
    assert len(dm.train) == 6 and (str(bad), ) == tuple(p for p, _ in dm.skipped)
    with pytest.raises(KbenchError) as e:
        DataModule("folder", str(root), strict=True).setup()
    assert str(bad) in str(e.value) and "remove or fix them" in str(e.value)


def test_list_class_tree_names_every_entry_it_does_not_read(tmp_path):
    root = _small_folder(tmp_path / "d", splits=("train",)) / "train"
    (root / "README.md").write_text("about")
    (root / ".hidden_class").mkdir()
    (root / "cat" / "nested").mkdir()
    (root / "cat" / ".DS_Store").write_bytes(b"x")
    (root / "dog" / "gone.png").symlink_to(tmp_path / "missing.png")
    tree, skipped = list_class_tree(str(root))
    assert sorted(tree) == ["cat", "dog"] and [len(v) for v in tree.values()] == [3, 3]
    reasons = dict(skipped)
    assert "outside the class folders" in reasons[str(root / "README.md")]
    assert "hidden/system folder" in reasons[str(root / ".hidden_class")]
    assert "inside a class folder" in reasons[str(root / "cat" / "nested")]
    assert "hidden/system file" in reasons[str(root / "cat" / ".DS_Store")]
    assert "broken link" in reasons[str(root / "dog" / "gone.png")]


def test_wrong_extension_in_folder_is_used_and_mentioned(tmp_path):
    root = _small_folder(tmp_path / "d")
    p = _add(root, "photo.jpg", cv2.imencode(".png", _bgr(RED))[1].tobytes())
    with pytest.warns(UserWarning, match="decoded by content") as record:
        dm = DataModule("folder", str(root), val_split=0.0, strict=True).setup()  # not an error, even strict
    assert str(p) in _ours(record) and len(dm.train) == 7 and dm.skipped == []


@pytest.mark.parametrize("layout,match", [
    ("empty_class", "empty class folder(s): {root}/train/bird"),
    ("single_class", "found 1 class folder(s) ['cat']; a classifier needs at least 2"),
    ("no_class_folders", "must go into one folder per class"),
    ("train_test_differ", "only in {root}/train: ['dog'], only in {root}/test: ['fox']"),
    ("only_bad_files", "no usable images in class folder(s) {root}/train/dog"),
    ("no_test_folder", "no test folder (expected {root}/test/<class>/*)"),
])
def test_folder_structure_errors_name_the_folders(tmp_path, layout, match):
    root = tmp_path / "d"
    if layout == "empty_class":
        _small_folder(root)
        (root / "train" / "bird").mkdir()
        (root / "test" / "bird").mkdir()
        _write(root / "test" / "bird" / "b.png", np.zeros((8, 8, 3), np.uint8))
    elif layout == "single_class":
        _small_folder(root, classes=("cat",))
    elif layout == "no_class_folders":
        root.mkdir()
        for i in range(3):
            _write(root / f"img{i}.png", np.zeros((8, 8, 3), np.uint8))
    elif layout == "train_test_differ":
        _small_folder(root)
        shutil.move(root / "test" / "dog", root / "test" / "fox")
    elif layout == "only_bad_files":
        _small_folder(root)
        for f in (root / "train" / "dog").iterdir():
            f.write_bytes(b"")
    elif layout == "no_test_folder":
        _small_folder(root, splits=("train",))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(KbenchError) as e:
            DataModule("folder", str(root)).setup()
    assert match.format(root=root) in str(e.value)


# ------------------------------------------------------------------ npz arrays
def _npz(tmp_path, **over) -> str:
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (8, 4, 4, 3), dtype=np.uint8), "y_train": np.arange(8) % 2,
              "x_test": rng.integers(0, 256, (4, 4, 4, 3), dtype=np.uint8), "y_test": np.arange(4) % 2}
    arrays.update(over)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(tmp_path / "d.npz", **arrays)
    return str(tmp_path / "d.npz")


def _nan_images():
    x = np.full((8, 4, 4, 3), 100.0, np.float32)
    x[5, 1, 2, 0] = np.nan
    return x


NPZ_ERRORS = {
    "negative_label": ({"y_train": np.array([0, 1, 0, 1, -1, 1, 0, 1])}, "y_train[4] = -1 is out of range"),
    "label_beyond_class_names": ({"y_test": np.array([0, 1, 2, 1]), "class_names": np.array(["a", "b"])},
                                 "y_test[2] = 2 is out of range (1 such label(s)): class_names has 2 entries"),
    "labels_wrong_length": ({"y_train": np.arange(7) % 2}, "y_train has shape (7,) but x_train has 8 images"),
    "labels_wrong_shape": ({"y_train": np.zeros((8, 2, 2), int)}, "y_train has shape (8, 2, 2); expected (8,)"),
    "labels_not_one_hot": ({"y_train": np.full((8, 2), 0.5)}, "rows are not one-hot"),
    "labels_fractional": ({"y_train": np.array([0, 1, 0, 1, 0.5, 1, 0, 1])}, "y_train[4] = 0.5 is not a class index"),
    "labels_strings": ({"y_train": np.array(["cat", "dog"] * 4)}, "labels must be integer class indices"),
    "nan_images": ({"x_train": _nan_images()}, "x_train[5] contains NaN or infinite values"),
    "inf_images": ({"x_test": np.full((4, 4, 4, 3), np.inf, np.float32)}, "x_test[0] contains NaN or infinite"),
    "normalised_images": ({"x_train": np.full((8, 4, 4, 3), -1.5, np.float32)}, "values range -1.5..-1.5"),
    "unit_range_images": ({"x_train": np.full((8, 4, 4, 3), 0.5, np.float32)}, "store x * 255"),
    "channels_first": ({"x_train": np.zeros((8, 3, 4, 4), np.uint8)}, "looks channels-first"),
    "no_images": ({"x_train": np.zeros((0, 4, 4, 3), np.uint8), "y_train": np.zeros(0, int)}, "x_train holds no images"),
    "missing_array": ({"y_test": None}, "missing arrays ['y_test']"),
    "single_class": ({"y_train": np.zeros(8, int), "y_test": np.zeros(4, int)}, "only 1 class"),
}


@pytest.mark.parametrize("case", NPZ_ERRORS)
def test_npz_errors_name_the_array_and_index(tmp_path, case):
    over, match = NPZ_ERRORS[case]
    path = _npz(tmp_path, **over)
    with pytest.raises(KbenchError) as e:
        DataModule("npz", path).setup()
    assert path in str(e.value) and match in str(e.value)


def test_npz_not_an_archive(tmp_path):
    (tmp_path / "d.npz").write_text("not a zip")
    with pytest.raises(KbenchError, match=r"not a readable \.npz file.*numpy\.savez"):
        DataModule("npz", str(tmp_path / "d.npz")).setup()


def test_npz_accepted_label_and_image_layouts(tmp_path):
    """(N, 1) and one-hot labels, gray (N, h, w) and RGBA images, float pixels in [0, 255]."""
    one_hot = np.eye(3)[np.arange(4) % 3]
    x_gray = np.arange(8 * 16, dtype=np.float64).reshape(8, 4, 4)
    x_rgba = np.full((4, 4, 4, 4), 9, np.uint8)
    dm = DataModule("npz", _npz(tmp_path, x_train=x_gray, y_train=(np.arange(8) % 2).reshape(8, 1),
                                x_test=x_rgba, y_test=one_hot), val_split=0.0).setup()
    assert dm.num_classes == 3 and dm.test.y.tolist() == [0, 1, 2, 0]
    assert dm.train.x.shape == (8, 4, 4, 3) and dm.train.x.dtype == np.uint8
    assert dm.train.x[0, 0, 1].tolist() == [1, 1, 1] and dm.test.x.shape == (4, 4, 4, 3)


# ------------------------------------------------------------------ config, model, weights
def _main(capsys, *argv) -> tuple[int, str]:
    from kbench.run import main

    try:
        code = main(list(argv))
    except SystemExit as e:  # the config parser exits itself
        code = e.code
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text
    return code, text


@pytest.mark.parametrize("key,bad,valid", [
    ("model.backbone", "vgg17", ["vgg16", "resnet50", "mobilenetv3small", "convnexttiny"]),
    ("recipe.name", "finetune", ["feature_extraction", "fine_tune", "full", "scratch", "seed_tutorial"]),
    ("data.source", "mnist", ["cifar10", "cifar100", "folder", "npz"]),
])
def test_unknown_names_list_the_valid_ones(capsys, key, bad, valid):
    code, text = _main(capsys, f"--{key}", bad)
    assert code == 2 and all(_has(text, v) for v in (key, bad, *valid))


@pytest.mark.parametrize("argv,key", [
    (["--data.batch_size", "many"], "data.batch_size"),
    (["--recipe.epochs", "1.5"], "recipe.epochs"),
    (["--data.strict", "maybe"], "data.strict"),
    (["--model.image_size", "big"], "model.image_size"),
    ("yaml", "data.val_split"),
])
def test_wrong_config_types_name_the_key(tmp_path, capsys, argv, key):
    if argv == "yaml":
        (tmp_path / "c.yaml").write_text("data: {val_split: a tenth}\n")
        argv = ["--config", str(tmp_path / "c.yaml")]
    code, text = _main(capsys, *argv)
    assert code == 2 and _has(text, key)


@pytest.mark.parametrize("key,value,match", [
    ("test_split", 1.5, "data.test_split must be in (0, 1)"),
    ("max_train_per_class", 0, "data.max_train_per_class must be >= 1"),
    ("batch_size", 0, "data.batch_size must be >= 1"),
])
def test_data_values_out_of_range(key, value, match):
    with pytest.raises(KbenchError) as e:
        DataModule("folder", "x", **{key: value})
    assert match in str(e.value)


def test_input_size_below_minimum(tmp_path, capsys):
    code, text = _main(capsys, "--model.backbone", "mobilenetv3small", "--model.image_size", "16",
                       "--data.root", str(tmp_path / "nowhere"), "--trainer.default_root_dir", str(tmp_path / "runs"))
    assert code == 2 and _has(text, "input size 16 is below the minimum of 32 px") and _has(text, "--model.image_size 32")
    assert not (tmp_path / "runs").exists()


def test_missing_weights_file(tmp_path, capsys):
    code, text = _main(capsys, "--model.weights", str(tmp_path / "nope.weights.h5"),
                       "--trainer.default_root_dir", str(tmp_path / "runs"))
    assert code == 2 and _has(text, "nope.weights.h5") and _has(text, "does not exist")
    assert not (tmp_path / "runs").exists()


def _other_weights(tmp_path, kind: str) -> str:
    import keras

    path = str(tmp_path / f"{kind}.weights.h5")
    if kind == "other_architecture":
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    elif kind == "other_layer_count":  # the minimalistic variant: 103 layers instead of 157
        model = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(32, 32, 3),
                                                    minimalistic=True)
    elif kind == "other_shapes":  # same layers, narrower
        model = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(32, 32, 3),
                                                    alpha=0.75)
    else:
        Path(path).write_text("not hdf5")
        return path
    model.save_weights(path)
    return path


@pytest.mark.parametrize("kind", ["other_architecture", "other_layer_count", "other_shapes", "not_hdf5"])
def test_weights_file_for_another_model_is_refused(tmp_path, kind):
    from kbench.models import build_backbone, get_spec

    path = _other_weights(tmp_path, kind)
    with pytest.raises(KbenchError) as e:
        build_backbone(get_spec("mobilenetv3small"), 32, path)
    msg = str(e.value)
    assert path in msg and "does not fit backbone 'mobilenetv3small'" in msg and "include_top=False" in msg


def test_weights_for_another_architecture_through_the_cli(tmp_path, capsys):
    """Exit status 2, the file named, and no run folder created."""
    root = _small_folder(tmp_path / "d")
    code, text = _main(capsys, "--data.source", "folder", "--data.root", str(root),
                       "--model.backbone", "mobilenetv3small", "--model.image_size", "32",
                       "--model.weights", _other_weights(tmp_path, "other_architecture"),
                       "--trainer.default_root_dir", str(tmp_path / "runs"))
    assert code == 2 and _has(text, "does not fit backbone") and _has(text, "other_architecture.weights.h5")
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------ end to end
def _bad_cifar_folder(cifar_dir: Path, root: Path) -> tuple[list[Path], list[Path]]:
    """Three real CIFAR-10 classes plus one file of every convertible and every bad kind.

    Returns ``(converted, bad)`` paths."""
    for split in ("train", "test"):
        for c in ("cat", "dog", "ship"):
            shutil.copytree(cifar_dir / split / c, root / split / c)
    cat = root / "train" / "cat"
    real = sorted(cat.glob("*.jpg"))
    jpeg = real[0].read_bytes()
    bgr = cv2.imread(str(real[0]))
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    converted = [
        _write(cat / "gray.png", gray),
        _write(cat / "gray16.png", gray.astype(np.uint16) * 257),
        _write(cat / "rgb16.png", bgr.astype(np.uint16) * 257),
        _write(cat / "rgba.png", np.dstack([bgr, np.full(gray.shape, 128, np.uint8)])),
        _png(cat / "palette.png", (gray // 128).astype(np.uint8), 3, plte=bytes([0, 0, 0, 255, 255, 255])),
        _png(cat / "gray_alpha.png", np.dstack([gray, gray]), 4),
        _bytes(cat / "cmyk.jpg", CMYK_RED_JPEG),  # 8x8: the training set then has two image sizes
        _bytes(root / "train" / "dog" / "png_named.jpg", cv2.imencode(".png", bgr)[1].tobytes()),
    ]
    bad = [
        _bytes(cat / "empty.jpg", b""),
        _bytes(cat / "truncated.jpg", jpeg[: len(jpeg) // 2]),
        _bytes(cat / "truncated.png", cv2.imencode(".png", bgr)[1].tobytes()[:300]),
        _bytes(cat / "notes.txt", b"labels checked by hand\n"),
        _bytes(root / "train" / "dog" / "text.jpg", b"<html>404</html>"),
        _bytes(cat / ".DS_Store", b"\x00\x00\x00\x01Bud1"),
        _bytes(cat / "Thumbs.db", b"\xd0\xcf\x11\xe0"),
        _bytes(root / "test" / "ship" / "desktop.ini", b"[.ShellClassInfo]\n"),
        _bytes(cat / "._img.jpg", b"\x00\x05\x16\x07"),
    ]
    (cat / ".cache").mkdir()
    _bytes(cat / ".cache" / "x.jpg", jpeg)
    bad.append(cat / ".cache")
    return converted, bad


@slow_on("jax")  # CI time: 33 s on JAX (2026-12-05 CI); the data path is backend-free, in CI on tensorflow and torch
def test_folder_with_every_bad_file_kind_trains(cifar_dir, tmp_path, capsys):
    """The issue's Done check: real CIFAR-10 JPEGs plus one file of each kind above train
    on this backend, the bad files are listed by path, and --data.strict refuses them."""
    from kbench.config import parse
    from kbench.run import run

    root = tmp_path / "data"
    converted, bad = _bad_cifar_folder(cifar_dir, root)
    with pytest.warns(UserWarning, match="not used as images") as record:
        dm = DataModule("folder", str(root), val_split=0.0).setup()
    assert len(dm.train) == 90 + len(converted) and len(dm.test) == 30
    assert sorted(p for p, _ in dm.skipped) == sorted(map(str, bad))
    cmyk = dm.train.x[[i for i, im in enumerate(dm.train.x) if im.shape[:2] == (8, 8)][0]]
    assert np.abs(cmyk[0, 0].astype(int) - RED).max() <= 6

    cfg = parse(["--data.source", "folder", "--data.root", str(root), "--data.batch_size", "32",
                 "--model.backbone", "mobilenetv3small", "--model.image_size", "32", "--model.weights", "none",
                 "--recipe.name", "scratch", "--recipe.epochs", "1", "--trainer.limit_train_batches", "2",
                 "--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.inference_batches", "1",
                 "--trainer.enable_progress_bar", "false"])
    with pytest.warns(UserWarning, match="not used as images") as record:
        results = run(cfg)
    msg = _ours(record)
    for p in bad:
        assert str(p) in msg, p
    assert str(converted[-1]) in msg and "decoded by content" in msg  # the PNG named .jpg
    run_dir = next((tmp_path / "runs").iterdir())
    stored = json.loads((run_dir / "results.json").read_text())
    assert stored["test_accuracy"] == results["test_accuracy"] and 0.0 <= stored["test_accuracy"] <= 1.0

    capsys.readouterr()
    code, text = _main(capsys, "--data.source", "folder", "--data.root", str(root), "--data.strict", "true",
                       "--model.backbone", "mobilenetv3small", "--model.image_size", "32", "--model.weights", "none",
                       "--trainer.default_root_dir", str(tmp_path / "strict_runs"))
    assert code == 2 and _has(text, "remove or fix them")
    for p in bad:
        assert _has(text, str(p)), p
    assert not (tmp_path / "strict_runs").exists()


def test_backend_env_names_a_missing_backend_package(monkeypatch):
    """KERAS_BACKEND unset (keras's default: tensorflow) or set to a backend whose package is
    not installed: one message naming it and the install / switch to do (looked up, never imported)."""
    import kbench

    real = kbench._find_spec
    monkeypatch.setattr(kbench, "_find_spec", lambda name: None if name == "tensorflow" else real(name))
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    msg = kbench.check_backend_env()
    assert msg.startswith("KERAS_BACKEND=tensorflow (keras default when unset) but the tensorflow package is not "
                          "installed: pip install -e '.[tensorflow]'")
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    assert "the tensorflow package is not installed" in kbench.check_backend_env()
    monkeypatch.setenv("KERAS_BACKEND", "nosuch")
    assert kbench.check_backend_env() == ("KERAS_BACKEND='nosuch' is not a backend kbench runs on; set it to one of: "
                                          "jax, tensorflow, torch")
    import keras

    monkeypatch.setattr(kbench, "_find_spec", real)
    monkeypatch.setenv("KERAS_BACKEND", keras.backend.backend())  # this session's backend: installed
    assert kbench.check_backend_env() is None
