"""Model FLOPs per image and the machine's peak matmul throughput (for MFU).

Two numbers turn a measured images/s into a model FLOPs utilisation (MFU):

* :func:`model_flops_per_image`: the FLOPs one image costs in the end-to-end
  kbench model (backbone + ``gap`` head by default), counted analytically from
  the built Keras model's layers (see :func:`count_flops` for the method);
* :func:`machine_peak`: the peak FLOP/s of this machine for the compute dtype:
  on a GPU whose datasheet is in :mod:`kbench.gpu_peaks` the vendor's dense
  peak (``peak_source: "vendor"``), otherwise (CPUs, unknown GPUs) the rate the
  active backend reaches on a large matrix multiply (:func:`measure_peak_gflops`,
  ``peak_source: "measured"``). The probe runs once per machine/backend/dtype
  (also where the vendor peak is used: its result is kept as
  ``measured_gflops``) and is stored in ``peak.json`` under the kbench cache
  folder (``$KBENCH_CACHE_DIR``, default ``~/.cache/kbench``).

``MFU = achieved FLOP/s / peak FLOP/s`` with achieved FLOP/s = images/s x
FLOPs per image (the definition of the PaLM paper, Chowdhery et al. 2022,
appendix B, where "model FLOPs" are the FLOPs the model needs, not the ones the
hardware happened to execute). On a CPU the peak is a *measured* matmul peak on
the same backend, so MFU says how close a model gets to the best dense-matmul
speed this machine and library reach. On a known GPU it is the datasheet peak,
the same for every backend, so MFU is comparable across backends (a probe of a
few seconds stays well below a datacenter GPU's peak, see issue 14).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import statistics
import time

import keras
import numpy as np

from kbench import KbenchError

#: Bumped when the counting rules change, so stale disk-cache entries are ignored.
FLOPS_METHOD_VERSION = 1
#: Training step cost as a multiple of the forward pass (see :func:`model_flops_per_image`).
TRAIN_FLOPS_FACTOR = 3.0
#: Version of the ``peak.json`` entries (2: GPU probe at :data:`GPU_PROBE_N`, vendor peaks).
PEAK_FORMAT = 2
#: Matrix side of the peak probe on a CPU (``n x n`` times ``n x n``).
CPU_PROBE_N = 2048
#: Matrix side of the peak probe on a GPU: 2048 reached half the H200's bf16 peak, 8192 ~80 %.
GPU_PROBE_N = 8192


def cache_dir() -> str:
    """kbench's cache folder: ``$KBENCH_CACHE_DIR`` or ``~/.cache/kbench`` (not created here)."""
    return os.path.expanduser(os.environ.get("KBENCH_CACHE_DIR") or os.path.join("~", ".cache", "kbench"))


# --------------------------------------------------------------------------- FLOPs


def _shape(t) -> tuple[int, ...]:
    return tuple(int(d) for d in t.shape[1:])  # drop the batch axis


def _prod(xs) -> int:
    return int(math.prod(int(x) for x in xs))


def _layer_macs(layer) -> int:
    """Multiply-accumulates of one call of a (non-model) layer for one image (0 if not counted)."""
    L = keras.layers
    if not isinstance(layer, (L.Dense, L.Conv1D, L.Conv2D, L.Conv3D, L.DepthwiseConv1D,
                              L.DepthwiseConv2D, L.SeparableConv1D, L.SeparableConv2D, L.Conv1DTranspose,
                              L.Conv2DTranspose, L.Conv3DTranspose)):
        return 0
    inp, out = _shape(layer.input), _shape(layer.output)
    if isinstance(layer, L.Dense):
        # every output element is a dot product over the last input axis
        return _prod(out) * inp[-1]
    channels_last = getattr(layer, "data_format", "channels_last") == "channels_last"
    cin = inp[-1] if channels_last else inp[0]
    ksize = _prod(layer.kernel_size)
    if isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
        mid = cin * layer.depth_multiplier
        spatial = _prod(out[:-1] if channels_last else out[1:])
        cout = out[-1] if channels_last else out[0]
        return spatial * mid * ksize + spatial * mid * cout  # depthwise + pointwise
    if isinstance(layer, (L.DepthwiseConv1D, L.DepthwiseConv2D)):
        return _prod(out) * ksize  # each output channel sees one input channel
    if isinstance(layer, (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)):
        cout = out[-1] if channels_last else out[0]
        return _prod(inp) * ksize * cout  # every input element is scattered through the kernel
    groups = getattr(layer, "groups", 1) or 1
    return _prod(out) * ksize * cin // groups


