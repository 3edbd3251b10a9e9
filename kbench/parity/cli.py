"""Numerical parity of kbench models across Keras backends.

    python -m kbench.parity --models vgg16,resnet50,mobilenetv2 --backends jax,tensorflow,torch
    python -m kbench.parity --models all --precision float32 --output parity-cpu
    python -m kbench.compare --parity --models ... --backends ...   # calls :func:`main`

For every model the same architecture is built on every backend with *the same
initial weights* and fed *the same fixed batch*; the outputs are compared for every
backend pair:

1. The first backend that runs builds the model (``kbench.models.build_model``,
   random seeded init: ``--model.weights none``, no download), saves its weights
   with ``keras.Model.save_weights`` (``.weights.h5``), and every backend (that one
   included) loads that file into a freshly built model. A fingerprint (SHA-256 of
   the float variables' bytes after loading) proves the weights are bit-identical.
2. One fixed, seeded batch (``float32 (batch, size, size, 3)`` pixels in [0, 255],
   ``int32 (batch,)`` labels) is written once by the parent; no augmentation, no
   shuffling.
3. Each backend runs in its own subprocess (``KERAS_BACKEND`` is fixed per process;
   ``XLA_PYTHON_CLIENT_PREALLOCATE=false``) and computes:

   * ``logits``: ``model(x, training=False)``, ``float32 (batch, classes)``;
   * ``loss``: sparse categorical cross-entropy from those logits (batch mean);
   * ``head_grads``: gradients of that loss w.r.t. every trainable variable of the
     head (``kbench.backend.value_and_grad``: GradientTape / torch.autograd /
     jax.value_and_grad), in inference mode;
   * ``step_losses``: the losses of the first ``--steps`` training steps
     (``Model.train_on_batch``, plain SGD, the same batch every step). By default
     (``--train head``) the head trains and the backbone is frozen, as in kbench's
     ``feature_extraction`` recipe and phase 1 of ``fine_tune``. ``--train all``
     trains everything; with random-init backbones (no pretrained weights here)
     whose BatchNorm runs on its initial moving statistics, activations are not
     normalized, backbone gradients are huge and SGD diverges within a step or
     two (losses rise), which amplifies float32 rounding by orders of magnitude:
     measured on 2026-11-29 with lr 1e-3, ResNet50 / ResNet50V2 / MobileNetV2 step
     losses parted by 8-30 % at step 2-3 while their logits agreed to 1e-6. That
     measures the chaos of a diverging optimization, not backend agreement, so it
     is not the default.

   Dropout is off: the head's dropout rate is 0 and the backbone is called with
   ``training=False`` (its dropout / stochastic depth are inactive). BatchNorm: the
   backbone's BatchNormalization layers stay in inference mode (moving statistics,
   never updated), as in kbench's ``fine_tune`` recipe (``base_inference``); the
   ``mlp`` head's BatchNormalization uses batch statistics during the training
   steps (as when kbench trains a head) and moving statistics for logits, loss and
   gradients.

The outputs of every backend pair are compared by :mod:`kbench.parity.numeric`
(error measure, tolerances :data:`kbench.parity.numeric.TOLERANCES` and their
reasons), the worker body is in :mod:`kbench.parity.worker`, and ``parity.md`` and
the terminal table come from :mod:`kbench.parity.report`.

Exit status of :func:`main`: 0 every pair passes, 1 some pair fails or a backend
failed, 2 bad command line (unknown model, backend or precision).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from kbench import BACKENDS, KbenchError, host, subproc
from kbench import PRECISIONS as ALL_PRECISIONS
from kbench.models.heads import HEADS
from kbench.models.registry import BACKBONES, check_input_size, get_spec
from kbench.parity.numeric import TOLERANCES, compare_results, tolerances_for
from kbench.parity.report import print_table, render_markdown
from kbench.parity.worker import run_worker

#: The precisions parity checks: those with stated tolerances (:data:`TOLERANCES`).
PRECISIONS = tuple(p for p in ALL_PRECISIONS if any(p == q for q, _ in TOLERANCES))
DEFAULT_MODELS = "vgg16,resnet50,mobilenetv2"
TRAIN_SCOPES = ("head", "all")
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad command-line input; :func:`main` prints the message and returns 2."""


