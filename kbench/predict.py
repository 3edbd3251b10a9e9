"""Predict classes of image files with a ``model.keras`` saved by kbench.

    python -m kbench.predict MODEL.keras IMAGE_OR_FOLDER... [--output predictions.csv]
        [--batch-size 64] [--top-k 1] [--interpolation linear]

Works on any backend (``KERAS_BACKEND``), whichever one saved the model. The
model is loaded with Keras safe mode (:func:`kbench.models.saved.load_saved_model`);
pickled files are refused. Folders are searched recursively (sorted, hidden
files skipped); every file is decoded with OpenCV as RGB
(:func:`kbench.data.read_image`) and resized with OpenCV to the model's input
size. Files that cannot be decoded are listed and skipped.

The CSV (written atomically: a temporary file in the same folder, then
``os.replace``) has one row per image and rank: ``file, class, probability,
class_index, rank`` (``rank`` 1 = top-1; ``--top-k`` rows per image).
Exit status: 0 done, 2 user error (missing or refused model, no readable image,
unwritable output), 130 interrupted.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import kbench
from kbench.data.batches import resize_batch
from kbench.data.images import read_image
from kbench.data.sources import INTERPOLATIONS
from kbench.models.saved import load_saved_model

console = Console()
err_console = Console(stderr=True)
CSV_COLUMNS = ("file", "class", "probability", "class_index", "rank")
SUMMARY_ROWS = 10


def collect_files(inputs: list[str]) -> list[str]:
    """Files to predict, in order: each input file as given, each folder's files
    recursively in sorted order (hidden files and folders skipped).

    Raises:
        KbenchError: an input does not exist.
    """
    out: list[str] = []
    for item in inputs:
        if os.path.isfile(item):
            out.append(item)
        elif os.path.isdir(item):
            found = []
            for root, dirs, files in os.walk(item):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                found += [os.path.join(root, f) for f in files if not f.startswith(".")]
            out += sorted(found)
        else:
            raise kbench.KbenchError(f"input {item!r} does not exist; pass image files or folders of images")
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(b, classes)`` logits, computed in float64 -> ``float64 (b, classes)``."""
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def predict_files(model, files: list[str], image_size: int, from_logits: bool, batch_size: int = 64,
                  interpolation: str = "linear") -> tuple[list[str], np.ndarray, list[str]]:
    """Decode, resize and predict ``files`` in batches of ``batch_size``.

    Returns:
        ``(kept, probs, bad)``: the decoded files, their class probabilities
        ``float64 (len(kept), classes)`` (softmax applied when ``from_logits``), and
        the files OpenCV could not decode.
    """
    kept, bad, chunks = [], [], []
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        for i in range(0, len(files), batch_size):
            batch = files[i:i + batch_size]
            images = list(pool.map(read_image, batch))
            ok = [(f, im) for f, im in zip(batch, images) if im is not None]
            bad += [f for f, im in zip(batch, images) if im is None]
            if not ok:
                continue
            x = resize_batch([im for _, im in ok], image_size, INTERPOLATIONS[interpolation])
            out = np.asarray(model.predict_on_batch(x), dtype=np.float32)
            chunks.append(softmax(out) if from_logits else out.astype(np.float64))
            kept += [f for f, _ in ok]
    probs = np.concatenate(chunks) if chunks else np.zeros((0, 0))
    return kept, probs, bad


def rows_for(files: list[str], probs: np.ndarray, class_names: list[str], top_k: int) -> list[tuple]:
    """CSV rows ``(file, class, probability, class_index, rank)``, ``top_k`` per file, best first."""
    k = min(top_k, probs.shape[1]) if len(files) else 0
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [(f, class_names[j], float(probs[i, j]), int(j), r + 1)
            for i, f in enumerate(files) for r, j in enumerate(order[i])]


def write_csv_atomic(path: str, rows: list[tuple]) -> None:
    """Write ``rows`` under :data:`CSV_COLUMNS` to ``path`` through a temporary file
    in the same folder and ``os.replace``, so ``path`` is never left half written.

    Raises:
        KbenchError: the folder does not exist or is not writable.
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".predictions-", suffix=".csv.tmp", dir=folder)
    except OSError as e:
        raise kbench.KbenchError(f"cannot write output {path!r} ({e.strerror}); pass --output in a writable folder") \
            from None
    try:
        with os.fdopen(fd, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(CSV_COLUMNS)
            w.writerows((file, name, f"{p:.6f}", j, r) for file, name, p, j, r in rows)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _check_output(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise kbench.KbenchError(f"output {path!r} is a folder; pass a CSV file path to --output")
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        raise kbench.KbenchError(f"output folder {folder!r} does not exist or is not writable; "
                                 "pass --output in a writable folder")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (argparse exits with status 2 on bad usage)."""
    p = argparse.ArgumentParser(prog="python -m kbench.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a model.keras saved by kbench (pickled files are refused)")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files and/or folders (recursive)")
    p.add_argument("--output", "-o", default="predictions.csv", help="CSV to write (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=1, help="classes written per image (default: %(default)s)")
    p.add_argument("--interpolation", choices=sorted(INTERPOLATIONS), default="linear",
                   help="OpenCV resize interpolation, as in training (default: %(default)s)")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.top_k < 1:
        p.error("--batch-size and --top-k must be positive integers")
    return args


def run(args: argparse.Namespace) -> dict:
    """Predict and write the CSV; returns ``{"rows", "files", "skipped", "output", "backend"}``.

    Raises:
        KbenchError: refused/missing model, missing input, no readable image, bad output.
    """
    _check_output(args.output)
    files = collect_files(args.inputs)
    if not files:
        raise kbench.KbenchError(f"no files found in {', '.join(map(repr, args.inputs))}")
    loaded = load_saved_model(args.model)
    kept, probs, bad = predict_files(loaded.model, files, loaded.image_size, loaded.from_logits,
                                     args.batch_size, args.interpolation)
    if bad:
        listing = "\n  ".join(bad[:50]) + (f"\n  ... and {len(bad) - 50} more" if len(bad) > 50 else "")
        err_console.print(f"[yellow]warning:[/] {len(bad)} file(s) could not be decoded as images and were "
                          f"skipped:\n  {escape(listing)}", soft_wrap=True)
    if not kept:
        raise kbench.KbenchError(f"none of the {len(files)} file(s) could be decoded as an image; nothing written")
    rows = rows_for(kept, probs, loaded.class_names, args.top_k)
    write_csv_atomic(args.output, rows)
    return {"rows": rows, "files": kept, "skipped": bad, "output": args.output, "backend": keras.backend.backend()}


def summary(result: dict) -> Table:
    """A rich table of the first :data:`SUMMARY_ROWS` rows."""
    rows = result["rows"]
    t = Table(title=f"{len(result['files'])} image(s) -> {result['output']} ({result['backend']})",
              caption=f"first {min(SUMMARY_ROWS, len(rows))} of {len(rows)} rows" if len(rows) > SUMMARY_ROWS
              else None)
    for col, just in (("file", "left"), ("class", "left"), ("probability", "right"), ("rank", "right")):
        t.add_column(col, justify=just, overflow="fold")
    for file, name, p, _, r in rows[:SUMMARY_ROWS]:
        t.add_row(escape(file), escape(name), f"{p:.4f}", str(r))
    return t


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status."""
    args = parse_args(argv)
    try:
        result = run(args)
    except kbench.KbenchError as e:
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]")
        return 130
    console.print(summary(result))
    if result["skipped"]:
        console.print(f"{len(result['skipped'])} file(s) skipped (not decodable)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
