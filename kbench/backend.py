"""Everything backend-specific, in one place.

This is the only kbench module that imports ``jax``, ``tensorflow`` or ``torch``
(always lazily, inside functions), so the rest of the package stays on
``keras`` and ``keras.ops``. Facts about the host that need no backend (CPU name
and flags, memory, installed versions) are in :mod:`kbench.host`.
"""

from __future__ import annotations

import os
import platform
import resource
import sys

import keras

from kbench.host import cpu_flags, cpu_name


def name() -> str:
    """The active Keras backend: ``"jax"``, ``"tensorflow"`` or ``"torch"``."""
    return keras.backend.backend()


def versions() -> dict[str, str]:
    """Versions of python, keras, numpy, opencv and the active backend library."""
    import cv2
    import numpy as np

    out = {
        "python": platform.python_version(),
        "keras": keras.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
    }
    b = name()
    if b == "jax":
        import jax
        import jaxlib

        out["jax"] = jax.__version__
        out["jaxlib"] = jaxlib.__version__
    elif b == "tensorflow":
        import tensorflow as tf

        out["tensorflow"] = tf.__version__
    elif b == "torch":
        import torch

        out["torch"] = torch.__version__
    return out


def gpu_devices() -> list[str]:
    """Names of the GPUs the active backend can use (empty list on a CPU-only machine)."""
    b = name()
    if b == "jax":
        import jax

        return [str(d) for d in jax.devices() if d.platform == "gpu"]
    if b == "tensorflow":
        import tensorflow as tf

        return [d.name for d in tf.config.list_physical_devices("GPU")]
    if b == "torch":
        import torch

        if torch.cuda.is_available():
            return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return []


def has_native_bfloat16() -> bool:
    """True when the device computes bfloat16 natively: an NVIDIA GPU of compute
    capability 8.0 or newer (Ampere+; checked through torch or TensorFlow when
    that is the backend, assumed for JAX GPUs), or a CPU with AVX512-BF16 or AMX-BF16
    (``/proc/cpuinfo`` flags ``avx512_bf16`` / ``amx_bf16``)."""
    if gpu_devices():
        b = name()
        try:
            if b == "torch":
                import torch

                return torch.cuda.get_device_capability(0) >= (8, 0)
            if b == "tensorflow":
                import tensorflow as tf

                cc = tf.config.experimental.get_device_details(
                    tf.config.list_physical_devices("GPU")[0]).get("compute_capability", (0, 0))
                return tuple(cc) >= (8, 0)
        except Exception:  # noqa: BLE001 - capability query is best effort
            return False
        return True
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def resolve_precision(precision: str) -> str:
    """``"auto"`` -> ``"mixed_bfloat16"`` where :func:`has_native_bfloat16`, else
    ``"float32"``; any other value is returned unchanged."""
    if precision != "auto":
        return precision
    return "mixed_bfloat16" if has_native_bfloat16() else "float32"


def device() -> dict:
    """Where the computation runs: ``{"type": "gpu"|"cpu", "name": str, "cores": int}``."""
    gpus = gpu_devices()
    if gpus:
        return {"type": "gpu", "name": ", ".join(gpus), "count": len(gpus), "cpu": cpu_name(), "cores": os.cpu_count()}
    return {"type": "cpu", "name": cpu_name(), "cores": os.cpu_count()}


def peak_host_memory_mb() -> float:
    """Peak resident set size of this process in MiB (``ru_maxrss``, Linux: KiB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20


def peak_device_memory_mb() -> float | None:
    """Peak memory allocated on the first GPU in MiB, or ``None`` without a GPU."""
    if not gpu_devices():
        return None
    b = name()
    try:
        if b == "torch":
            import torch

            return torch.cuda.max_memory_allocated() / 2**20
        if b == "tensorflow":
            import tensorflow as tf

            return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
        if b == "jax":
            import jax

            stats = jax.devices()[0].memory_stats() or {}
            return stats.get("peak_bytes_in_use", 0) / 2**20
    except Exception:  # noqa: BLE001 - memory stats are best effort
        return None
    return None


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and the backend (``keras.utils.set_random_seed``).

    With ``deterministic`` the backend is also asked for deterministic kernels
    (TensorFlow op determinism, ``torch.use_deterministic_algorithms`` in warn-only
    mode). JAX on CPU is deterministic already.
    """
    keras.utils.set_random_seed(seed)
    if not deterministic:
        return
    b = name()
    if b == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    elif b == "torch":
        import torch

        torch.use_deterministic_algorithms(True, warn_only=True)


