"""Ablation of the fine-tuning toolkit on one backend: several recipes, one process, the
frozen prefix computed once.

    KERAS_BACKEND=tensorflow python scripts/ablation.py --out ablation.json \\
        --variants '{"default": [], "cosine": ["--recipe.schedule", "cosine"]}' -- \\
        --data.root data/cifar10 --model.weights ../shared/weights/vgg16_notop_hed-bsds500.weights.h5

Every variant is ``python -m kbench.run <common args> <variant args>`` run in this process
(:func:`kbench.run.run`), with a different run folder. Features of the frozen prefix that
were computed before any phase trained a backbone layer are shared between the variants:
every variant starts from the same weights file, so those features are the ones it would
compute itself (exact, the cache tests show the cached path equals the uncached one);
a variant's cache time is therefore 0 after the first, and the table says so. Writes a
JSON list of rows (variant, args, test top-1 and loss, best epoch and its validation
accuracy, wall and fit seconds) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

SHARED: dict = {}


def _shared_cache_class():
    from kbench.trainer.cache import FeatureCache

    class SharedPrefixCache(FeatureCache):
        """A FeatureCache that reuses, across runs in this process, the features it computed
        while the backbone still had its loaded weights."""

        pristine = True

        def invalidate_from(self, index):
            if index < len(self.tm.base.layers):
                self.pristine = False
            super().invalidate_from(index)

        def get(self, split, cut):
            key = (split, cut)
            if self.pristine and key in SHARED:
                self.store[key] = SHARED[key]
            out = super().get(split, cut)
            if self.pristine:
                SHARED[key] = out
            return out

    return SharedPrefixCache


def run_variant(name: str, args: list[str]) -> dict:
    """Run one variant; returns its table row."""
    import kbench.trainer.trainer as trainer_module
    from kbench.config import parse
    from kbench.run import run

    trainer_module.FeatureCache = _shared_cache_class()
    cfg = parse(args + ["--trainer.name", name])
    t0 = time.perf_counter()
    res = run(cfg)
    return {"variant": name, "args": args, "test_accuracy": res["test_accuracy"], "test_loss": res["test_loss"],
            "best_epoch": res["best_epoch"], "best_val_accuracy": res["best_monitor_value"],
            "wall_s": time.perf_counter() - t0, "cache_s": res.get("cache_time_s"),
            "fit_s": sum(p["fit_time_s"] for p in res["phases"]), "run_dir": res.get("run_dir")}


def main(argv: list[str]) -> int:
    split = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", required=True, help="JSON object: variant name -> list of kbench.run arguments")
    p.add_argument("--out", required=True, help="JSON file for the rows (rewritten after every variant)")
    opts = p.parse_args(argv[:split])
    common, rows = argv[split + 1:], []
    for name, extra in json.loads(opts.variants).items():
        rows.append(run_variant(name, common + extra))
        with open(opts.out, "w") as f:
            json.dump(rows, f, indent=1)
    print("| variant | test top-1 | best epoch (val top-1) | fit s | cache s |\n| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['variant']} | {r['test_accuracy']:.4f} | {r['best_epoch']} ({r['best_val_accuracy']:.4f}) | "
              f"{r['fit_s']:.0f} | {r['cache_s']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
