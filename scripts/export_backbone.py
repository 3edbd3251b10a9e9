"""Export the backbone of a kbench run as a Keras weights file for ``--model.weights``.

    python scripts/export_backbone.py RUN_DIR_OR_MODEL.keras OUT.weights.h5

Reads the run's ``model.keras`` (Keras safe mode, via
:func:`kbench.saved.load_saved_model`), takes its backbone (the nested
``keras.applications`` model) and writes that model's weights with
``Model.save_weights``. The file loads into the same architecture built with
``include_top=False`` at any input size the architecture accepts, which is
what ``python -m kbench.run --model.backbone NAME --model.weights OUT.weights.h5``
does: a network trained with kbench (e.g. from scratch on one dataset) becomes
the pretrained backbone of a feature-extraction or fine-tuning run on another.

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


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].endswith(".weights.h5"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        print("error: give a run folder (or its model.keras) and an output path ending in .weights.h5",
              file=sys.stderr)
        return 2
    src, out = argv
    path = os.path.join(src, "model.keras") if os.path.isdir(src) else src
    from kbench.saved import load_saved_model

    try:
        base = backbone_of(load_saved_model(path).model)
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
