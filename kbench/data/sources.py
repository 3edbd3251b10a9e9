"""The data sources and resize interpolations by name (keras-free, so the config can
list them without importing a backend)."""

import cv2

SOURCES = ("cifar10", "cifar100", "folder", "npz")
INTERPOLATIONS = {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR,
                  "cubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA}
