"""kbench.xla: the XLA flags kbench sets for JAX on a CPU (rules, and that they reach XLA)."""

import json
import os
import subprocess
import sys
from importlib.util import find_spec

import numpy as np
import pytest

from kbench import xla

FLAG = "--xla_disable_hlo_passes=algsimp"


@pytest.fixture
def clean_env(monkeypatch):
    for k in ("XLA_FLAGS", "JAX_PLATFORMS", xla.OPT_OUT_ENV):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    monkeypatch.setattr(xla, "_applied", [])
    monkeypatch.setattr(xla, "_kernels", [])
    monkeypatch.setattr(xla, "jax_cpu_only", lambda: True)
    return monkeypatch


def test_cpu_flags_are_the_algsimp_switch():
    assert xla.CPU_FLAGS == (FLAG,)


def test_added_for_jax_on_cpu_and_recorded(clean_env):
    clean_env.setenv(xla.OPT_OUT_ENV, "algsimp")
    clean_env.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    assert xla.apply_cpu_flags() == [FLAG]
    assert os.environ["XLA_FLAGS"] == f"--xla_cpu_enable_fast_math=false {FLAG}"
    assert xla.record() == {"XLA_FLAGS": f"--xla_cpu_enable_fast_math=false {FLAG}", "set_by_kbench": [FLAG],
                            "kernels": [], "setting": "algsimp"}
    assert xla.apply_cpu_flags() == []  # idempotent: the user's/earlier entry wins
    assert os.environ["XLA_FLAGS"].count(FLAG) == 1


@pytest.mark.parametrize("setting", ["default", "torch", "tensorflow", "off", "user_passes", "gpu"])
def test_not_added(clean_env, setting):
    """The XLA flag is opt-in (``algsimp``); with it asked for, still never off JAX, with the user's own
    ``--xla_disable_hlo_passes``, or where JAX may use an accelerator."""
    if setting != "default":
        clean_env.setenv(xla.OPT_OUT_ENV, "algsimp")
    if setting in ("torch", "tensorflow"):
        clean_env.setenv("KERAS_BACKEND", setting)
    elif setting == "off":
        clean_env.setenv(xla.OPT_OUT_ENV, "OFF")
    elif setting == "user_passes":
        clean_env.setenv("XLA_FLAGS", "--xla_disable_hlo_passes=dce")
    else:
        clean_env.setattr(xla, "jax_cpu_only", lambda: False)
    before = os.environ.get("XLA_FLAGS")
    assert xla.apply_cpu_flags() == []
    assert os.environ.get("XLA_FLAGS") == before
    assert xla.record()["set_by_kbench"] == []


@pytest.mark.parametrize("value,ok", [(None, True), ("off", True), ("OFF", True), (" auto ", True), ("algsimp", True),
                                      ("false", False), ("0", False), ("banana", False)])
def test_setting_values_are_checked(clean_env, value, ok):
    """Only off/auto are settings: a typo such as ``false`` is refused by check_backend_env (one line,
    exit 2 in the tools), never silently read as "on"."""
    import kbench

    if value is not None:
        clean_env.setenv(xla.OPT_OUT_ENV, value)
    msg = xla.check_env()
    assert (msg is None) is ok
    if not ok:
        assert msg == (f"KBENCH_XLA_CPU_FLAGS={value!r} is not a setting: use auto (the default: kbench's depthwise "
                       "kernel for JAX on a CPU), algsimp (also XLA's algsimp pass off) or off (neither); docs/bench.md")
        assert kbench.check_backend_env() == msg and xla.apply_cpu_flags() == []


@pytest.mark.parametrize("platforms,expected", [("cpu", True), ("CPU", True), ("cuda", False), ("cuda,cpu", False)])
def test_jax_platforms_decides(monkeypatch, platforms, expected):
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    assert xla.jax_cpu_only() is expected


def test_accelerator_plugin_means_not_cpu_only(monkeypatch):
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.setattr(xla, "find_spec", lambda name: object() if name == "jax_cuda12_plugin" else None)
    assert xla.jax_cpu_only() is False
    monkeypatch.setattr(xla, "find_spec", lambda name: None)
    assert xla.jax_cpu_only() is True


