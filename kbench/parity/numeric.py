"""The comparison side of ``python -m kbench.parity``: error measure and tolerances (pure NumPy).

Error measure, for arrays ``a`` and ``b`` of two backends:
``max_abs = max |a - b|`` and ``rel = max |a - b| / max(max |a|, max |b|)`` (the
difference relative to the scale of the tensor; element-wise ratios are
meaningless for values near zero). Gradients are compared per variable and the
worst variable counts; step losses per step and the worst step counts. A pair
passes when every quantity's ``rel`` is within its tolerance (:data:`TOLERANCES`)
and everything is finite.

:func:`compare_arrays` measures one pair of arrays, :func:`compare_results` one
pair of backends for one model (every quantity of :data:`QUANTITIES`),
:func:`tolerances_for` picks the :data:`TOLERANCES` entry for a precision and the
devices, and :func:`describe_worst` names a pair's worst difference in one line.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QUANTITIES = ("logits", "loss", "head_grads", "step_losses")


@dataclass(frozen=True)
class Tolerances:
    """Largest allowed ``rel`` (see module docstring) per compared quantity."""

    logits: float
    loss: float
    head_grads: float
    step_losses: float
    why: str

    def of(self, quantity: str) -> float:
        """Tolerance for one of :data:`QUANTITIES`."""
        return float(getattr(self, quantity))


# Keyed by (precision, device type). "gpu" applies when either backend of a pair ran on a GPU.
TOLERANCES: dict[tuple[str, str], Tolerances] = {
    # The requirement: CPU float32, relative 1e-4 on the logits. The backends run
    # the same float32 math through different kernels (oneDNN, XLA:CPU, ATen) with
    # different summation orders, so only rounding differs (float32 eps 1.2e-7, grown
    # through ~20-150 layers). The loss is a smooth function of the logits: same bound.
    # Gradients are batch sums of products that partly cancel, so relative to their
    # largest element they carry ~10x the relative error of their inputs: 1e-3. Step
    # losses: each SGD step feeds the previous steps' (rounding-different) updates back
    # in, so differences compound; 1e-3 for the first few steps.
    ("float32", "cpu"): Tolerances(1e-4, 1e-4, 1e-3, 1e-3,
                                   "CPU float32: 1e-4 on logits and loss (issue requirement); 1e-3 on head "
                                   "gradients (cancelling batch sums) and on training-step losses (compounding)"),
    # GPUs: TensorFlow and PyTorch may run float32 convolutions/matmuls as TF32 (10-bit
    # mantissa, relative rounding 2^-11 ~ 5e-4) and cuDNN picks different algorithms;
    # 10x the CPU bounds.
    ("float32", "gpu"): Tolerances(1e-3, 1e-3, 1e-2, 1e-2,
                                   "GPU float32: 10x the CPU bounds, for TF32 matmuls/convolutions "
                                   "(relative rounding ~5e-4) and cuDNN algorithm choice"),
    # mixed_bfloat16: activations rounded to 8 significant bits (relative 2^-9 ~ 2e-3)
    # at every layer; through a deep network that reaches a few percent. Variables,
    # the last Dense and the loss stay float32.
    ("mixed_bfloat16", "cpu"): Tolerances(5e-2, 5e-2, 1e-1, 5e-2,
                                          "mixed_bfloat16: bfloat16 activations (relative rounding ~2e-3 per "
                                          "layer, accumulated over the network)"),
    ("mixed_bfloat16", "gpu"): Tolerances(5e-2, 5e-2, 1e-1, 5e-2,
                                          "mixed_bfloat16 on GPU: as on CPU (bfloat16 rounding dominates TF32)"),
}



def compare_arrays(a, b) -> dict:
    """Difference of two arrays of the same shape (any float dtype; compared in float64).

    Returns:
        ``{"max_abs": max|a-b|, "rel": max|a-b| / max(max|a|, max|b|), "finite": bool}``;
        ``rel`` is 0 for two all-zero arrays and ``inf`` when either holds NaN/inf.

    Raises:
        ValueError: the shapes differ.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    finite = bool(np.isfinite(a).all() and np.isfinite(b).all())
    if not finite:
        return {"max_abs": float("inf"), "rel": float("inf"), "finite": False}
    if a.size == 0:
        return {"max_abs": 0.0, "rel": 0.0, "finite": True}
    max_abs = float(np.abs(a - b).max())
    scale = float(max(np.abs(a).max(), np.abs(b).max()))
    rel = 0.0 if max_abs == 0.0 else (max_abs / scale if scale > 0 else float("inf"))
    return {"max_abs": max_abs, "rel": rel, "finite": True}


