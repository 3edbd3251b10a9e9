"""``results.json`` and the end-of-run summary table.

``results.json`` holds: test top-1 accuracy and loss, per-phase wall time and
throughput (train images/s after the first compile steps; inference images/s
end to end on real test images), the backend, library versions, device, class
names and the preprocessing mode.
"""

from __future__ import annotations

import os
import time

from rich.table import Table

from kbench import KbenchError, __version__, backend, xla
from kbench.subproc import write_json

RESULTS_FORMAT = 1


def make_run_dir(root: str, name: str) -> str:
    """Create and return ``<root>/<name>-<YYYYmmdd-HHMMSS>`` (``-1``, ``-2``... if taken).

    Raises:
        KbenchError: the folder cannot be created or written.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = os.path.join(root, f"{name}-{stamp}")
    path, i = base, 1
    try:
        while os.path.exists(path):
            path, i = f"{base}-{i}", i + 1
        os.makedirs(path)
        probe = os.path.join(path, ".write-test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise KbenchError(f"cannot create run folder {path!r} ({e.strerror}); "
                          "set --trainer.default_root_dir to a writable folder") from None
    return path


def write_results(run_dir: str, *, model, datamodule, recipe, trainer, phases: list[dict], test: dict,
                  inference: dict, cache_time_s: float, model_path: str, total_time_s: float,
                  extra: dict | None = None) -> dict:
    """Assemble and write ``<run_dir>/results.json``; returns the dict.

    Units: times in seconds, throughput in images/s, memory in MiB. ``total_time_s``
    runs from ``Trainer.fit`` entry (data set-up) to the model save;
    ``train_time_s`` sums the phases (their prefix caching included);
    ``cache_time_s`` is all frozen-prefix computation (test split included).
    ``extra`` (best/tested epoch, resume origin) is merged in.
    """
    results = {
        "format": RESULTS_FORMAT,
        "kbench_version": __version__,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "status": "completed",
        "backend": backend.name(),
        "versions": backend.versions(),
        "device": backend.device(),
        "xla_flags": xla.record(),
        "precision": trainer.precision,
        "precision_requested": trainer.precision_requested,
        "seed": trainer.seed,
        "fast_dev_run": trainer.fast_dev_run,
        "backbone": model.spec.name,
        "image_size": model.image_size,
        "preprocess": model.preprocess.mode,
        "recipe": recipe.name,
        "class_names": datamodule.class_names,
        "num_train": len(datamodule.train),
        "num_val": len(datamodule.val),
        "num_test": len(datamodule.test),
        "batch_size": datamodule.batch_size,
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "test_images": test["images"],
        "test_via_cache": test.get("via_cache"),
        "epochs": len(trainer.history),
        "phases": phases,
        "train_time_s": sum(p["wall_time_s"] for p in phases),
        "cache_time_s": cache_time_s,
        "total_time_s": total_time_s,
        "inference_images_per_s": inference.get("images_per_s"),
        "inference": inference,
        "peak_host_memory_mb": backend.peak_host_memory_mb(),
        "peak_device_memory_mb": backend.peak_device_memory_mb(),
        "model_path": os.path.basename(model_path),
        **(extra or {}),
    }
    write_json(os.path.join(run_dir, "results.json"), results, indent=2)
    return results


def write_status(run_dir: str, status: str, **fields) -> dict:
    """Write a ``results.json`` for a run that did not complete (``status`` is
    ``interrupted`` or ``failed``), with the backend, versions and ``fields``
    (epoch, step, error message, checkpoint paths, metric history)."""
    results = {"format": RESULTS_FORMAT, "kbench_version": __version__,
               "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "status": status,
               "backend": backend.name(), "versions": backend.versions(), "device": backend.device(),
               "xla_flags": xla.record(), **fields}
    write_json(os.path.join(run_dir, "results.json"), results, indent=2)
    return results


def _fmt(v, spec=".4f") -> str:
    return "-" if v is None else format(v, spec)


def summary_table(results: dict, history: list[dict]) -> Table:
    """A rich table: one row per epoch, then test accuracy/loss and throughput in the caption."""
    t = Table(title=f"kbench {results['recipe']} · {results['backbone']} @ {results['image_size']}px · "
                    f"{results['backend']} ({results['device']['type']})")
    for col in ("phase", "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "images/s"):
        t.add_column(col, justify="right" if col != "phase" else "left")
    for r in history:
        t.add_row(r["phase"], str(r["epoch"]), _fmt(r["loss"]), _fmt(r["accuracy"]), _fmt(r["val_loss"]),
                  _fmt(r["val_accuracy"]), _fmt(r["learning_rate"], ".2e"), _fmt(r["images_per_s"], ".0f"))
    walls = ", ".join(f"{p['phase']} {p['wall_time_s']:.0f}s" for p in results["phases"])
    t.caption = (f"test top-1 {results['test_accuracy']:.4f}, loss {results['test_loss']:.4f} on "
                 f"{results['test_images']} images · wall {walls} · inference "
                 f"{_fmt(results['inference_images_per_s'], '.0f')} images/s")
    return t