# --------------------------------------------------------------------------- parent
def run_backend(backend_name: str, job: dict, timeout: float) -> dict:
    """Run :func:`kbench.parity.worker.run_worker` for one backend in a subprocess
    (:func:`kbench.subproc.run_logged`, output logged to ``<work>/<backend>.log``);
    returns its meta dict and arrays (``"arrays"``), or ``{"error": str}`` (with
    ``"stderr_tail"``, the end of its output, when it ran and failed)."""
    if not host.is_installed(backend_name):
        return {"error": f"backend {backend_name!r} is not installed (no module {backend_name!r})"}
    work = Path(job["work"])
    job_path = work / f"job_{backend_name}.json"
    job_path.write_text(json.dumps(job))
    log = work / f"{backend_name}.log"
    done = subproc.run_logged([sys.executable, "-m", "kbench.parity", "--worker", str(job_path)], str(log),
                              env=subproc.backend_env(backend_name), timeout=timeout)
    if done.timed_out:
        return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0 or not (work / f"{backend_name}.npz").exists():
        text = log.read_text(errors="replace") if log.exists() else (done.error or "")
        return {"error": f"exit {done.returncode}: {subproc.error_line(text)}", "stderr_tail": text[-3000:]}
    meta = json.loads((work / f"{backend_name}.json").read_text())
    with np.load(work / f"{backend_name}.npz") as z:
        meta["arrays"] = {k: z[k] for k in z.files}
    meta["wall_s"] = round(done.wall_s, 1)
    return meta


def run_model(model: str, image_size: int, backends: list[str], settings: dict, timeout: float,
              log=print) -> dict:
    """Parity of one registry model across ``backends`` (each in a subprocess).

    Returns:
        ``{"model", "image_size", "backends": {name: meta or {"error"}}, "pairs": [...]}``
        where each pair is ``{"a", "b", "verdict", ...}`` from :func:`compare_results`
        (or ``verdict "fail"`` with ``error`` when a side failed or the weights
        fingerprints differ).
    """
    rng = np.random.default_rng(settings["seed"])
    bs, n = settings["batch_size"], settings["num_classes"]
    x = rng.uniform(0, 255, (bs, image_size, image_size, 3)).astype(np.float32)
    y = (np.arange(bs) % n).astype(np.int32)  # every class present, fixed order
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix=f"kbench-parity-{model}-") as work:
        np.savez(Path(work) / "batch.npz", x=x, y=y)
        saved = False
        for b in backends:
            job = {**settings, "model": model, "image_size": image_size, "work": work, "save_weights": not saved}
            log(f"[parity] {model} on {b}{' (builds and saves the initial weights)' if not saved else ''} ...")
            res = run_backend(b, job, timeout)
            results[b] = res
            if "error" in res:
                log(f"[parity] {model} on {b}: FAILED: {res['error']}")
            else:
                saved = True
                log(f"[parity] {model} on {b}: done in {res['wall_s']} s ({res['seconds']})")
    pairs = []
    for i, a in enumerate(backends):
        for b in backends[i + 1:]:
            ra, rb = results[a], results[b]
            pair = {"a": a, "b": b}
            if "error" in ra or "error" in rb:
                bad = a if "error" in ra else b
                pair.update(verdict="fail", error=f"{bad} failed: {results[bad]['error']}")
            elif ra["fingerprint"] != rb["fingerprint"]:
                pair.update(verdict="fail", error="initial weights differ after loading (fingerprints differ)")
            else:
                tol = tolerances_for(settings["precision"], [ra["device"], rb["device"]])
                try:
                    pair.update(compare_results(ra["arrays"], rb["arrays"], tol))
                except ValueError as e:
                    pair.update(verdict="fail", error=str(e))
            pairs.append(pair)
    backends_out = {b: {k: v for k, v in r.items() if k != "arrays"} for b, r in results.items()}
    for b, r in results.items():  # a few values for the record
        if "arrays" in r:
            backends_out[b]["loss"] = float(r["arrays"]["loss"])
            backends_out[b]["logits_max_abs"] = float(np.abs(r["arrays"]["logits"]).max())
            backends_out[b]["step_losses"] = [float(s) for s in r["arrays"]["step_losses"]]
    return {"model": model, "image_size": image_size, "backends": backends_out, "pairs": pairs}


