"""Export the backbone of a kbench run as a Keras weights file for ``--model.weights``.

    python -m kbench.models.export RUN_DIR_OR_MODEL.keras OUT.weights.h5 [--recalibrate-bn FOLDER [N]]

(``scripts/export_backbone.py`` is the same command.) Reads the run's ``model.keras``
(Keras safe mode, via :func:`kbench.models.saved.load_saved_model`), takes its backbone
(the nested ``keras.applications`` model) and writes that model's weights with
``Model.save_weights``. The file loads into the same architecture built with
``include_top=False`` at any input size the architecture accepts, which is
what ``python -m kbench.run --model.backbone NAME --model.weights OUT.weights.h5``
does: a network trained with kbench (e.g. from scratch on one dataset) becomes
the pretrained backbone of a feature-extraction or fine-tuning run on another
(``kbench.studies task_similarity`` runs it so, as a subprocess with ``KERAS_BACKEND``).

``--recalibrate-bn FOLDER [N]`` first re-estimates every BatchNormalization
layer's moving mean and variance from N (default 1024) images of the image
folder FOLDER (``<class>/<file>`` tree; the first N in sorted order, resized
with OpenCV): momentum set to 0 and one forward pass in training mode in
batches of 128, cumulative averages per layer. Keras's MobileNetV2 uses BN
momentum 0.999, so after a short training run (a few hundred steps) its moving
statistics are still mostly their initial values (mean 0, variance 1) and the
network predicts one class in inference mode; the frozen backbone of a
feature-extraction or fine-tune run is in inference mode, so it needs
calibrated statistics. (The method is "precise BN", Wu & Johnson 2021,
"Rethinking 'Batch' in BatchNorm", section 3.)

Exit status: 0 written, 2 bad input (message names the file and what to do).
"""

from __future__ import annotations

import os
import sys

import keras
import numpy as np

from kbench import KbenchError


def backbone_of(model: keras.Model) -> keras.Model:
    """The single nested ``keras.Model`` layer of a kbench end-to-end model.

    Raises:
        KbenchError: the model holds no nested model or more than one.
    """
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(nested) != 1:
        raise KbenchError(f"expected one backbone model inside {model.name!r}, found {len(nested)}; "
                          "pass a model.keras written by python -m kbench.run")
    return nested[0]


def recalibrate_bn(model: keras.Model, images: np.ndarray, batch_size: int = 128) -> int:
    """Set every BatchNormalization layer's moving statistics to the average of
    its batch statistics over ``images`` (``float32 (N, s, s, 3)``, the model's
    input; batches of ``batch_size``). Returns the number of BN layers.

    Each batch is run in training mode with momentum 0 (the layer stores that
    batch's statistics); the per-batch means and variances are averaged with
    weights = batch sizes. Momentum is restored afterwards.
    """
    def walk(m):
        for la in m.layers:
            yield from walk(la) if isinstance(la, keras.Model) else [la]

    bns = [la for la in walk(model) if isinstance(la, keras.layers.BatchNormalization)]
    saved = [bn.momentum for bn in bns]
    sums = [[np.zeros(bn.moving_mean.shape), np.zeros(bn.moving_variance.shape)] for bn in bns]
    try:
        for bn in bns:
            bn.momentum = 0.0
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size]
            model(x, training=True)
            for acc, bn in zip(sums, bns):
                acc[0] += len(x) * keras.ops.convert_to_numpy(bn.moving_mean).astype(np.float64)
                acc[1] += len(x) * keras.ops.convert_to_numpy(bn.moving_variance).astype(np.float64)
        for acc, bn in zip(sums, bns):
            bn.moving_mean.assign((acc[0] / len(images)).astype("float32"))
            bn.moving_variance.assign((acc[1] / len(images)).astype("float32"))
    finally:
        for bn, m in zip(bns, saved):
            bn.momentum = m
    return len(bns)


def folder_images(folder: str, n: int, size: int) -> np.ndarray:
    """The first ``n`` images (sorted paths, round-robin over the classes) of
    image folder ``folder`` as ``float32 (n, size, size, 3)`` in [0, 255].

    Raises:
        KbenchError: the folder has no usable images.
    """
    from kbench.data.batches import resize_batch
    from kbench.data.images import decode_all, list_class_tree

    tree, _ = list_class_tree(folder)
    per_class = [sorted(files) for _, files in sorted(tree.items()) if files]
    files = [f for group in zip(*per_class) for f in group][:n] if per_class else []
    images = [d.image for d in decode_all(files, folder, progress=False) if d.image is not None]
    if not images:
        raise KbenchError(f"no usable images in {folder!r} for --recalibrate-bn (expected {folder}/<class>/*.jpg)")
    return resize_batch(images, size)


def main(argv: list[str]) -> int:
    """The command line (``argv`` without the program name); returns the exit status (0 or 2)."""
    calib = None
    if "--recalibrate-bn" in argv:
        k = argv.index("--recalibrate-bn")
        rest = argv[k + 1:]
        problem = ("needs an image folder" if not rest else
                   f"folder {rest[0]!r} does not exist" if not os.path.isdir(rest[0]) else
                   f"count {rest[1]!r} is not a positive integer" if len(rest) > 1 and not rest[1].isdigit()
                   else None)
        if problem:
            print(f"error: --recalibrate-bn {problem}; give an image folder (<class>/<file>) and optionally "
                  "a number of images, e.g. --recalibrate-bn data/train 1024", file=sys.stderr)
            return 2
        calib = (rest[0], int(rest[1]) if len(rest) > 1 else 1024)
        argv = argv[:k]
    if len(argv) != 2 or not argv[1].endswith(".weights.h5"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        got = f" (got output path {argv[1]!r})" if len(argv) == 2 else ""
        print("error: give a run folder (or its model.keras) and an output path ending in .weights.h5" + got,
              file=sys.stderr)
        return 2
    src, out = argv
    path = os.path.join(src, "model.keras") if os.path.isdir(src) else src
    if os.path.isdir(src) and not os.path.isfile(path) and os.path.isdir(os.path.join(src, "checkpoints")):
        print(f"error: run {src!r} has no model.keras: it has not finished; finish it with "
              f"python -m kbench.run --resume {src}", file=sys.stderr)
        return 2
    from kbench.models.saved import load_saved_model

    try:
        model = load_saved_model(path).model
        base = backbone_of(model)
        if calib:
            size = int(model.inputs[0].shape[1])
            n = recalibrate_bn(model, folder_images(calib[0], calib[1], size))
            print(f"recalibrated {n} BatchNormalization layers on {calib[1]} images of {calib[0]} at {size}px")
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        base.save_weights(out)
    except KbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}: backbone {base.name!r}, {len(base.weights)} weight tensors, "
          f"{sum(int(np.prod(w.shape)) for w in base.weights):,} values")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
