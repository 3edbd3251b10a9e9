"""Single device against data parallel, per backend: the same kbench run twice (one device,
then ``--trainer.strategy data_parallel`` on N devices: JAX and TensorFlow in one process,
PyTorch as N torchrun processes), then a markdown table of images/s per phase, wall time,
test top-1 and the largest gap between the two runs' validation losses.

    python scripts/dp_table.py --out /tmp/dp --backends jax,tensorflow,torch --devices 2 -- \\
        --data.root ../shared/cifar10 --model.weights ../shared/weights/vgg16_notop_hed-bsds500.weights.h5 \\
        --data.max_train_per_class 100 --recipe.epochs 2 --recipe.fine_tune_epochs 1

Arguments after ``--`` go to every ``kbench.run``. On a CPU, N devices are N virtual (JAX)
or logical (TensorFlow) devices, or N processes (PyTorch), sharing the same cores: the
table then shows the cost of the engine, not a speed-up. Writes ``OUT/table.md`` and
``OUT/<backend>-<single|dp>/`` run folders and logs. Exit status 1 if any run failed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path


def _run(backend: str, kind: str, devices: int, out: Path, extra: list[str]) -> Path | None:
    """One kbench run; returns its run folder (None when it failed; the log says why)."""
    root = out / f"{backend}-{kind}"
    root.mkdir(parents=True, exist_ok=True)
    args = ["--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false", *extra]
    launch = [sys.executable, "-m", "kbench.run"]
    if kind == "dp":
        args += ["--trainer.strategy", "data_parallel"]
        if backend == "torch":
            launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                      str(devices), "-m", "kbench.run"]
        else:
            args += ["--trainer.devices", str(devices)]
    with open(root / "log.txt", "w") as log:
        rc = subprocess.run([*launch, *args], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "KERAS_BACKEND": backend}).returncode
    runs = [p for p in root.iterdir() if (p / "results.json").exists()]
    return runs[0] if rc == 0 and runs else None


def _row(backend: str, kind: str, run: Path | None, ref: Path | None) -> str:
    if run is None:
        return f"| {backend} | {kind} | failed (see its log.txt) | | | | |"
    res = json.loads((run / "results.json").read_text())
    rates = ", ".join(f"{p['phase']} {p['train_images_per_s']:.0f}" for p in res["phases"])
    gap = ""
    if ref is not None and ref != run:
        with open(run / "metrics.csv") as a, open(ref / "metrics.csv") as b:
            gap = f"{max(abs(float(x['val_loss']) - float(y['val_loss'])) for x, y in zip(csv.DictReader(a), csv.DictReader(b))):.2e}"
    par = res.get("parallel", {})
    return (f"| {backend} | {kind} ({par.get('replicas', 1)} replicas, {par.get('processes', 1)} processes) | "
            f"{rates} | {res['total_time_s']:.0f} | {res['test_accuracy']:.4f} | {gap} |")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--backends", default="jax,tensorflow,torch")
    ap.add_argument("--devices", type=int, default=2)
    args = ap.parse_args(argv[:split])
    extra = argv[split + 1:]
    lines = ["| backend | run | train images/s per phase | total s | test top-1 | max val_loss gap |",
             "|---|---|---|---|---|---|"]
    failed = False
    for backend in args.backends.split(","):
        single = _run(backend, "single", 1, args.out, extra)
        dp = _run(backend, "dp", args.devices, args.out, extra)
        failed |= single is None or dp is None
        lines += [_row(backend, "single", single, single), _row(backend, "dp", dp, single)]
    table = "\n".join(lines)
    (args.out / "table.md").write_text(table + "\n")
    print(table)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
