"""kbench.host: CPU name and flags, memory, installed versions and the environment fingerprint."""

from __future__ import annotations

import importlib.metadata
import os
import platform

import numpy as np
import pytest

import kbench
from kbench import host

LINUX = os.path.isfile("/proc/cpuinfo")


@pytest.mark.skipif(not LINUX, reason="reads /proc/cpuinfo")
def test_cpu_name_is_the_model_name_line():
    with open("/proc/cpuinfo") as f:
        names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
    if not names:
        pytest.skip("this /proc/cpuinfo has no model name line")
    assert host.cpu_name() == names[0]


@pytest.mark.skipif(platform.machine() != "x86_64" or not LINUX, reason="x86-64 Linux flags")
def test_cpu_flags_of_an_x86_64_cpu():
    flags = host.cpu_flags()
    assert {"fpu", "sse", "sse2"} <= flags  # every x86-64 CPU has them
    assert all(f == f.strip() and f for f in flags)


@pytest.mark.skipif(not LINUX, reason="reads /proc/meminfo")
def test_memory_matches_the_physical_pages():
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    assert host.memory_gib() == pytest.approx(pages, rel=0.01)


def test_package_versions_first_installed_name_wins():
    got = host.package_versions({"np": ["no-such-dist-kbench", "numpy"], "missing": ["no-such-dist-kbench"]})
    assert got == {"np": np.__version__, "missing": None}
    assert list(host.package_versions()) == list(host.PACKAGES)
    assert host.package_versions()["numpy"] == importlib.metadata.version("numpy")


def test_is_installed():
    assert host.is_installed("numpy") is True
    assert host.is_installed("no_such_module_kbench") is False


def test_environment_fingerprint():
    env = host.environment()
    assert list(env) == ["cpu", "cores", "memory_gib", "gpus", "os", "python", "load_average", "kbench", "packages"]
    assert env["cpu"] == host.cpu_name() and env["cores"] == os.cpu_count()
    assert env["python"] == platform.python_version() and env["kbench"] == kbench.__version__
    assert env["os"] == platform.platform() and env["packages"]["numpy"] == np.__version__
    assert isinstance(env["gpus"], list)