PROBE = """
import json, os, kbench, jax, jax.numpy as jnp, numpy as np
from jax import lax
x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 2, 2, 8)), jnp.float32)
w = jnp.asarray(np.random.default_rng(1).standard_normal((3, 3, 8, 8)), jnp.float32)
f = jax.jit(lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
hlo = f.lower(x, w).compile().as_text()
import keras
import kbench.backend
keras.utils.set_random_seed(0)
L = keras.layers
m = keras.Sequential([keras.Input((9, 9, 3)), L.Conv2D(8, 3), L.DepthwiseConv2D(3, strides=2, padding="same"),
                      L.DepthwiseConv2D(5, depth_multiplier=2, padding="same"), L.SeparableConv2D(4, 3), L.Flatten()])
z = np.random.default_rng(2).uniform(0, 1, (2, 9, 9, 3)).astype("float32")
print(json.dumps({"swapped": "rhs_reversal" in hlo, "y": np.asarray(f(x, w)).ravel().tolist(),
                  "net": np.asarray(m.predict_on_batch(z)).ravel().tolist(), "record": kbench.xla.record()}))
"""


@pytest.mark.skipif(find_spec("jax") is None or xla.jax_cpu_only() is False, reason="needs jax on a CPU")
def test_flag_reaches_xla_and_keeps_the_numbers():
    """In a fresh JAX process, kbench's flag stops XLA:CPU from swapping the operands of a
    3x3 convolution over a 2x2 input (the slow path); the output is the same to round-off."""
    def run(extra: dict) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla.OPT_OUT_ENV)}
        env.update({"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", **extra})
        out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    fixed, default = run({xla.OPT_OUT_ENV: "algsimp"}), run({xla.OPT_OUT_ENV: "off"})
    kernel = ["depthwise_conv: shift-and-add (kbench.backend.shift_add_depthwise_conv)"]
    assert fixed["record"] == {"XLA_FLAGS": FLAG, "set_by_kbench": [FLAG], "kernels": kernel, "setting": "algsimp"}
    assert default["record"] == {"XLA_FLAGS": None, "set_by_kbench": [], "kernels": [], "setting": "off"}
    assert fixed["swapped"] is False and default["swapped"] is True
    import numpy as np

    np.testing.assert_allclose(fixed["y"], default["y"], rtol=1e-5, atol=1e-5)
    # keras DepthwiseConv2D (strided, depth multiplier 2) and SeparableConv2D, same seeded weights
    scale = float(np.abs(default["net"]).max())
    assert len(fixed["net"]) == 2 * 2 * 2 * 4 and scale > 1e-3
    np.testing.assert_allclose(fixed["net"], default["net"], rtol=1e-3, atol=1e-4 * scale)


CASES = [((7, 7), 3, 1, "same", 1), ((7, 7), 3, 2, "same", 1), ((8, 6), 5, 2, "valid", 1),
         ((8, 6), 3, (2, 1), "same", 2), ((2, 2), 3, 1, "same", 1), ((1, 1), 7, 2, "same", 1),
         ((7, 7), 1, 2, "valid", 2), ((6, 6), 3, 2, "same", 1)]


@pytest.mark.skipif(find_spec("jax") is None, reason="needs jax")
@pytest.mark.parametrize("hw,k,strides,padding,mult", CASES)
def test_shift_add_depthwise_matches_xla(hw, k, strides, padding, mult):
    """kbench's depthwise kernel equals lax's grouped convolution (what keras runs) in value and
    gradient: odd and even sizes, strides 1/2/(2, 1), same/valid, depth multiplier 1 and 2."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    from kbench.backend import shift_add_depthwise_conv

    c = 3
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, *hw, c)), jnp.float32)
    w = jnp.asarray(np.random.default_rng(1).standard_normal((k, k, c, mult)), jnp.float32)
    s = (strides, strides) if isinstance(strides, int) else strides

    def ref(x, w):
        return lax.conv_general_dilated(x, w.reshape(k, k, 1, c * mult), s, padding.upper(),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)

    np.testing.assert_allclose(shift_add_depthwise_conv(x, w, strides, padding), ref(x, w), rtol=1e-5, atol=1e-5)
    ga = jax.grad(lambda x, w: (ref(x, w) ** 2).sum(), argnums=(0, 1))(x, w)
    gb = jax.grad(lambda x, w: (shift_add_depthwise_conv(x, w, strides, padding) ** 2).sum(), argnums=(0, 1))(x, w)
    for a, b in zip(ga, gb):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * float(jnp.abs(a).max()))
