"""Shared fixtures. The backend is whatever KERAS_BACKEND says: nox runs this suite
once per backend, each in its own process and venv."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("KBENCH_SHARED", ROOT.parent / "shared"))
CIFAR_TAR = SHARED / "datasets" / "cifar10-jpg.tar.gz"
VGG16_WEIGHTS = SHARED / "weights" / "vgg16_notop_hed-bsds500.weights.h5"


def _extract_subset(dest: Path, train_per_class: int, test_per_class: int) -> Path:
    """Extract the first N real CIFAR-10 JPEGs per class and split from the shared tarball."""
    quota = {"train": train_per_class, "test": test_per_class}
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(CIFAR_TAR) as tar:
        for m in tar:
            parts = m.name.split("/")
            if not m.isfile() or len(parts) < 4 or parts[-3] not in quota:
                continue
            key = (parts[-3], parts[-2])
            if counts.get(key, 0) >= quota[parts[-3]]:
                continue
            counts[key] = counts.get(key, 0) + 1
            out = dest / "cifar10" / parts[-3] / parts[-2] / parts[-1]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(tar.extractfile(m).read())
    return dest / "cifar10"


@pytest.fixture(autouse=True)
def _float32_policy():
    """kbench.trainer.setup_process (run by kbench.run and by a Trainer) sets the
    process-wide Keras dtype policy (precision auto may pick mixed_bfloat16); put
    float32 back so no test leaks it into the next."""
    yield
    import keras

    keras.config.set_dtype_policy("float32")


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory) -> Path:
    """A few hundred real CIFAR-10 images (30 train + 10 test per class) as an image folder."""
    if not CIFAR_TAR.exists():
        pytest.skip(f"real CIFAR-10 not found at {CIFAR_TAR} (needs ../shared beside the repo or KBENCH_SHARED)")
    return _extract_subset(tmp_path_factory.mktemp("data"), 30, 10)


@pytest.fixture(scope="session")
def vgg16_weights() -> Path:
    """Real pretrained VGG16 conv weights from ../shared."""
    if not VGG16_WEIGHTS.exists():
        pytest.skip(f"VGG16 weights not found at {VGG16_WEIGHTS} (needs ../shared beside the repo)")
    return VGG16_WEIGHTS