def _walk(model) -> list:
    """Every leaf layer of ``model``, descending into nested models."""
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out.extend(_walk(layer))
        else:
            out.append(layer)
    return out


def count_flops(model: keras.Model) -> dict:
    """Forward-pass FLOPs per image of a built functional Keras model.

    Method: walk every layer (nested models included) and count the
    multiply-accumulates (MACs) of the layers that hold the weights' products,
    from each layer's input/output shape and kernel size:

    * ``Conv*D``: output elements x kernel area x input channels / groups;
    * ``DepthwiseConv*D``: output elements x kernel area;
    * ``SeparableConv*D``: depthwise part + pointwise (1x1) part;
    * ``Conv*DTranspose``: input elements x kernel area x output channels;
    * ``Dense`` (any rank): output elements x input features.

    FLOPs = 2 x MACs (one multiply + one add). Bias adds, activations,
    normalisation, pooling, element-wise adds and the preprocessing layer are not
    counted (the usual convention of the papers' "multiply-adds" figures, e.g. the
    VGG16 ~15.5 GMACs and MobileNetV2 300 M multiply-adds at 224x224; they are
    at most a few percent of the total for these networks).

    Returns:
        ``{"flops": float, "macs": int, "by_layer": {layer name: MACs}}`` for one image.

    Raises:
        KbenchError: a counted layer has no known input/output shape (the model
            is not a built functional model).
    """
    by_layer: dict[str, int] = {}
    for layer in _walk(model):
        try:
            macs = _layer_macs(layer)
        except (AttributeError, ValueError) as e:
            raise KbenchError(f"cannot count FLOPs of layer {layer.name!r} ({type(e).__name__}: {e}); "
                              "pass a built functional model") from None
        if macs:
            by_layer[layer.name] = by_layer.get(layer.name, 0) + macs
    macs = sum(by_layer.values())
    return {"flops": 2.0 * macs, "macs": macs, "by_layer": by_layer}


def _flops_disk_cache() -> str:
    return os.path.join(cache_dir(), "flops.json")


@functools.lru_cache(maxsize=None)
def _forward_flops(backbone: str, image_size: int, head: str, num_classes: int) -> float:
    key = f"v{FLOPS_METHOD_VERSION}|keras{keras.__version__}|{backbone}|{image_size}|{head}|{num_classes}"
    path = _flops_disk_cache()
    stored = _read_json(path)
    if key in stored:
        return float(stored[key])
    from kbench.models.transfer import build_model  # late: models imports keras.applications

    tm = build_model(backbone, "none", image_size, head, 0.0, "auto", num_classes)
    flops = count_flops(tm.keras_model)["flops"]
    del tm
    with contextlib.suppress(OSError):
        _update_json(path, {key: flops})
    return flops


def model_flops_per_image(backbone: str, image_size: int, training: bool, *, head: str = "gap",
                          num_classes: int = 10) -> float:
    """FLOPs (floating-point operations, not per second) one image costs in the kbench model.

    The model is ``kbench.models.build_model(backbone, weights="none", image_size,
    head)``: the registry backbone at ``image_size`` x ``image_size`` plus the
    ``gap`` head (global average pooling, dropout, Dense(``num_classes`` = 10))
    unless told otherwise. Weights are random ("none"): the count depends only on
    the architecture. Forward FLOPs are counted by :func:`count_flops`
    (2 x multiply-accumulates of conv / depthwise / separable / dense layers).

    ``training=True`` returns 3 x forward: the backward pass costs about twice the
    forward (one matmul for the activation gradients, one for the weight
    gradients), the convention of Kaplan et al. 2020, "Scaling Laws for Neural
    Language Models", sec. 2.1 (C = 6N per token = 3 x the 2N forward) and of the
    PaLM paper's MFU definition (Chowdhery et al. 2022, appendix B). It ignores
    that frozen layers skip their weight gradients (the bench trains everything).

    Results are cached in-process and in ``<cache_dir()>/flops.json`` (keyed by
    keras version and the counting method's version).

    Raises:
        KbenchError: unknown backbone or head, or ``image_size`` below the backbone's minimum.
    """
    forward = _forward_flops(str(backbone), int(image_size), str(head), int(num_classes))
    return forward * (TRAIN_FLOPS_FACTOR if training else 1.0)


