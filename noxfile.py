"""nox sessions: the test suite once per Keras backend, each in its own venv with only
that backend installed (GPU builds when an NVIDIA GPU is present), plus ruff.

    nox                        # tests-jax, tests-tensorflow, tests-torch, tests-cross-backend, lint
    nox -s tests-torch -- -k cache     # one backend, extra pytest arguments
"""

from __future__ import annotations

import shutil
import subprocess

import nox

nox.options.sessions = ["lint", "tests-jax", "tests-tensorflow", "tests-torch", "tests-cross-backend"]
nox.options.reuse_existing_virtualenvs = True
PYTHON = "3.11"


def has_nvidia_gpu() -> bool:
    """True when `nvidia-smi` lists at least one GPU."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    r = subprocess.run([smi, "-L"], capture_output=True, text=True)
    return r.returncode == 0 and "GPU" in r.stdout


# What each backend session installs besides `.[test]`: (CPU, GPU).
BACKEND_PACKAGES = {
    "jax": (["jax==0.10.2"], ["jax[cuda12]==0.10.2"]),
    "tensorflow": (["tensorflow-cpu>=2.21,<2.22"], ["tensorflow[and-cuda]>=2.21,<2.22"]),
    "torch": (["torch==2.13.0"], ["torch==2.13.0"]),  # PyPI's Linux torch wheel is the CUDA build
}


def _tests(session: nox.Session, backend: str) -> None:
    cpu, gpu = BACKEND_PACKAGES[backend]
    session.install("-e", ".[test]", *(gpu if has_nvidia_gpu() else cpu))
    session.run("python", "-c", "import keras; print('keras', keras.__version__, 'backend', keras.backend.backend())",
                env={"KERAS_BACKEND": backend})
    args = session.posargs or ["-m", "not slow"]  # `nox -s tests-jax -- -m slow` for the long cases
    session.run("pytest", "-q", "-p", "no:cacheprovider", "--durations=15", *args, env={"KERAS_BACKEND": backend})


@nox.session(name="tests-jax", python=PYTHON)
def tests_jax(session: nox.Session) -> None:
    """Test suite on the JAX backend."""
    _tests(session, "jax")


@nox.session(name="tests-tensorflow", python=PYTHON)
def tests_tensorflow(session: nox.Session) -> None:
    """Test suite on the TensorFlow backend."""
    _tests(session, "tensorflow")


@nox.session(name="tests-torch", python=PYTHON)
def tests_torch(session: nox.Session) -> None:
    """Test suite on the PyTorch backend."""
    _tests(session, "torch")


@nox.session(name="tests-cross-backend", python=PYTHON)
def tests_cross_backend(session: nox.Session) -> None:
    """All three backends and Ray in one venv: a model saved on each backend must load and
    predict the same on the other two, a tiny model must give the same logits, gradients
    and training losses on all three (each side in its own subprocess), and the Ray sweep
    runner runs a grid on two backends (tests/sweep/test_sweep_ray.py)."""
    gpu = has_nvidia_gpu()
    session.install("-e", ".[test,sweep]", *(p for b in BACKEND_PACKAGES.values() for p in b[1 if gpu else 0]))
    session.run("pytest", "-q", "-p", "no:cacheprovider", "--durations=5", "tests/test_predict.py",
                "tests/parity/test_parity.py", "tests/sweep/test_sweep_ray.py",
                "-k", "other_backends or across_backends or sweep_ray", *(session.posargs or ["-m", "not slow"]))


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff over the package, tests, scripts and this file."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", "kbench", "tests", "scripts", "noxfile.py")
