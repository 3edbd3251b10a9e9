"""JAX on a CPU with and without kbench's XLA flag (kbench/xla.py), TensorFlow as reference:
``python -m kbench.bench`` per backbone in three interleaved workers (TensorFlow, JAX with
``KBENCH_XLA_CPU_FLAGS=off``, JAX as kbench sets it), then one markdown table of training and
inference images/s and the ratios.

    python scripts/xla_cpu_table.py --out runs/xla-table [--models vgg16,resnet50] [--image-size 64]
        [--batch-size 32] [--steps 5 --warmup 2 --repeats 3] [--precision float32]
    python scripts/xla_cpu_table.py --out runs/xla-table --only-table

Needs jax and tensorflow installed. Each (model, config) is one bench run in
``OUT/<model>-<size>/<config>/`` (bench.json, logs), run in the order TensorFlow, JAX off, JAX
on per model so the three see about the same machine load; the table is rebuilt from those
files. The load average at each start is recorded in bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from kbench.models.registry import BACKBONES  # noqa: E402 - keras-free

#: label -> (backend, extra environment)
CONFIGS = {"tensorflow": ("tensorflow", {}), "jax_off": ("jax", {"KBENCH_XLA_CPU_FLAGS": "off"}),
           "jax_on": ("jax", {})}
MODELS = tuple(BACKBONES)


def _size(model: str, size: int) -> int:
    return max(size, 71) if model == "xception" else size  # Xception's smallest input is 71 px


def _run(out: Path, model: str, size: int, label: str, args) -> int:
    backend, extra = CONFIGS[label]
    dest = out / f"{model}-{size}" / label
    if (dest / "bench.json").exists():
        return 0
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "KBENCH_XLA_CPU_FLAGS")}
    env.update(extra, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "kbench.bench", "--models", model, "--image-size", str(size), "--batch-size",
           str(args.batch_size), "--backends", backend, "--precision", args.precision, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--repeats", str(args.repeats), "--no-peak", "--output", str(dest)]
    print("$", " ".join(cmd), flush=True)
    code = subprocess.run(cmd, env=env, check=False, stdout=subprocess.DEVNULL).returncode
    if code:
        print(f"{label} on {model}: kbench.bench exited with status {code}; see {dest}/bench.md and {dest}/logs/",
              file=sys.stderr, flush=True)
    return code


def _ips(out: Path, model: str, size: int, label: str) -> dict:
    path = out / f"{model}-{size}" / label / "bench.json"
    if not path.exists():
        return {}
    rows = json.loads(path.read_text())["rows"]
    return {r["mode"]: r.get("images_per_s") for r in rows}


def _f(v, spec=".1f") -> str:
    return "-" if v is None else format(v, spec)


def _ratio(a, b) -> str:
    return "-" if not a or not b else f"{a / b:.2f}x"


def table(out: Path, models, size: int) -> str:
    """The markdown table: per backbone and mode, images/s of TF, JAX off, JAX on, speed-up and JAX on vs TF."""
    lines = ["| backbone | mode | TF images/s | JAX, fixes off | JAX, kbench fixes | speed-up | JAX fixed / TF |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for m in models:
        r = {label: _ips(out, m, _size(m, size), label) for label in CONFIGS}
        for mode in ("train", "inference"):
            tf, off, on = (r[k].get(mode) for k in CONFIGS)
            lines.append(f"| {m} {_size(m, size)}px | {mode} | {_f(tf)} | {_f(off)} | {_f(on)} | {_ratio(on, off)} | "
                         f"{_ratio(on, tf)} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="output folder (one sub-folder per backbone and config)")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated registry backbones (default: all)")
    p.add_argument("--image-size", type=int, default=64, help="input side in pixels (Xception: at least 71)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", default="float32", help="a kbench.bench precision")
    p.add_argument("--steps", type=int, default=5, help="timed steps per repeat")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats")
    p.add_argument("--only-table", action="store_true", help="reprint the table of an earlier --out")
    args = p.parse_args()
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        p.error(f"--models: unknown {', '.join(unknown) or '(none given)'}; valid: {', '.join(MODELS)}")
    failed = 0
    if not args.only_table:
        for m in models:
            for label in CONFIGS:
                failed += bool(_run(args.out, m, _size(m, args.image_size), label, args))
    print(table(args.out, models, args.image_size))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