# --------------------------------------------------------------------------- peak


def _sync(t) -> float:
    """Block until ``t`` is computed by fetching one element to the host (async backends/GPUs)."""
    return float(keras.ops.convert_to_numpy(keras.ops.cast(t[0, 0], "float32")))


def probe_n() -> int:
    """The default probe size: :data:`GPU_PROBE_N` when the active backend uses a GPU, else
    :data:`CPU_PROBE_N`."""
    from kbench import backend

    return GPU_PROBE_N if backend.gpu_devices() else CPU_PROBE_N


def measure_peak_gflops(dtype: str = "float32", n: int | None = None, repeats: int = 5,
                        min_time_s: float = 0.2, max_matmul_s: float = 1.0) -> dict:
    """Matrix-multiply throughput of the ACTIVE Keras backend, in GFLOP/s.

    Probe: two seeded ``(n, n)`` random matrices (``n`` default :func:`probe_n`: 8192 on
    a GPU, 2048 on a CPU) of ``dtype`` on the backend's
    default device, multiplied with ``keras.ops.matmul`` (the backend's BLAS / XLA
    / cuBLAS kernel). One warm-up multiply is excluded; it also sets how many
    multiplies each timed repeat chains (enough to last ``min_time_s``). Each
    repeat ends by fetching one element of the last product to the host, so
    asynchronous backends (JAX, GPUs) are timed to completion. A multiply counts
    ``2 n^3`` FLOPs. While one multiply takes over ``max_matmul_s`` (slow emulated
    dtypes such as bfloat16 on CPUs without native support) ``n`` is halved, down
    to 256, so the probe stays around ten seconds; the ``n`` used is returned.

    Returns:
        ``{"gflops": median GFLOP/s over repeats, "gflops_min", "gflops_max",
        "repeats": [GFLOP/s...], "n", "dtype", "backend", "inner"}``.

    Raises:
        KbenchError: ``dtype`` is not a float dtype the backend can multiply.
    """
    ops = keras.ops
    n = int(n or probe_n())
    try:
        while True:
            rng = np.random.default_rng(0)
            a = ops.convert_to_tensor(rng.standard_normal((n, n), dtype=np.float32), dtype=dtype)
            b = ops.convert_to_tensor(rng.standard_normal((n, n), dtype=np.float32), dtype=dtype)
            t0 = time.perf_counter()
            _sync(ops.matmul(a, b))  # warm-up: kernel selection, allocation, compilation
            warm = time.perf_counter() - t0
            t0 = time.perf_counter()
            _sync(ops.matmul(a, b))
            one = time.perf_counter() - t0
            if one <= max_matmul_s or n <= 256:
                break
            n //= 2
    except (TypeError, ValueError, RuntimeError) as e:
        raise KbenchError(f"cannot run the peak probe in dtype {dtype!r} on {keras.backend.backend()} "
                          f"({type(e).__name__}: {e})") from None
    inner = max(1, math.ceil(min_time_s / max(one, 1e-6)))
    rates = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        c = None
        for _ in range(inner):
            c = ops.matmul(a, b)
        _sync(c)
        dt = time.perf_counter() - t0
        rates.append(2.0 * n**3 * inner / dt / 1e9)
    return {"gflops": statistics.median(rates), "gflops_min": min(rates), "gflops_max": max(rates),
            "repeats": rates, "n": n, "inner": inner, "dtype": dtype, "backend": keras.backend.backend(),
            "warmup_s": warm}


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _update_json(path: str, entries: dict) -> None:
    """Merge ``entries`` into the JSON object at ``path`` under an exclusive file lock, atomically."""
    import fcntl

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = _read_json(path)
        data.update(entries)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
        os.replace(tmp, path)


def machine_key(dtype: str = "float32") -> str:
    """The ``peak.json`` key: ``"<cpu|gpu>:<device name>:<N> cores|<backend>|<dtype>"``."""
    from kbench import backend

    dev = backend.device()
    return f"{dev['type']}:{dev['name']}:{dev.get('cores')} cores|{backend.name()}|{dtype}"


