"""Image files: decode any common format into ``uint8`` RGB, and find what in an
image folder is not a usable image (split out of :mod:`kbench.data`).

Decoding is by content, never by file name (a PNG named ``.jpg`` is read as a
PNG). Conversions to ``uint8`` RGB ``(h, w, 3)``:

* grayscale (8- or 16-bit, 1-bit): the gray value copied to R, G and B;
* gray + alpha, RGBA and palette images with transparency: the alpha channel is
  dropped (the colour under it is kept, as Pillow's ``convert("RGB")`` does), not
  composited on a background;
* palette (indexed) images: expanded through their palette;
* 16-bit images: scaled to 8-bit with ``round(v / 257)`` (65535 -> 255), not clipped;
* float images: ``[0, 1]`` scaled by 255, any other range min-max stretched to [0, 255];
* CMYK JPEG / TIFF: converted to RGB by OpenCV (Adobe-inverted CMYK included).

A file is *not usable* (see :func:`decode_image`) when it cannot be read, is
empty, is a JPEG without its end-of-image marker or a PNG without its ``IEND``
chunk (truncated: some OpenCV versions would return a partly grey image), or
does not decode at all (text, archives, ...). Hidden and system entries
(``.DS_Store``, ``._*`` AppleDouble files, ``Thumbs.db``, ``desktop.ini``,
``__MACOSX/`` and other hidden folders) are never read as data.

:func:`decode_all` decodes a folder's files in threads and can report its
progress on stderr (a whole CIFAR-10 copy takes minutes on a small CPU).
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from kbench import KbenchError
from kbench.progress import LineProgress

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")
#: Names (lower case) of operating-system files and folders that are never data.
SYSTEM_NAMES = frozenset({".ds_store", "thumbs.db", "ehthumbs.db", "desktop.ini", "__macosx", "$recycle.bin",
                          "system volume information", ".spotlight-v100", ".trashes", ".fseventsd",
                          ".ipynb_checkpoints", "icon\r"})
_MAGIC = [(b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
          (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF")]
_EXT_KIND = {".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".jfif": "JPEG", ".png": "PNG", ".gif": "GIF",
             ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP"}
#: Files per thread task in :func:`decode_all`.
DECODE_CHUNK = 64


@dataclass
class Decoded:
    """Result of :func:`decode_image`.

    ``image``: ``uint8`` RGB ``(h, w, 3)``, or None when the file is not usable;
    ``problem``: why it is not usable (None when it is); ``note``: something worth
    telling about a usable file (its extension does not match its content), or None.
    """

    image: np.ndarray | None
    problem: str | None = None
    note: str | None = None


def is_hidden_or_system(name: str) -> bool:
    """True for hidden (``.name``, including ``._*`` AppleDouble files) and OS system names."""
    return name.startswith(".") or name.lower() in SYSTEM_NAMES


def sniff(data: bytes) -> str | None:
    """Image format from the first bytes (``"JPEG"``, ``"PNG"``, ...), or None when not recognised."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((kind for magic, kind in _MAGIC if data.startswith(magic)), None)


def _truncated(kind: str | None, data: bytes) -> str | None:
    if kind == "JPEG":
        # Inside entropy-coded data every 0xFF byte is followed by 0x00 or a restart
        # marker, so an FFD9 after the last start-of-scan (FFDA) is the real end of image.
        sos = data.rfind(b"\xff\xda")
        if sos < 0 or data.find(b"\xff\xd9", sos) < 0:
            return "truncated JPEG (no end-of-image marker)"
    elif kind == "PNG" and data.rfind(b"IEND") < 0:
        return "truncated PNG (no IEND chunk)"
    return None


