"""Learning-rate schedules, layer-wise multipliers and the layer-wise optimizer (issue 12, items 1, 3, 7)."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from kbench import KbenchError
from kbench.recipes import Phase
from kbench.recipes.layerwise import block_depths, layer_multipliers, variable_multiplier
from kbench.recipes.optimizers import make_optimizer
from kbench.recipes.policy import block_prefix, schedule_updates
from kbench.recipes.schedules import PhaseSchedule, phase_learning_rate


def _lrs(schedule, steps):
    return np.array([float(keras.ops.convert_to_numpy(schedule(s))) for s in steps])


def test_cosine_is_keras_cosine_decay_after_a_linear_warm_up():
    s = PhaseSchedule("cosine", 0.1, updates=20, warmup=5, final_fraction=0.1)
    np.testing.assert_allclose(_lrs(s, range(5)), [0.0, 0.02, 0.04, 0.06, 0.08], rtol=1e-6, atol=1e-9)
    ref = keras.optimizers.schedules.CosineDecay(0.1, 15, alpha=0.1)
    np.testing.assert_allclose(_lrs(s, range(5, 21)), _lrs(ref, range(16)), rtol=1e-6)
    assert _lrs(s, [5])[0] == pytest.approx(0.1) and _lrs(s, [20])[0] == pytest.approx(0.01)


def test_step_and_constant_and_one_cycle_shapes():
    step = _lrs(PhaseSchedule("step", 1.0, updates=100), [0, 49, 50, 74, 75, 99])
    np.testing.assert_allclose(step, [1, 1, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)
    const = _lrs(PhaseSchedule("constant", 0.5, updates=10, warmup=4), [0, 2, 4, 9])
    np.testing.assert_allclose(const, [0.0, 0.25, 0.5, 0.5], rtol=1e-6)
    oc = PhaseSchedule("one_cycle", 1.0, updates=100, final_fraction=0.0)
    assert oc.warmup == 25  # fastai pct_start 0.25
    np.testing.assert_allclose(_lrs(oc, [0, 25, 100]), [1 / 25, 1.0, 0.0], atol=1e-6)
    assert np.all(np.diff(_lrs(oc, range(26))) > 0) and np.all(np.diff(_lrs(oc, range(25, 101))) < 0)


def test_schedule_counts_optimizer_updates_not_micro_batches():
    s = PhaseSchedule("cosine", 0.1, updates=10, warmup=2, accumulate=3)
    lrs = _lrs(s, range(12))
    np.testing.assert_allclose(lrs[:3], 0.0, atol=1e-9)  # update 0: micro-batches 0, 1, 2
    np.testing.assert_allclose(lrs[3:6], 0.05, rtol=1e-6)  # update 1
    assert lrs[6] == pytest.approx(0.1)  # update 2: warm-up over


def test_schedule_updates_and_warmup_longer_than_the_phase():
    p = Phase("a", 2, 0.1, "none", warmup_epochs=0.5)
    assert schedule_updates(p, batches_per_epoch=10, epochs=2, accumulate=2) == (10, 2)  # round(0.5 * 10 / 2)
    with pytest.raises(KbenchError, match=r"phase 'a': the warm-up \(20 optimizer updates\) is not shorter than "
                                          r"the phase \(20 updates: 2 epoch\(s\) x 10 batches\)"):
        schedule_updates(Phase("a", 2, 0.1, "none", warmup_steps=20), 10, 2)
    assert phase_learning_rate(Phase("a", 1, 0.1, "none"), 0.1, 10, 0) == 0.1  # constant: a plain float, as before
    assert isinstance(phase_learning_rate(Phase("a", 1, 0.1, "none", schedule="cosine"), 0.1, 10, 0), PhaseSchedule)


VGG_NAMES = ["input_layer", "block1_conv1", "block1_pool", "block2_conv1", "block2_pool", "block3_conv1",
             "block3_pool"]


def test_block_depths_and_layer_decay_follow_timm():
    assert block_prefix("block5", 2) == "block4" and block_prefix("block_16", 3) == "block_14"
    with pytest.raises(ValueError):
        block_prefix("top", 1)
    assert block_depths(VGG_NAMES, "block3") == [4, 3, 3, 2, 2, 1, 1]
    p = Phase("a", 1, 0.1, "all", layer_decay=0.5, lr_mult=(("block1", 0.1), ("block1_pool", 2.0)), top_block="block3")
    m = layer_multipliers(VGG_NAMES, ["logits"], p)
    assert m == {"input_layer": 0.0625, "block1_conv1": 0.125 * 0.1, "block1_pool": 0.125 * 2.0, "block2_conv1": 0.25,
                 "block2_pool": 0.25, "block3_conv1": 0.5, "block3_pool": 0.5, "logits": 1.0}


def _grouped_model():
    inputs = keras.Input((6,))
    x = keras.layers.Dense(8, activation="tanh", name="block1_dense")(inputs)
    x = keras.layers.Dense(8, activation="tanh", name="block2_dense")(x)
    out = keras.layers.Dense(3, name="logits")(x)
    return keras.Model(inputs, out)


@pytest.mark.parametrize("accumulate,clip", [(1, None), (2, 0.5)])
def test_per_group_update_sizes_follow_the_multipliers(accumulate, clip):
    """Adam's first update moves every weight by lr * multiplier (|m_hat / sqrt(v_hat)| = 1), through
    Model.fit on this backend, with accumulation and global-norm clipping (which do not change it)."""
    keras.utils.set_random_seed(0)
    model = _grouped_model()
    p = Phase("a", 1, 1e-2, "all", layer_decay=0.5, top_block="block2")
    mults = layer_multipliers(["block1_dense", "block2_dense"], ["logits"], p)
    opt = make_optimizer("adam", 1e-2, accumulate_steps=accumulate, clip_norm=clip,
                         multiplier=variable_multiplier(model.layers, mults))
    model.compile(opt, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = {v.path: keras.ops.convert_to_numpy(v.value).copy() for v in model.trainable_variables}
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16 * accumulate, 6)).astype("float32"), rng.integers(0, 3, 16 * accumulate)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert int(keras.ops.convert_to_numpy(opt.iterations)) == 1
    for v in model.trainable_variables:
        step = np.abs(keras.ops.convert_to_numpy(v.value) - before[v.path])
        layer = v.path.split("/")[0]
        want = 1e-2 * mults[layer]  # weights whose gradient is far above Adam's epsilon move by exactly this
        assert step.max() == pytest.approx(want, rel=1e-3) and np.median(step) == pytest.approx(want, rel=2e-2), v.path
    assert {mults[k] for k in ("block1_dense", "block2_dense", "logits")} == {0.25, 0.5, 1.0}


def test_layerwise_optimizer_keeps_one_learning_rate_and_the_backend_class():
    model = _grouped_model()
    opt = make_optimizer("sgd", PhaseSchedule("cosine", 0.1, 10), momentum=0.0,
                         multiplier=variable_multiplier(model.layers, {"logits": 0.1}))
    assert type(opt).__name__.startswith("Layerwise") and isinstance(opt, keras.optimizers.SGD)
    assert float(keras.ops.convert_to_numpy(opt.learning_rate)) == pytest.approx(0.1)
    grads = [keras.ops.ones(v.shape) for v in model.trainable_variables]
    before = [keras.ops.convert_to_numpy(v.value).copy() for v in model.trainable_variables]
    opt.apply(grads, model.trainable_variables)
    for v, b in zip(model.trainable_variables, before):
        want = 0.1 * (0.1 if v.path.startswith("logits") else 1.0)
        np.testing.assert_allclose(b - keras.ops.convert_to_numpy(v.value), want, rtol=1e-5)
    assert math.isclose(float(keras.ops.convert_to_numpy(opt.learning_rate)), 0.1 * (1 + math.cos(math.pi / 10)) / 2,
                        rel_tol=1e-5)
