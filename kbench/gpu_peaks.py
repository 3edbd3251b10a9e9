"""Vendor dense peak throughputs of NVIDIA GPUs, for a truthful MFU on GPU.

A matmul probe of a few seconds (``kbench.perf.measure_peak_gflops``) does not
reach a datacenter GPU's peak (issue 14: on an H200 kbench's 2048^2 probe gave
388 TFLOP/s on torch and 191 on JAX in bf16, while 8192^3 products reach about
790 and the datasheet says 989), so on a GPU whose datasheet is known the MFU
denominator is the vendor's figure instead (``kbench.perf.machine_peak``
records ``peak_source: "vendor"``; elsewhere ``"measured"``).

:data:`VENDOR_PEAKS_TFLOPS` holds dense Tensor Core / CUDA core peaks in
TFLOP/s, i.e. **without structured sparsity**: the datasheets print the
with-sparsity figure for the Tensor Core rows (marked ``*``), the dense figure
is half of it. Sources (NVIDIA product datasheets, SXM = the boost-clock SXM
module, the figures kbench uses):

* H100 SXM, H100 PCIe, H100 NVL: "NVIDIA H100 Tensor Core GPU" datasheet
  (BF16/FP16 1,979* / 1,513* / 1,671*, TF32 989* / 756* / 835*, FP32 67 / 51 / 60 TFLOPS);
* H200 SXM, H200 NVL: "NVIDIA H200 Tensor Core GPU" datasheet (same compute as
  H100 SXM / H100 NVL);
* A100 (SXM and PCIe, 40 and 80 GB): "NVIDIA A100 Tensor Core GPU" datasheet
  (BF16/FP16 312, TF32 156, FP32 19.5 TFLOPS, dense);
* L40S: "NVIDIA L40S GPU" datasheet (BF16/FP16 733*, TF32 366*, FP32 91.6 TFLOPS);
* L4: "NVIDIA L4 Tensor Core GPU" datasheet (BF16/FP16 242*, TF32 120*, FP32 30.3 TFLOPS).

Columns: ``bf16``, ``fp16``, ``tf32`` (float32 inputs on Tensor Cores with a
10-bit mantissa) and ``fp32`` (CUDA cores). Which one a float32 run uses
depends on whether the backend lets float32 matmuls/convolutions use TF32
(``kbench.backend.float32_uses_tf32``).

This module imports nothing but the standard library (usable by tool parents
such as ``scripts/gpu_check.py``).
"""

from __future__ import annotations

import re

#: chip -> {column: dense TFLOP/s}, see the module docstring for the datasheets.
VENDOR_PEAKS_TFLOPS: dict[str, dict[str, float]] = {
    "H200 SXM": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H200 NVL": {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0},
    "H100 SXM": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100 PCIe": {"bf16": 756.5, "fp16": 756.5, "tf32": 378.0, "fp32": 51.2},
    "H100 NVL": {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L40S": {"bf16": 366.0, "fp16": 366.0, "tf32": 183.0, "fp32": 91.6},
    "L4": {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3},
}

#: Datasheet of each chip (named in the stored peak entries).
VENDOR_SOURCES: dict[str, str] = {
    "H200 SXM": "NVIDIA H200 Tensor Core GPU datasheet (H200 SXM, dense = half the with-sparsity figure)",
    "H200 NVL": "NVIDIA H200 Tensor Core GPU datasheet (H200 NVL, dense = half the with-sparsity figure)",
    "H100 SXM": "NVIDIA H100 Tensor Core GPU datasheet (H100 SXM, dense = half the with-sparsity figure)",
    "H100 PCIe": "NVIDIA H100 Tensor Core GPU datasheet (H100 PCIe, dense = half the with-sparsity figure)",
    "H100 NVL": "NVIDIA H100 Tensor Core GPU datasheet (H100 NVL, dense = half the with-sparsity figure)",
    "A100": "NVIDIA A100 Tensor Core GPU datasheet (dense figures)",
    "L40S": "NVIDIA L40S GPU datasheet (dense = half the with-sparsity figure)",
    "L4": "NVIDIA L4 Tensor Core GPU datasheet (dense = half the with-sparsity figure)",
}

# Device name (as torch / JAX device_kind / nvidia-smi print it) -> chip, first match wins.
# Word boundaries keep "L4" from matching "L40S" and "H200" from matching "GH200".
_NAME_RULES: tuple[tuple[str, str], ...] = (
    (r"\bH200\b.*\bNVL\b", "H200 NVL"),
    (r"\bH200\b", "H200 SXM"),
    (r"\bH100\b.*\bPCIE\b", "H100 PCIe"),
    (r"\bH100\b.*\bNVL\b", "H100 NVL"),
    (r"\bH100\b.*(\bSXM|\bHBM3\b)", "H100 SXM"),
    (r"\bA100\b", "A100"),
    (r"\bL40S\b", "L40S"),
    (r"\bL4\b", "L4"),
)

#: Compute dtype -> table column (float32 is ``tf32`` or ``fp32``, see :func:`column_for`).
_DTYPE_COLUMNS = {"bfloat16": "bf16", "float16": "fp16"}


def chip_of(device_name: str | None) -> str | None:
    """The :data:`VENDOR_PEAKS_TFLOPS` chip of a GPU name, or ``None`` when unknown.

    Examples: ``"NVIDIA H100 80GB HBM3"`` -> ``"H100 SXM"``, ``"NVIDIA H100 PCIe"`` ->
    ``"H100 PCIe"``, ``"NVIDIA A100-SXM4-80GB"`` -> ``"A100"``, ``"NVIDIA L4"`` -> ``"L4"``,
    ``"NVIDIA L40S"`` -> ``"L40S"``, ``"NVIDIA L40"`` / ``"NVIDIA GH200 480GB"`` / a bare
    ``"NVIDIA H100"`` -> ``None`` (not in the table, or the form factor is unknown).
    Matching is case-insensitive; with several GPUs (``"A, B"``) the first one counts.
    """
    if not device_name:
        return None
    name = str(device_name).split(",")[0].upper()
    for pattern, chip in _NAME_RULES:
        if re.search(pattern, name):
            return chip
    return None


def column_for(dtype: str, tf32: bool) -> str | None:
    """Table column of a compute dtype: ``bfloat16`` -> ``bf16``, ``float16`` -> ``fp16``,
    ``float32`` -> ``tf32`` when the backend lets float32 use TF32 (``tf32=True``) else
    ``fp32``; ``None`` for anything else (e.g. ``float64``)."""
    if dtype == "float32":
        return "tf32" if tf32 else "fp32"
    return _DTYPE_COLUMNS.get(dtype)


def vendor_peak(device_name: str | None, dtype: str, tf32: bool = True) -> dict | None:
    """The vendor dense peak of a GPU for a compute dtype, or ``None`` when the chip or
    dtype is not in :data:`VENDOR_PEAKS_TFLOPS`.

    Returns:
        ``{"gflops": GFLOP/s, "tflops": TFLOP/s, "chip", "column" ("bf16"|"fp16"|"tf32"|"fp32"),
        "source": datasheet}``.
    """
    chip, col = chip_of(device_name), column_for(dtype, tf32)
    if chip is None or col is None:
        return None
    tflops = VENDOR_PEAKS_TFLOPS[chip][col]
    return {"gflops": tflops * 1e3, "tflops": tflops, "chip": chip, "column": col, "source": VENDOR_SOURCES[chip]}


__all__ = ["VENDOR_PEAKS_TFLOPS", "VENDOR_SOURCES", "chip_of", "column_for", "vendor_peak"]
