"""Export the backbone of a kbench run as a Keras weights file for ``--model.weights``.

    python scripts/export_backbone.py RUN_DIR_OR_MODEL.keras OUT.weights.h5 [--recalibrate-bn FOLDER [N]]

A thin wrapper: the command is ``python -m kbench.models.export`` (same arguments,
same exit status); see :mod:`kbench.models.export` for what it does.
"""

from __future__ import annotations

import sys

from kbench.models.export import backbone_of, folder_images, main, recalibrate_bn

__all__ = ["backbone_of", "folder_images", "main", "recalibrate_bn"]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
