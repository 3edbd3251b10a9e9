"""Accuracy and cost of the two-view flip cache: three ``python -m kbench.run`` runs with the
same seed and config (default recipe; + flips on the two-view cache; + flips uncached,
``recipe.cache off``), then one markdown table of test top-1, wall time, cache time, cache
memory and peak memory read from their ``results.json``.

    KERAS_BACKEND=torch python scripts/flip_cache_table.py --out runs/flip-table \\
        -- --data.root data/cifar10 --model.weights ../shared/weights/vgg16_notop_hed-bsds500.weights.h5

(``data/cifar10``: the extracted ``../shared/datasets/cifar10-jpg.tar.gz``, as in the README.)
A quick check: add ``--data.source folder --data.max_train_per_class 20 --data.max_test_per_class 10``.

Everything after ``--`` goes to every run (data, model, recipe and trainer keys). The
backend is KERAS_BACKEND's. ``--only-table`` reprints the table of an earlier ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"default": [], "+ flips, two-view cache": ["--data.augment", "true"],
           "+ flips, uncached": ["--data.augment", "true", "--recipe.cache", "off"]}


def _folder(out: Path, label: str) -> Path:
    return out / "".join(c if c.isalnum() else "-" for c in label).strip("-")


def run_all(out: Path, extra: list[str]) -> None:
    """Run every config of :data:`CONFIGS` into its own folder under ``out``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    for label, args in CONFIGS.items():
        cmd = [sys.executable, "-m", "kbench.run", *extra, *args, "--trainer.default_root_dir",
               str(_folder(out, label)), "--trainer.enable_progress_bar", "false"]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, env=env, check=True)


def _latest_results(folder: Path) -> dict:
    files = sorted(folder.glob("*/results.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise SystemExit(f"no results.json under {folder}")
    return json.loads(files[-1].read_text())


def _num(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(out: Path) -> str:
    """The markdown table of the latest run of each config under ``out``."""
    rows = ["| config | test top-1 | wall time (s) | cache time (s) | cache views | cache memory (MiB) "
            "| peak host memory (MiB) | peak device memory (MiB) |", "|---|---|---|---|---|---|---|---|"]
    for label in CONFIGS:
        r = _latest_results(_folder(out, label))
        views = sorted({p.get("cache_views") for p in r["phases"] if p.get("cache_views")}) or ["-"]
        rows.append(f"| {label} | {_num(r['test_accuracy'], '.4f')} | {_num(r['total_time_s'], '.1f')} "
                    f"| {_num(r['cache_time_s'], '.1f')} | {'/'.join(map(str, views))} "
                    f"| {_num(r.get('cache_memory_mb'), '.1f')} | {_num(r.get('peak_host_memory_mb'), '.0f')} "
                    f"| {_num(r.get('peak_device_memory_mb'), '.0f')} |")
    r = _latest_results(_folder(out, "default"))
    rows.append(f"\n{r['backend']}, {r['device']}, seed {r['seed']}, {r['num_train']} train / {r['num_test']} test "
                f"images, recipe {r['recipe']}, {r['backbone']} @ {r['image_size']}px")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for the three runs")
    ap.add_argument("--only-table", action="store_true", help="do not run; print the table of --out")
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    out = Path(args.out)
    if not args.only_table:
        run_all(out, extra)
    print(table(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
