"""The worker of ``python -m kbench.parity``: one model on one backend, in its own subprocess.

``python -m kbench.parity --worker JOB.json`` (started by :mod:`kbench.parity` with
``KERAS_BACKEND`` set) runs :func:`run_worker`: it builds the model, loads the shared
initial weights, fingerprints them, and writes the logits, loss, head gradients and
training-step losses of the fixed batch for the parent to compare.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np


def _fingerprint(model) -> str:
    """SHA-256 over the bytes of every float variable of ``model``, in order."""
    from keras import ops

    h = hashlib.sha256()
    for v in model.weights:
        if "float" in str(v.dtype):
            arr = np.ascontiguousarray(ops.convert_to_numpy(v.value))
            h.update(v.path.encode())
            h.update(arr.tobytes())
    return h.hexdigest()


def _build(job: dict, work: Path):
    """Build the job's model in inference mode, save (first backend) and load the shared
    initial weights; returns ``(transfer model, composed keras model, weights fingerprint)``."""
    import keras

    from kbench import backend
    from kbench.models.transfer import build_model

    backend.prepare_environment()
    backend.seed_everything(job["seed"], deterministic=True)
    keras.config.set_dtype_policy(job["precision"])
    tm = build_model(job["model"], "none", job["image_size"], job["head"], 0.0, "auto", job["num_classes"])
    model = tm.compose(base_training=False)
    weights = work / "init.weights.h5"
    if job["save_weights"]:
        model.save_weights(weights)
    model.load_weights(weights)
    return tm, model, _fingerprint(model)


def _train_steps(job: dict, tm, model, loss_fn, x, y) -> np.ndarray:
    """The losses of ``job["steps"]`` SGD steps on the fixed batch, float32 ``(steps,)``."""
    import keras

    if job.get("train", "head") == "head":
        tm.base.trainable = False  # feature extraction: only the head's variables change
    model.compile(optimizer=keras.optimizers.SGD(job["learning_rate"]), loss=loss_fn,
                  jit_compile=job["jit_compile"])
    steps = []
    for _ in range(job["steps"]):
        model.reset_metrics()  # the loss tracker is a running mean across calls otherwise
        steps.append(float(model.train_on_batch(x, y, return_dict=True)["loss"]))
    return np.asarray(steps, np.float32)


def run_worker(job_path: str) -> None:
    """Subprocess body: one model on the backend given by ``KERAS_BACKEND``.

    Reads the job JSON (model, image size, head, precision, paths...), writes
    ``<backend>.npz`` (logits, loss, grad/<path>, step_losses) and ``<backend>.json``
    (meta: versions, device, fingerprint, timings) into the job's folder.
    """
    job = json.loads(Path(job_path).read_text())
    work = Path(job["work"])
    import keras

    from kbench import backend

    t0 = time.perf_counter()
    tm, model, fingerprint = _build(job, work)
    t_build = time.perf_counter() - t0

    batch = np.load(work / "batch.npz")
    x, y = batch["x"], batch["y"]
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    t0 = time.perf_counter()
    logits = keras.ops.convert_to_numpy(model(x, training=False)).astype(np.float32)
    head_vars = [v for layer in tm.head for v in layer.trainable_variables]
    yt = keras.ops.convert_to_tensor(y)
    xt = keras.ops.convert_to_tensor(x)
    loss, grads = backend.value_and_grad(lambda: loss_fn(yt, model(xt, training=False)), head_vars)
    out = {"logits": logits, "loss": np.asarray(keras.ops.convert_to_numpy(loss), np.float32)}
    for v, g in zip(head_vars, grads):
        out[f"grad/{v.path}"] = keras.ops.convert_to_numpy(g).astype(np.float32)
    t_eval = time.perf_counter() - t0

    t0 = time.perf_counter()
    out["step_losses"] = _train_steps(job, tm, model, loss_fn, x, y)
    t_train = time.perf_counter() - t0

    name = backend.name()
    np.savez(work / f"{name}.npz", **out)
    dev = backend.device()
    meta = {"backend": name, "versions": backend.versions(), "device": dev["type"], "device_name": dev["name"],
            "fingerprint": fingerprint, "head_variables": [v.path for v in head_vars],
            "seconds": {"build_load": round(t_build, 2), "eval_grad": round(t_eval, 2),
                        "train_steps": round(t_train, 2)}}
    (work / f"{name}.json").write_text(json.dumps(meta, indent=1))