def _parse_list(value: str, valid: tuple[str, ...] | list[str], what: str, allow_all: bool = False) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if allow_all and items == ["all"]:
        return list(valid)
    bad = [v for v in items if v not in valid]
    if bad or not items:
        shown = ", ".join(bad) if bad else "(empty)"
        raise UsageError(f"unknown {what} {shown}; valid: {', '.join(valid)}" + (" or all" if allow_all else ""))
    return list(dict.fromkeys(items))


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m kbench.parity`` (also behind ``kbench.compare --parity``)."""
    p = argparse.ArgumentParser(prog="python -m kbench.parity",
                                description="Numerical parity of kbench models across Keras backends.")
    p.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated registry names, or 'all'")
    p.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated: {', '.join(BACKENDS)}")
    p.add_argument("--precision", default="float32", help=f"one of: {', '.join(PRECISIONS)}")
    p.add_argument("--output", default=None, help="output folder (default parity-<timestamp>/)")
    p.add_argument("--image-size", type=int, default=None,
                   help="input side in px (default: the registry minimum of each model, 32 or 71)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--steps", type=int, default=3, help="training steps whose losses are compared")
    p.add_argument("--learning-rate", type=float, default=1e-2, help="SGD learning rate of the training steps")
    p.add_argument("--train", default="head", choices=TRAIN_SCOPES,
                   help="what the training steps train: head (backbone frozen, default) or all")
    p.add_argument("--head", default="mlp", help="head kind (kbench.models.HEADS); its dropout is set to 0")
    p.add_argument("--jit-compile", default="auto", help="auto, true or false (keras Model.compile)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=3600, help="seconds per backend run")
    p.add_argument("--parity", action="store_true", help=argparse.SUPPRESS)  # tolerated from kbench.compare
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p


def _check(args) -> tuple[list[str], list[str], dict[str, int], bool | str]:
    """Validate parsed arguments; returns ``(models, backends, image size per model, jit_compile)``.

    Raises:
        UsageError, KbenchError: unknown model, backend, precision or head, a bad
            number, or an image size below a model's minimum.
    """
    models = _parse_list(args.models, list(BACKBONES), "model", allow_all=True)
    backends = _parse_list(args.backends, BACKENDS, "backend")
    if args.precision not in PRECISIONS:
        raise UsageError(f"unknown precision {args.precision!r}; valid: {', '.join(PRECISIONS)}")
    if args.head not in HEADS:
        raise UsageError(f"unknown head {args.head!r}; valid: {', '.join(HEADS)}")
    if args.head == "article":
        raise UsageError("head 'article' ends in softmax (no logits); use gap, flatten or mlp")
    jit = {"auto": "auto", "true": True, "false": False}.get(str(args.jit_compile).lower())
    if jit is None:
        raise UsageError(f"--jit-compile {args.jit_compile!r}; valid: auto, true, false")
    if args.batch_size < 1 or args.steps < 0 or args.num_classes < 2:
        raise UsageError("--batch-size must be >= 1, --steps >= 0 and --num-classes >= 2")
    sizes = {}
    for m in models:
        spec = get_spec(m)
        sizes[m] = args.image_size or max(spec.min_size, 32)
        check_input_size(spec, sizes[m])
    return models, backends, sizes, jit


def _run_all(args, argv: list[str], models: list[str], backends: list[str], sizes: dict, jit) -> dict:
    """Run every model on every backend, writing ``parity.json`` and ``parity.md`` to
    ``--output`` after each model (partial results survive); returns the report."""
    out = Path(args.output or f"parity-{_dt.datetime.now():%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)
    settings = {"precision": args.precision, "batch_size": args.batch_size, "num_classes": args.num_classes,
                "steps": args.steps, "learning_rate": args.learning_rate, "head": args.head, "jit_compile": jit,
                "train": args.train,
                "seed": args.seed}
    command = "python -m kbench.parity " + " ".join(a for a in argv if a != "--parity")
    env = host.environment()
    report = {
        "command": command.strip(),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{env['cpu']}, {env['cores']} cores",
        "settings": settings,
        "tolerances": {f"{p} {d}": asdict(t) for (p, d), t in TOLERANCES.items() if p == args.precision},
        "models": [],
    }
    t0 = time.perf_counter()
    for m in models:
        report["models"].append(run_model(m, sizes[m], backends, settings, args.timeout,
                                          log=lambda s: print(s, file=sys.stderr, flush=True)))
        report["versions"] = {k: v for r in report["models"] for b in r["backends"].values()
                              for k, v in (b.get("versions") or {}).items()}
        report["total_s"] = round(time.perf_counter() - t0, 1)
        subproc.write_json(str(out / "parity.json"), report, indent=1)
        (out / "parity.md").write_text(render_markdown(report))
    print_table(report)
    print(f"wrote {out / 'parity.json'} and {out / 'parity.md'}")
    return report


def main(argv: list[str] | None = None) -> int:
    """Run the parity check and write ``parity.json`` and ``parity.md`` to ``--output``.

    The parent imports no keras (only the worker subprocesses do), so it runs in a
    venv holding any single backend.

    Returns:
        0 when every model/backend pair passes, 1 when a pair fails or a backend run
        failed, 2 for bad input (unknown model, backend, precision or head; image size
        below a model's minimum), with one message on stderr and no traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse already printed its message
        return EXIT_USAGE if e.code else EXIT_OK
    if args.worker:
        run_worker(args.worker)
        return EXIT_OK
    try:
        models, backends, sizes, jit = _check(args)
    except (UsageError, KbenchError) as e:
        print(f"kbench.parity: {e}", file=sys.stderr)
        return EXIT_USAGE
    report = _run_all(args, argv, models, backends, sizes, jit)
    ok = all(p["verdict"] == "pass" for r in report["models"] for p in r["pairs"])
    return EXIT_OK if ok else EXIT_FAIL