def peak_source(entry: dict, dtype: str) -> dict:
    """``entry`` (a measured probe, :func:`measure_peak_gflops` fields) with the peak MFU uses.

    On a GPU (``entry["device"]["type"] == "gpu"``) whose chip and column are in
    :mod:`kbench.gpu_peaks` (float32 reads the ``tf32`` column when
    :func:`kbench.backend.float32_uses_tf32`, else ``fp32``): ``gflops`` = the vendor
    dense peak, ``peak_source "vendor"``, ``vendor`` = :func:`kbench.gpu_peaks.vendor_peak`.
    Otherwise ``gflops`` = the measured median, ``peak_source "measured"``, ``vendor None``.
    ``measured_gflops`` always holds the probe's median (GFLOP/s).
    """
    from kbench import backend, gpu_peaks

    measured = entry.get("measured_gflops", entry.get("gflops"))
    dev = entry.get("device") or {}
    vendor = None
    if dev.get("type") == "gpu":
        vendor = gpu_peaks.vendor_peak(dev.get("name"), dtype, tf32=backend.float32_uses_tf32())
    return {**entry, "measured_gflops": measured, "gflops": vendor["gflops"] if vendor else measured,
            "peak_source": "vendor" if vendor else "measured", "vendor": vendor}


def machine_peak(path: str | None = None, dtype: str = "float32", *, refresh: bool = False, n: int | None = None,
                 repeats: int = 5) -> dict:
    """This machine's peak for ``dtype`` on the active backend (for MFU), probed once and stored.

    Looks up :func:`machine_key` (device name and cores, backend, dtype) in the
    JSON file ``path`` (default ``<cache_dir()>/peak.json``); when absent, stored by
    an older :data:`PEAK_FORMAT`, or ``refresh``, runs :func:`measure_peak_gflops`
    (``n`` default :func:`probe_n`) and stores the result with the date, device and
    library versions. Then :func:`peak_source` picks the peak: the vendor dense
    peak on a GPU in :mod:`kbench.gpu_peaks`, else the measured one. Note that a
    probe run while other jobs share the CPU measures less than the machine's
    peak; delete the entry (or pass ``refresh=True``) to measure again.

    Returns:
        The stored entry: ``{"gflops" (GFLOP/s, the peak MFU uses), "peak_source"
        ("vendor"|"measured"), "measured_gflops" (probe median), "vendor" (None or
        {"gflops", "tflops", "chip", "column", "source"}), "gflops_min", "gflops_max"
        (of the probe), "n", "dtype", "backend", "device", "versions", "measured_at",
        "key", "cached": bool (True when read back rather than measured now), "path"}``.

    Raises:
        KbenchError: the probe cannot run in ``dtype`` (see :func:`measure_peak_gflops`).
    """
    from kbench import backend

    path = os.path.expanduser(path) if path else os.path.join(cache_dir(), "peak.json")
    key = machine_key(dtype)
    stored = _read_json(path).get(key)
    if stored and not refresh and stored.get("format") == PEAK_FORMAT:
        return {**peak_source(stored, dtype), "cached": True, "path": path}
    entry = {**measure_peak_gflops(dtype, n=n, repeats=repeats), "format": PEAK_FORMAT, "key": key,
             "device": backend.device(), "versions": backend.versions(),
             "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
             "method": "keras.ops.matmul of two (n, n) matrices, 2n^3 FLOPs each, warm-up excluded, "
                       "median of repeats (kbench.perf.measure_peak_gflops)"}
    entry = peak_source(entry, dtype)
    try:
        _update_json(path, {key: entry})
    except OSError as e:
        entry["store_error"] = str(e)
    return {**entry, "cached": False, "path": path}


def mfu(images_per_s: float | None, flops_per_image: float | None, peak_gflops: float | None) -> float | None:
    """Model FLOPs utilisation: ``images/s x FLOPs/image / (peak GFLOP/s x 1e9)`` (a fraction), or
    ``None`` if any input is missing or the peak is not positive."""
    if not images_per_s or not flops_per_image or not peak_gflops or peak_gflops <= 0:
        return None
    return images_per_s * flops_per_image / (peak_gflops * 1e9)


__all__ = ["model_flops_per_image", "count_flops", "measure_peak_gflops", "machine_peak", "machine_key", "mfu",
           "cache_dir", "peak_source", "probe_n", "TRAIN_FLOPS_FACTOR", "CPU_PROBE_N", "GPU_PROBE_N"]
