"""XLA compiler flags kbench sets for JAX on a CPU, before jax is first imported.

Why: XLA's algebraic simplifier (the HLO pass ``algsimp``) swaps the operands of
a convolution whose kernel window is larger than its input (``SwapConvOperands``
in XLA's ``algebraic_simplifier.cc``: e.g. a 3x3 kernel over a 2x2 feature map, as
in VGG16's block 5 at 32 px or ResNet50's last stage at 64 px). On XLA:CPU the
swapped convolution (kernel as the input, ``rhs_reversal``, unusual dimension
labels) misses the fast Eigen path and runs a generic loop: measured on a 2-core
AMD EPYC with jax 0.10.2, one 3x3 512->512 convolution over a 32x2x2x512 batch
takes 266 ms with the pass and 4.3 ms without (60x), and keras VGG16 at 32 px
trains 4.4x faster and ResNet50 at 64 px 2.8x faster without it (outputs equal to
within float32 round-off; docs/bench.md has every registry backbone). XLA has no
flag for the swap alone; disabling the whole ``algsimp`` pass is **opt-in**
(``KBENCH_XLA_CPU_FLAGS=algsimp``): one CI run of the JAX test suite with the pass
disabled by default crashed once (a segmentation fault in XLA:CPU's compute threads
during a VGG16 32 px ``predict``, 2026-12-05; the same test passed when rerun), so
until that is understood kbench does not disable an XLA pass for you. It applies only
to ``KERAS_BACKEND=jax`` on a machine where JAX has no GPU/TPU plugin installed (or
``JAX_PLATFORMS=cpu``); on GPUs nothing is set.

By default (``auto``) the same condition routes keras's depthwise convolutions to a shift-and-add kernel
(:func:`kbench.backend.use_fast_cpu_kernels`): XLA:CPU runs grouped convolutions through a
generic loop (40-150x slower than the sum of shifted slices).

``KBENCH_XLA_CPU_FLAGS``: ``auto`` (default: the depthwise kernel), ``algsimp`` (also the
XLA flag), ``off`` (neither); kbench also leaves ``XLA_FLAGS`` alone
when it already has an ``--xla_disable_hlo_passes`` entry (yours wins). What was
set is recorded in results.json (``xla_flags``) and in the bench's environment.
This module imports neither keras nor jax.
"""

from __future__ import annotations

import os
from importlib.util import find_spec

#: The flags kbench adds to ``XLA_FLAGS`` for JAX on a CPU.
CPU_FLAGS = ("--xla_disable_hlo_passes=algsimp",)
#: Environment variable: ``auto`` (default) the depthwise kernel, ``algsimp`` also the XLA flag, ``off`` neither.
OPT_OUT_ENV = "KBENCH_XLA_CPU_FLAGS"
#: Its accepted values (case-insensitive; unset = ``auto``).
OPT_OUT_VALUES = ("auto", "algsimp", "off")
#: Modules whose presence means JAX may run on an accelerator (looked up, never imported).
ACCELERATOR_PLUGINS = ("jax_plugins", "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                       "jax_rocm7_plugin", "libtpu")

_applied: list[str] = []
_kernels: list[str] = []


def jax_cpu_only() -> bool:
    """True when JAX in this process can only run on the CPU: ``JAX_PLATFORMS`` is
    ``cpu``, or no JAX accelerator plugin (:data:`ACCELERATOR_PLUGINS`) is installed."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms == "cpu"
    for module in ACCELERATOR_PLUGINS:
        try:
            if find_spec(module) is not None:
                return False
        except (ImportError, ValueError):
            continue
    return True


def check_env() -> str | None:
    """The problem with ``KBENCH_XLA_CPU_FLAGS``, if any, as one message (None when unset or
    one of :data:`OPT_OUT_VALUES`); ``kbench.check_backend_env`` reports it."""
    value = os.environ.get(OPT_OUT_ENV)
    if value is None or value.strip().lower() in OPT_OUT_VALUES:
        return None
    return (f"{OPT_OUT_ENV}={value!r} is not a setting: use auto (the default: kbench's depthwise kernel for JAX "
            f"on a CPU), algsimp (also XLA's algsimp pass off) or off (neither); docs/bench.md")


def cpu_fixes_wanted() -> bool:
    """True when kbench's JAX-on-CPU fixes apply: ``KERAS_BACKEND=jax``, JAX CPU-only
    (:func:`jax_cpu_only`) and ``KBENCH_XLA_CPU_FLAGS`` is not ``off``."""
    return (os.environ.get("KERAS_BACKEND") == "jax" and os.environ.get(OPT_OUT_ENV, "auto").strip().lower() != "off"
            and check_env() is None and jax_cpu_only())


def note_kernel(what: str) -> None:
    """Record a kernel replacement kbench made in this process (see :func:`record`)."""
    if what not in _kernels:
        _kernels.append(what)


def apply_cpu_flags() -> list[str]:
    """Add :data:`CPU_FLAGS` to ``XLA_FLAGS`` when ``KERAS_BACKEND=jax``, JAX is CPU-only
    (:func:`jax_cpu_only`), ``KBENCH_XLA_CPU_FLAGS=algsimp`` (opt-in) and ``XLA_FLAGS`` has no
    ``--xla_disable_hlo_passes`` of its own. Must run before jax creates its CPU client
    (``kbench/__init__`` calls it). Returns the flags added (empty list: none)."""
    current = os.environ.get("XLA_FLAGS", "")
    if "--xla_disable_hlo_passes" in current or not cpu_fixes_wanted() \
            or os.environ.get(OPT_OUT_ENV, "").strip().lower() != "algsimp":
        return []
    added = [f for f in CPU_FLAGS if f not in current.split()]
    if added:
        os.environ["XLA_FLAGS"] = " ".join([*current.split(), *added])
        _applied.extend(added)
    return added


def record() -> dict:
    """What results.json stores as ``xla_flags``: ``{"XLA_FLAGS": the variable's value
    (None when unset), "set_by_kbench": the flags kbench added in this process, "kernels": the
    keras kernels kbench replaced (:func:`kbench.backend.use_fast_cpu_kernels`), "setting": the
    value of ``KBENCH_XLA_CPU_FLAGS`` (None when unset)}``."""
    return {"XLA_FLAGS": os.environ.get("XLA_FLAGS"), "set_by_kbench": list(_applied), "kernels": list(_kernels),
            "setting": os.environ.get(OPT_OUT_ENV)}


__all__ = ["ACCELERATOR_PLUGINS", "CPU_FLAGS", "OPT_OUT_ENV", "OPT_OUT_VALUES", "apply_cpu_flags", "check_env", "cpu_fixes_wanted", "jax_cpu_only",
           "note_kernel", "record"]
