"""Per-step overhead of kbench's cached head phase against a bare Keras loop (issue 14).

The head phase of the default recipe (``configs/default.yaml``: VGG16 at 64 px, ``mlp``
head, batch 64, Adam 1e-3, ``precision: auto``) trains only the head on cached
``block5_pool`` features ``float32 (N, 2, 2, 512)``, so its step time is framework
overhead. On one backend (``KERAS_BACKEND``) this times, on the same seeded arrays of
that shape (real features are not needed), per training step:

* ``bare``: ``model.train_on_batch`` over pre-sliced NumPy batches;
* ``fit``: ``model.fit`` on the same arrays (NumPy in, ``shuffle=False``, no callbacks);
* ``fit_spe`` / ``kbench_spe``: the same with ``steps_per_execution`` ``--spe`` (JAX and
  TensorFlow; kbench: ``trainer.tools.steps_per_execution``);
* ``kbench``: :class:`kbench.trainer.Trainer` on :func:`kbench.data.from_arrays` with the
  frozen-prefix cache on (the cache returns the seeded arrays instead of running the
  backbone; everything after it is kbench's own phase path: PyDataset, callbacks,
  checkpoints, validation).

The step time of ``fit`` and ``kbench`` is the time between successive training-batch ends
inside an epoch (all per-batch work counted), divided by the steps each batch end covers.
Prints one JSON object (p50 / mean ms per step, ratio of p50 to ``bare``) and writes it to
``--out`` when given::

    KERAS_BACKEND=torch python scripts/step_overhead.py --out /tmp/torch.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

FEATURES = (2, 2, 512)  # VGG16 block5_pool at 64 px
CUT = "block5_pool"


def features(n: int, seed: int) -> np.ndarray:
    """Seeded ReLU-like features ``float32 (n, 2, 2, 512)``."""
    rng = np.random.default_rng(seed)
    return np.maximum(rng.normal(0.0, 1.0, (n, *FEATURES)), 0).astype(np.float32)


def build(precision: str):
    """The default transfer model (random weights) and its head above ``block5_pool``."""
    from kbench.models import build_model
    from kbench.trainer.setup import setup_process

    setup_process(precision, 42, True)
    tm = build_model("vgg16", "none", 64, "mlp", 0.5, "auto", 10)
    return tm, tm.split(CUT)[1]


def compile_like_kbench(net, from_logits: bool) -> None:
    from rich.console import Console

    from kbench.trainer.loop import LoopTools

    LoopTools(Console(quiet=True), {}).compile(net, from_logits, 1e-3)


class StepClock:
    """A callback that notes the time of every training-batch end (``steps`` per batch end)."""

    def __new__(cls, steps: int = 1):
        import keras

        class _Clock(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.deltas, self.cpu, self.last = [], [], None

            def on_epoch_begin(self, epoch, logs=None):
                self.last = None

            def on_train_batch_end(self, batch, logs=None):
                now, cpu = time.perf_counter(), time.process_time()
                if self.last is not None:
                    self.deltas.append((now - self.last[0]) / steps)
                    self.cpu.append((cpu - self.last[1]) / steps)
                self.last = now, cpu

        return _Clock()


def summary(deltas: list[float], cpu: list[float], skip: int = 5) -> dict:
    """Wall p50 / mean and process CPU time (all threads) per step in ms, after ``skip`` steps."""
    d, c = np.asarray(deltas[skip:]) * 1e3, np.asarray(cpu[skip:]) * 1e3
    return {"p50_ms": float(np.percentile(d, 50)), "mean_ms": float(d.mean()), "cpu_ms": float(c.mean()),
            "steps_timed": int(d.size)}


def time_bare(x, y, batch: int, epochs: int, precision: str) -> dict:
    _, net = build(precision)
    compile_like_kbench(net, True)
    batches = [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(y), batch)]
    deltas, cpu = [], []
    for _ in range(epochs):
        for xb, yb in batches:
            t0, c0 = time.perf_counter(), time.process_time()
            net.train_on_batch(xb, yb)
            deltas.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return summary(deltas, cpu)


def time_fit(x, y, batch: int, epochs: int, precision: str, spe: int = 1) -> dict:
    _, net = build(precision)
    compile_like_kbench(net, True)
    if spe > 1:
        net.compile(optimizer=net.optimizer, loss=net.loss, metrics=["accuracy"], steps_per_execution=spe)
    clock = StepClock(spe)
    net.fit(x, y, batch_size=batch, epochs=epochs, shuffle=False, verbose=0, callbacks=[clock])
    return summary(clock.deltas, clock.cpu)


def time_kbench(x, y, batch: int, epochs: int, precision: str, spe: int = 1) -> dict:
    from kbench.data import from_arrays
    from kbench.recipes import make_phases
    from kbench.trainer import Recipe, Trainer
    from kbench.trainer.cache import FeatureCache

    n_val = 10 * batch
    feats = {"train": x, "val": features(n_val, 2), "test": features(n_val, 3)}

    def fake_get(self, split, cut, mirror=False):  # the seeded arrays instead of the backbone
        self.store[(split, cut, mirror)] = feats[split][:len(getattr(self.dm, split).y)]
        return self.store[(split, cut, mirror)]

    FeatureCache._get = fake_get
    tiny = np.zeros((len(y), 8, 8, 3), np.uint8)
    rng = np.random.default_rng(4)
    dm = from_arrays(tiny, y, tiny[:n_val], rng.integers(0, 10, n_val), tiny[:n_val], rng.integers(0, 10, n_val),
                     batch_size=batch, seed=42)
    tm, _ = build(precision)
    import keras

    clock = StepClock(spe if keras.backend.backend() != "torch" else 1)  # steps per batch end (1 on PyTorch)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(seed=42, default_root_dir=tmp, inference_batches=1, callbacks=[clock], precision=precision)
        trainer.tools.steps_per_execution = spe
        res = trainer.fit(tm, dm, Recipe("feature_extraction", make_phases("feature_extraction", epochs, 1e-3)))
    out = summary(clock.deltas, clock.cpu)
    out["meter_step_ms_p50"] = res["phases"][0]["step_time_ms_p50"]
    out["cache_cut"] = res["phases"][0]["cache_cut"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="kbench cached head-phase step overhead vs a bare Keras loop")
    ap.add_argument("--train", type=int, default=64 * 150, help="training samples (default 150 batches)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--modes", default="bare,fit,kbench", help="comma-separated subset of bare,fit,fit_spe,kbench,kbench_spe")
    ap.add_argument("--spe", type=int, default=8, help="steps_per_execution of the fit_spe mode")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of all modes, interleaved; medians reported")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import keras

    x = features(args.train, 1)
    y = np.random.default_rng(5).integers(0, 10, args.train).astype(np.int32)
    report = {"backend": keras.backend.backend(), "batch_size": args.batch_size, "train": args.train,
              "epochs": args.epochs, "precision": args.precision, "repeat": args.repeat,
              "load_before": os.getloadavg()[0]}
    runs = {"bare": lambda: time_bare(x, y, args.batch_size, args.epochs, args.precision),
            "fit": lambda: time_fit(x, y, args.batch_size, args.epochs, args.precision),
            "fit_spe": lambda: time_fit(x, y, args.batch_size, args.epochs, args.precision, args.spe),
            "kbench": lambda: time_kbench(x, y, args.batch_size, args.epochs, args.precision),
            "kbench_spe": lambda: time_kbench(x, y, args.batch_size, args.epochs, args.precision, args.spe)}
    modes = args.modes.split(",")
    rounds = [{m: runs[m]() for m in modes} for _ in range(args.repeat)]
    for m in modes:
        report[m] = {k: float(np.median([r[m][k] for r in rounds])) for k in ("p50_ms", "mean_ms", "cpu_ms")}
        report[m]["p50_ms_rounds"] = [round(r[m]["p50_ms"], 3) for r in rounds]
    base = report.get("bare", {}).get("p50_ms")
    for m in modes:
        if base and m != "bare":
            report[m]["ratio_p50_to_bare"] = report[m]["p50_ms"] / base
            report[m]["ratio_cpu_to_bare"] = report[m]["cpu_ms"] / report["bare"]["cpu_ms"]
    report["load_after"] = os.getloadavg()[0]
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
