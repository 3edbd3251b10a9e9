"""Benchmark the frozen-prefix cache: phase 2 of fine_tune (top block unfrozen)
trained end to end vs on cached prefix features, same data, same seed.

    KERAS_BACKEND=tensorflow python scripts/bench_cache.py --data-root data/cifar10 \\
        --weights ../shared/weights/vgg16_notop_hed-bsds500.weights.h5 --train-per-class 100 --epochs 2

Prints one JSON object: per-epoch training time of each path (s), the one-off
cache build time (s), the per-epoch speed-up and the epoch count from which the
cache pays for itself; and writes it to --out when given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="frozen-prefix cache benchmark")
    ap.add_argument("--data-root", required=True, help="image folder with train/ and test/ (e.g. extracted CIFAR-10)")
    ap.add_argument("--weights", default="imagenet")
    ap.add_argument("--backbone", default="vgg16")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--train-per-class", type=int, default=100)
    ap.add_argument("--test-per-class", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--unfreeze", default="auto")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import keras

    from kbench.data import DataModule
    from kbench.models import build_model, get_spec
    from kbench.recipes import make_phases
    from kbench.trainer import Recipe, Trainer

    spec = get_spec(args.backbone)
    report = {"backend": keras.backend.backend(), "backbone": args.backbone, "image_size": args.image_size,
              "batch_size": args.batch_size, "epochs": args.epochs}
    for cache in ("auto", "off"):
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(seed=0, default_root_dir=tmp, enable_progress_bar=False, inference_batches=0)
            dm = DataModule("folder", args.data_root, batch_size=args.batch_size, seed=0,
                            max_train_per_class=args.train_per_class, max_test_per_class=args.test_per_class)
            dm.setup()
            tm = build_model(args.backbone, args.weights, args.image_size, "mlp", 0.5, "auto", dm.num_classes)
            # phase 1 with 0 epochs: only the fine-tune phase (top block unfrozen) runs
            phases = make_phases("fine_tune", 0, 1e-3, args.epochs, None, args.unfreeze, spec.unfreeze)
            res = trainer.fit(tm, dm, Recipe("fine_tune", phases, cache=cache))
            rows = trainer.history
            # epoch 1 includes compilation; report the later epochs when there are any
            later = [r["epoch_time_s"] for r in rows[1:]] or [rows[0]["epoch_time_s"]]
            report[cache] = {"epoch_time_s": sum(later) / len(later), "first_epoch_s": rows[0]["epoch_time_s"],
                             "cache_time_s": res["cache_time_s"], "cache_cut": res["phases"][0]["cache_cut"],
                             "train_images": res["num_train"], "test_accuracy": res["test_accuracy"],
                             "train_images_per_s": res["phases"][0]["train_images_per_s"]}
    a, o = report["auto"], report["off"]
    report["speedup_per_epoch"] = o["epoch_time_s"] / a["epoch_time_s"]
    saved = o["epoch_time_s"] - a["epoch_time_s"]
    report["break_even_epochs"] = a["cache_time_s"] / saved if saved > 0 else None
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