def prepare_environment() -> None:
    """Process-wide settings that must happen before the first computation.

    TensorFlow: GPU memory growth instead of grabbing the whole card. (JAX's
    ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` is set in ``kbench/__init__`` because
    it must precede the first ``import jax``.) Call once, early.
    """
    if name() == "tensorflow":
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")  # retracing notices when models change between phases
        for gpu in tf.config.list_physical_devices("GPU"):
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:
                pass


def sync_fit_state(model) -> None:
    """Write a model's in-flight training state back into its variables.

    JAX's ``Model.fit``/``evaluate``/``predict`` carry weights, optimizer slots
    and metric accumulators as arrays between steps and detach them from the
    ``keras.Variable`` objects until the epoch ends (reading a variable then gives
    its *initializer* value). Callbacks that read variables mid-epoch (step
    checkpoints, the signal guard) call this first; it is
    ``Model.jax_state_sync()`` on JAX and a no-op on TensorFlow and PyTorch, whose
    variables are always current.
    """
    if name() == "jax" and hasattr(model, "jax_state_sync"):
        model.jax_state_sync()


def value_and_grad(fn, variables: list) -> tuple:
    """Value of a scalar loss and its gradients with respect to ``variables``.

    Args:
        fn: zero-argument callable that computes a scalar tensor with ``keras``
            ops from the current values of ``variables`` (e.g. a model call in
            inference mode followed by a loss). It must not assign to variables.
        variables: list of ``keras.Variable`` (float, trainable or not).

    Returns:
        ``(value, grads)``: the scalar as a backend tensor and one gradient per
        variable (same shape and dtype as the variable), in ``variables`` order.
        A variable the loss does not depend on gets zeros.

    Uses ``tf.GradientTape`` (TensorFlow), ``torch.autograd.grad`` (PyTorch) and
    ``jax.value_and_grad`` over the variables' values through a
    ``keras.StatelessScope`` (JAX, whose arrays are immutable).
    """
    b = name()
    if b == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            value = fn()
        grads = tape.gradient(value, [v.value for v in variables],
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return value, list(grads)
    if b == "torch":
        import torch

        with torch.enable_grad():
            value = fn()
            grads = torch.autograd.grad(value, [v.value for v in variables], allow_unused=True)
        return value, [torch.zeros_like(v.value) if g is None else g for v, g in zip(variables, grads)]
    if b == "jax":
        import jax

        def pure(values):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return fn()

        value, grads = jax.value_and_grad(pure)([v.value for v in variables])
        return value, list(grads)
    raise NotImplementedError(f"value_and_grad: unsupported backend {b!r}")


def start_trace(logdir: str):
    """Start the active backend's own profiler, writing under folder ``logdir``.

    Sources: ``jax.profiler.start_trace`` (an XPlane ``.xplane.pb`` and a Perfetto
    ``.trace.json.gz`` under ``logdir/plugins/profile/<time>/``),
    ``tf.profiler.experimental.start`` (the ``.xplane.pb`` only), ``torch.profiler.profile`` (CPU, and CUDA when available; written
    as a Chrome trace by :func:`stop_trace`).

    Returns:
        A handle for :func:`stop_trace`.

    Raises:
        Exception: whatever the backend's profiler raises when it cannot start
            (a missing optional package, a trace already running); the caller
            reports it and carries on.
    """
    os.makedirs(logdir, exist_ok=True)
    b = name()
    if b == "jax":
        import jax

        jax.profiler.start_trace(logdir)
        return ("jax", logdir)
    if b == "tensorflow":
        import tensorflow as tf

        tf.profiler.experimental.start(logdir)
        return ("tensorflow", logdir)
    if b == "torch":
        import torch

        acts = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        prof = torch.profiler.profile(activities=acts)
        prof.start()
        return ("torch", logdir, prof)
    raise NotImplementedError(f"start_trace: unsupported backend {b!r}")


def stop_trace(handle) -> list[str]:
    """Stop the profiler :func:`start_trace` started; returns the trace files it
    wrote (paths; for PyTorch ``<logdir>/torch_trace.json``, a Chrome trace that
    chrome://tracing or Perfetto opens; for JAX and TensorFlow the files under
    ``logdir``: ``.xplane.pb`` opens in TensorBoard's profile plugin or XProf, JAX's
    ``.trace.json.gz`` in Perfetto).

    Raises:
        Exception: whatever the backend's profiler raises on stopping or writing.
    """
    kind, logdir = handle[0], handle[1]
    if kind == "jax":
        import jax

        jax.profiler.stop_trace()
    elif kind == "tensorflow":
        import tensorflow as tf

        tf.profiler.experimental.stop()
    else:
        handle[2].stop()
        path = os.path.join(logdir, "torch_trace.json")
        handle[2].export_chrome_trace(path)
        return [path]
    return sorted(os.path.join(d, f) for d, _, files in os.walk(logdir) for f in files)
