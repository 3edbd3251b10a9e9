"""Host facts without keras or a backend: CPU name and flags, memory, GPUs, installed versions.

Everything here reads the operating system (``/proc``, ``nvidia-smi``) or package
metadata (``importlib.metadata``) and imports nothing heavy, so the parent
processes of the tools (``kbench.bench``, ``kbench.compare``, ``kbench.parity``) can
describe the machine in a venv that holds any single backend.
:func:`environment` is the one machine fingerprint; each tool stores the part of
it that its output format holds. Facts about the device a backend computes on
(GPU capability, device memory) need the backend: :mod:`kbench.backend`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import subprocess

#: Distributions whose versions :func:`package_versions` reports, as
#: ``key -> distribution names`` (the first one installed wins).
PACKAGES = {
    "keras": ["keras"],
    "jax": ["jax"],
    "jaxlib": ["jaxlib"],
    "tensorflow": ["tensorflow", "tensorflow-cpu"],
    "torch": ["torch"],
    "numpy": ["numpy"],
    "opencv": ["opencv-python-headless", "opencv-python", "opencv-contrib-python-headless",
               "opencv-contrib-python"],
    "matplotlib": ["matplotlib"],
    "kbench": ["kbench"],
}


def _cpuinfo_field(field: str) -> str | None:
    """The value of the first ``field`` line of ``/proc/cpuinfo`` (``None`` where unreadable)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (falls back to ``platform.processor()``,
    then ``platform.machine()``)."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """CPU feature flags from ``/proc/cpuinfo``, e.g. ``{"avx2", "avx512_bf16"}``
    (empty set where unavailable)."""
    return set((_cpuinfo_field("flags") or "").split())


def memory_gib() -> float | None:
    """Total memory of the machine in GiB (``/proc/meminfo`` MemTotal), ``None`` where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except (OSError, ValueError):
        pass
    return None


def nvidia_gpus() -> list[str]:
    """``"<name>, <memory>"`` per NVIDIA GPU as ``nvidia-smi`` lists it (empty list
    without ``nvidia-smi`` or a GPU; at most 20 s)."""
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in r.stdout.splitlines() if line.strip()] if r.returncode == 0 else []


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, ``None`` where the OS has none."""
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def package_versions(packages: dict[str, list[str]] | None = None) -> dict[str, str | None]:
    """Installed versions (``importlib.metadata``: nothing is imported) of
    ``packages`` (default :data:`PACKAGES`), by key; ``None`` where not installed."""
    out: dict[str, str | None] = {}
    for key, dists in (PACKAGES if packages is None else packages).items():
        out[key] = None
        for d in dists:
            try:
                out[key] = importlib.metadata.version(d)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return out


def is_installed(module: str) -> bool:
    """True when ``module`` can be imported here (found on the path; not imported).

    A finder that refuses the module (raises ``ImportError``) counts as not installed.
    """
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def environment() -> dict:
    """The machine fingerprint of this process, without importing a backend.

    Returns:
        ``cpu`` (model name), ``cores`` (logical), ``memory_gib`` (GiB or ``None``),
        ``gpus`` (:func:`nvidia_gpus`), ``os`` (``platform.platform()``), ``python``
        (version), ``load_average`` (:func:`load_average`), ``kbench`` (the imported
        package's version) and ``packages`` (:func:`package_versions`).
    """
    from kbench import __version__

    return {"cpu": cpu_name(), "cores": os.cpu_count(), "memory_gib": memory_gib(), "gpus": nvidia_gpus(),
            "os": platform.platform(), "python": platform.python_version(), "load_average": load_average(),
            "kbench": __version__, "packages": package_versions()}
