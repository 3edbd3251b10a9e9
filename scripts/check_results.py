"""Check the newest run folder under RUNS_DIR: results.json exists and its test top-1
accuracy is above a floor (CI uses it after a short main job).

    python scripts/check_results.py runs --min-accuracy 0.2

Exit status 0 when it passes, 1 otherwise (the reason is printed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs_dir", type=Path)
    ap.add_argument("--min-accuracy", type=float, default=0.1, help="fail at or below this top-1 (chance on CIFAR-10 is 0.1)")
    args = ap.parse_args(argv)
    runs = sorted((p for p in args.runs_dir.glob("*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    if not runs:
        print(f"FAIL: no run folder in {args.runs_dir}")
        return 1
    res_path = runs[-1] / "results.json"
    if not res_path.exists():
        print(f"FAIL: {res_path} is missing")
        return 1
    res = json.loads(res_path.read_text())
    acc = res.get("test_accuracy")
    if acc is None or acc <= args.min_accuracy:
        print(f"FAIL: test top-1 {acc} is not above {args.min_accuracy} ({res_path})")
        return 1
    print(f"OK: {res_path}: test top-1 {acc:.4f} on {res['test_images']} images, backend {res['backend']}, "
          f"train {res['train_time_s']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