def to_rgb(img: np.ndarray) -> np.ndarray:
    """Convert an OpenCV ``IMREAD_UNCHANGED`` array (BGR / BGRA / gray, any depth) to ``uint8`` RGB."""
    if img.dtype == np.uint16:
        img = (img / 257.0).round().astype(np.uint8)
    elif img.dtype != np.uint8:
        f = img.astype(np.float64)
        if np.issubdtype(img.dtype, np.floating) and f.min() >= 0 and f.max() <= 1:
            img = (f * 255).round().astype(np.uint8)
        else:
            img = cv2.normalize(f, None, 0, 255, cv2.NORM_MINMAX).round().astype(np.uint8)
    if img.ndim == 3 and img.shape[2] in (1, 2):  # gray, gray + alpha
        img = img[:, :, 0]
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def decode_image(path: str) -> Decoded:
    """Read and decode one file by its content into ``uint8`` RGB ``(h, w, 3)``.

    Never raises for a bad file: unreadable, empty, truncated and non-image files
    come back with ``image=None`` and ``problem`` saying why.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return Decoded(None, f"cannot be read ({e.strerror or type(e).__name__})")
    if not data:
        return Decoded(None, "empty file (0 bytes)")
    kind = sniff(data)
    problem = _truncated(kind, data)
    if problem:
        return Decoded(None, problem)
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        img = None
    if img is None or img.size == 0:
        what = f"{kind} file that OpenCV cannot decode" if kind else f"not an image (starts with {data[:12]!r})"
        return Decoded(None, what)
    ext = os.path.splitext(path)[1].lower()
    note = None
    if kind and _EXT_KIND.get(ext) != kind:
        note = f"{kind} content with extension {ext or '(none)'!r}: decoded as {kind}"
    return Decoded(to_rgb(img), None, note)


def _decode_chunk(files: list[str]) -> list[Decoded]:
    return [decode_image(f) for f in files]


def decode_all(files: list[str], where: str, progress: bool = True) -> list[Decoded]:
    """:func:`decode_image` for each of ``files`` (in threads), in the same order.

    Files go to the threads in chunks of :data:`DECODE_CHUNK` (one task per file cost
    more than decoding a small JPEG). ``where``: the folder being decoded, for the
    progress messages. ``progress``: report on stderr; when stderr is a terminal, a
    transient rich bar (the folder's name, files done / total, elapsed and remaining
    time), else one line at the start (``decoding N images from WHERE ...``), a
    :class:`~kbench.progress.LineProgress` line about every 10 s for long folders
    (done / total, images/s, elapsed, eta) and one line at the end with the time taken.
    False: print nothing.
    """
    chunks = [files[i:i + DECODE_CHUNK] for i in range(0, len(files), DECODE_CHUNK)]
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        decoded = (d for part in pool.map(_decode_chunk, chunks) for d in part)
        return list(_reporting(decoded, len(files), where) if progress else decoded)


def _reporting(decoded, total: int, where: str):
    """Yield ``decoded`` unchanged while reporting progress on stderr (see :func:`decode_all`)."""
    console = Console(stderr=True)
    if console.is_terminal:
        columns = (TextColumn("decoding {task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task(os.path.basename(os.path.normpath(where)), total=total)
            for d in decoded:
                bar.advance(task)
                yield d
        return
    print(f"decoding {total} images from {where} ...", file=sys.stderr, flush=True)
    start, unusable = time.perf_counter(), 0
    lines = LineProgress(f"decoding {where}", total)
    for done, d in enumerate(decoded, 1):
        unusable += d.image is None
        if done % DECODE_CHUNK == 0 or done == total:
            lines.update(done)
        yield d
    lines.finish()
    extra = f" ({unusable} not usable)" if unusable else ""
    print(f"decoded {total} images from {where} in {time.perf_counter() - start:.1f} s{extra}",
          file=sys.stderr, flush=True)


def read_image(path: str) -> np.ndarray | None:
    """Decode one image file with OpenCV into ``uint8`` RGB ``(h, w, 3)``; None when not usable.

    See the module docstring for the conversions and :func:`decode_image` for the reason.
    """
    return decode_image(path).image


def list_class_tree(root: str) -> tuple[dict[str, list[str]], list[tuple[str, str]]]:
    """Scan a ``root/<class>/<file>`` tree without reading any file.

    Returns:
        ``({class_name: [file paths]}, skipped)``: classes are the sorted visible
        sub-folders of ``root``; ``skipped`` lists ``(path, reason)`` for every
        entry that is not read: hidden/system files and folders at either level,
        files directly in ``root``, folders nested in a class folder, and entries
        that are not regular files (broken links).

    Raises:
        KbenchError: a folder cannot be listed (permissions).
    """
    def entries(folder):
        try:
            return sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            raise KbenchError(f"cannot list folder {folder!r} ({e.strerror}); check its permissions") from None

    tree, skipped = {}, []
    for e in entries(root):
        if is_hidden_or_system(e.name):
            skipped.append((e.path, "hidden/system " + ("folder, not read" if e.is_dir() else "file")))
        elif e.is_dir():
            tree[e.name] = []
            for f in entries(e.path):
                if is_hidden_or_system(f.name):
                    skipped.append((f.path, "hidden/system " + ("folder, not read" if f.is_dir() else "file")))
                elif f.is_dir():
                    skipped.append((f.path, "folder inside a class folder, not read"))
                elif f.is_file():
                    tree[e.name].append(f.path)
                else:
                    skipped.append((f.path, "not a regular file (broken link?)"))
        else:
            skipped.append((e.path, "file outside the class folders, not read"))
    return tree, skipped


def describe(items: list[tuple[str, str]], limit: int = 50) -> str:
    """``items`` ``(path, reason)`` as indented lines, at most ``limit`` of them."""
    lines = [f"  {path}  ({reason})" for path, reason in items[:limit]]
    if len(items) > limit:
        lines.append(f"  ... and {len(items) - limit} more")
    return "\n".join(lines)


def report_skipped(root: str, skipped: list[tuple[str, str]], notes: list[tuple[str, str]], strict: bool) -> None:
    """Warn about (or, with ``strict``, refuse) the entries of an image folder that were not used.

    ``skipped``: ``(path, reason)`` of unusable files and hidden/system/stray entries;
    ``notes``: ``(path, note)`` of usable files worth mentioning (wrong extension);
    these never fail, not even with ``strict``.

    Raises:
        KbenchError: ``strict`` and ``skipped`` is not empty (the first 50 paths are listed).
    """
    msg = ""
    if skipped:
        msg = f"{len(skipped)} entr{'y' if len(skipped) == 1 else 'ies'} under {root} not used as images:\n"
        msg += describe(skipped)
        if strict:
            raise KbenchError(msg + "\nremove or fix them, or drop --data.strict to skip them with a warning")
        msg += "\nskipped (--data.strict true makes this an error)"
    if notes:
        msg += ("\n" if msg else "") + f"{len(notes)} file(s) under {root} decoded by content:\n" + describe(notes)
    if msg:
        warnings.warn("kbench: " + msg, UserWarning, stacklevel=3)


def check_class_folders(root: str, dirs: dict[str, str], trees: dict[str, dict[str, list[str]]],
                        names: list[str]) -> None:
    """Check a folder dataset's class folders before any image is decoded.

    Args:
        root: the data root; ``dirs``: split name -> folder (``train``/``test``, or
            one entry for an unsplit root); ``trees``: split -> :func:`list_class_tree`
            result; ``names``: the training class names (sorted).

    Raises:
        KbenchError: no test folder beside train, fewer than 2 classes, train and
            test class sets differ, or an empty class folder (each names the folder).
    """
    first = next(iter(dirs.values()))
    if "train" in dirs and "test" not in trees:
        raise KbenchError(f"{root}: no test folder (expected {dirs['test']}/<class>/*); add one, or put the "
                          "class folders directly under the root to split them with --data.test_split")
    if len(names) < 2:
        loose = [f for f in os.listdir(first) if os.path.isfile(os.path.join(first, f))]
        hint = (f"; the {len(loose)} file(s) directly in it must go into one folder per class" if loose
                and not names else "")
        raise KbenchError(f"{first}: found {len(names)} class folder(s) {names}{hint}; a classifier needs at "
                          f"least 2: put each class's images in its own folder {first}/<class>/")
    if "test" in trees and sorted(trees["test"]) != names:
        only_train = sorted(set(names) - set(trees["test"]))
        only_test = sorted(set(trees["test"]) - set(names))
        raise KbenchError(f"train and test class folders differ under {root}: only in {dirs['train']}: "
                          f"{only_train}, only in {dirs['test']}: {only_test}; give both the same class folders")
    empty = [os.path.join(dirs[s], c) for s, t in trees.items() for c, files in t.items() if not files]
    if empty:
        raise KbenchError(f"empty class folder(s): {', '.join(empty)}; add images or remove the folder(s)")
