"""Everything backend-specific, in one place.

This package is the only part of kbench that imports ``jax``, ``tensorflow`` or ``torch``
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

from kbench import KbenchError
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
    """Chip names of the GPUs the active backend can use, e.g. ``["NVIDIA H100 80GB HBM3"]``
    (torch ``get_device_name``, JAX ``device_kind``, TensorFlow's ``device_name`` detail);
    an empty list on a CPU-only machine."""
    b = name()
    if b == "jax":
        import jax

        try:
            devices = jax.devices()
        except Exception as e:  # noqa: BLE001 - e.g. JAX_PLATFORMS=cuda without a GPU or CUDA plugin
            detail = str(e).strip()[:200]
            raise KbenchError(f"JAX cannot start a device ({type(e).__name__}{': ' + detail if detail else ''}); "
                              f"JAX_PLATFORMS={os.environ.get('JAX_PLATFORMS')!r}: unset it (JAX picks the device) "
                              "or install the jax plugin for that platform") from None
        return [str(getattr(d, "device_kind", None) or d) for d in devices if d.platform == "gpu"]
    if b == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        return [tf.config.experimental.get_device_details(d).get("device_name") or d.name for d in gpus]
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


def float32_uses_tf32() -> bool:
    """True when the active backend may run float32 matmuls/convolutions on a GPU in TF32
    (JAX: ``jax_default_matmul_precision`` unset or below ``"highest"``, XLA's GPU default;
    TensorFlow: ``tensor_float_32_execution_enabled()``, default on; torch:
    ``torch.backends.cudnn.allow_tf32`` (default on) or ``torch.backends.cuda.matmul.allow_tf32``).
    False without a GPU."""
    if not gpu_devices():
        return False
    b = name()
    if b == "jax":
        import jax

        prec = str(jax.config.jax_default_matmul_precision or "default").lower()
        return prec not in ("highest", "float32")
    if b == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.experimental.tensor_float_32_execution_enabled())
    import torch

    return bool(torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32)


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


# ----------------------------------------------------------------- JAX on a CPU: depthwise kernels


def _tap_slices(n: int, k: int, s: int, padding: str) -> tuple[int, int, int]:
    """Output size, pad before and pad after of one spatial axis (XLA's ``SAME``/``VALID`` rule)."""
    if padding == "valid":
        return (n - k) // s + 1, 0, 0
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return out, total // 2, total - total // 2


def shift_add_depthwise_conv(inputs, kernel, strides=1, padding="valid"):
    """2-D depthwise convolution as a sum of ``kh * kw`` shifted, strided slices times the
    kernel's taps (JAX, channels last, dilation 1), accumulated in float32.

    Args:
        inputs: ``(batch, h, w, c)``; kernel: ``(kh, kw, c, depth_multiplier)`` (Keras's layout).
        strides: int or (sh, sw); padding: ``"valid"`` or ``"same"`` (XLA/TensorFlow rule: the odd
            pixel of padding goes after).
    Returns:
        ``(batch, oh, ow, c * depth_multiplier)`` in the inputs' dtype, output channel
        ``ci * depth_multiplier + mi`` as in ``lax.conv_general_dilated`` with
        ``feature_group_count=c`` (what keras's JAX backend runs).

    Why: XLA:CPU runs grouped convolutions through a generic loop (measured on a 2-core
    AMD EPYC, jax 0.10.2: a 3x3 depthwise convolution over 32x32x32x96 took 544 ms, this
    form 8 ms; gradients 4-100x faster), which made MobileNet, EfficientNet, ConvNeXt and
    Xception up to 10x slower on JAX than on TensorFlow. Same math, other order of sums.
    """
    import jax.numpy as jnp
    from jax import lax

    kh, kw, c, m = (int(d) for d in kernel.shape)
    sh, sw = (strides, strides) if isinstance(strides, int) else tuple(strides)
    b, h, w = inputs.shape[0], int(inputs.shape[1]), int(inputs.shape[2])
    (oh, ph0, ph1), (ow, pw0, pw1) = _tap_slices(h, kh, sh, padding), _tap_slices(w, kw, sw, padding)
    x = jnp.pad(inputs.astype(jnp.float32), ((0, 0), (ph0, ph1), (pw0, pw1), (0, 0)))
    k = kernel.astype(jnp.float32)
    out = None
    for i in range(kh):
        for j in range(kw):
            tap = lax.slice(x, (0, i, j, 0), (x.shape[0], i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1, c),
                            (1, sh, sw, 1))
            term = tap * k[i, j, :, 0] if m == 1 else (tap[..., None] * k[i, j]).reshape(b, oh, ow, c * m)
            out = term if out is None else out + term
    return out.astype(inputs.dtype)


def _fast_depthwise(original):
    """keras's JAX ``depthwise_conv`` routed to :func:`shift_add_depthwise_conv` where it applies
    (2-D, channels last, dilation 1); every other call goes to ``original`` unchanged."""
    def depthwise_conv(inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
        fmt = data_format or keras.config.image_data_format()
        dil = dilation_rate if isinstance(dilation_rate, (tuple, list)) else (dilation_rate,)
        if fmt != "channels_last" or len(getattr(inputs, "shape", ())) != 4 or any(int(d) != 1 for d in dil) \
                or str(padding).lower() not in ("valid", "same"):
            return original(inputs, kernel, strides, padding, data_format, dilation_rate)
        from keras.src.backend.jax.core import convert_to_tensor

        return shift_add_depthwise_conv(convert_to_tensor(inputs), convert_to_tensor(kernel), strides,
                                        str(padding).lower())

    depthwise_conv.kbench_original = original
    return depthwise_conv


def use_fast_cpu_kernels() -> bool:
    """On JAX with a CPU only (:func:`kbench.xla.jax_cpu_only`, not opted out with
    ``KBENCH_XLA_CPU_FLAGS=off``), route keras's depthwise convolutions (``DepthwiseConv2D``,
    ``SeparableConv2D``, ``keras.ops.depthwise_conv``) to :func:`shift_add_depthwise_conv` for the
    whole process; recorded in ``kbench.xla.record()["kernels"]``. Returns whether it is on."""
    from kbench import xla

    if name() != "jax" or not xla.cpu_fixes_wanted():
        return False
    from keras.src.backend.jax import nn as jax_nn

    if not hasattr(jax_nn.depthwise_conv, "kbench_original"):
        jax_nn.depthwise_conv = _fast_depthwise(jax_nn.depthwise_conv)
        xla.note_kernel("depthwise_conv: shift-and-add (kbench.backend.shift_add_depthwise_conv)")
    return True


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


use_fast_cpu_kernels()

from kbench.backend import distributed as distributed  # noqa: E402 - data-parallel engines (needs the names above)