def _worst(parts: dict[str, dict]) -> tuple[str, dict]:
    """The entry with the largest ``rel`` (ties: first)."""
    name = max(parts, key=lambda k: parts[k]["rel"])
    return name, parts[name]


def compare_results(a: dict[str, np.ndarray], b: dict[str, np.ndarray], tol: Tolerances) -> dict:
    """Compare two backends' outputs for one model.

    Args:
        a, b: arrays by key: ``"logits"`` ``(batch, classes)``, ``"loss"`` ``()``,
            ``"step_losses"`` ``(steps,)`` and one ``"grad/<variable path>"`` per head
            variable (the variable's shape); float32 or float64.
        tol: the tolerances to apply.

    Returns:
        ``{"verdict": "pass"|"fail", "worst": {"quantity", "rel", "max_abs", "tol",
        "where"}, "quantities": {quantity: {"rel", "max_abs", "tol", "ok", "where"}}}``.
        ``where`` names the worst gradient variable / step (``""`` otherwise). The
        worst quantity is the one with the largest ``rel / tol``; any failing one
        fails the pair.

    Raises:
        ValueError: the two sides hold different gradient variables or shapes.
    """
    grads_a = sorted(k for k in a if k.startswith("grad/"))
    grads_b = sorted(k for k in b if k.startswith("grad/"))
    if grads_a != grads_b:
        raise ValueError(f"head variables differ: {grads_a} vs {grads_b}")
    quantities: dict[str, dict] = {}
    for q in ("logits", "loss"):
        quantities[q] = {**compare_arrays(a[q], b[q]), "where": ""}
    per_var = {k.removeprefix("grad/"): compare_arrays(a[k], b[k]) for k in grads_a}
    name, worst = _worst(per_var) if per_var else ("", {"max_abs": 0.0, "rel": 0.0, "finite": True})
    quantities["head_grads"] = {**worst, "where": name}
    sa, sb = np.atleast_1d(a["step_losses"]), np.atleast_1d(b["step_losses"])
    if sa.shape != sb.shape:
        raise ValueError(f"step losses differ in length: {sa.shape} vs {sb.shape}")
    per_step = {f"step {i + 1}": compare_arrays(sa[i], sb[i]) for i in range(sa.size)}
    name, worst = _worst(per_step) if per_step else ("", {"max_abs": 0.0, "rel": 0.0, "finite": True})
    quantities["step_losses"] = {**worst, "where": name}
    for q, d in quantities.items():
        d["tol"] = tol.of(q)
        d["ok"] = bool(d.pop("finite") and d["rel"] <= d["tol"])
    worst_q = max(QUANTITIES, key=lambda q: quantities[q]["rel"] / quantities[q]["tol"])
    w = quantities[worst_q]
    return {
        "verdict": "pass" if all(d["ok"] for d in quantities.values()) else "fail",
        "worst": {"quantity": worst_q, "rel": w["rel"], "max_abs": w["max_abs"], "tol": w["tol"], "where": w["where"]},
        "quantities": quantities,
    }


def tolerances_for(precision: str, devices: list[str]) -> Tolerances:
    """:data:`TOLERANCES` entry for ``precision`` and the device types (``"cpu"``/``"gpu"``)
    of the backends being compared (GPU when any of them ran on a GPU)."""
    return TOLERANCES[(precision, "gpu" if "gpu" in devices else "cpu")]


def describe_worst(pair: dict) -> str:
    """One line naming the worst difference of a compared pair, e.g.
    ``"logits rel 2.0e-04 > tol 1.0e-04 (max abs 3.1e-03)"``; or the error of a failed run."""
    if pair.get("error"):
        return pair["error"]
    w = pair["worst"]
    op = "<=" if w["rel"] <= w["tol"] else ">"
    where = f" [{w['where']}]" if w.get("where") else ""
    return f"{w['quantity']}{where} rel {w['rel']:.1e} {op} tol {w['tol']:.0e} (max abs {w['max_abs']:.1e})"
