"""The two-view flip cache and the augmentation cache rules, end to end on real CIFAR-10 images."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
from rich.console import Console

from kbench.config import parse
from kbench.data import BatchSequence, DataModule, TwoViewSequence, flip_mask, resize_batch
from kbench.models import build_model
from kbench.recipes import cache_cut
from kbench.run import run
from kbench.trainer.cache import FeatureCache
from kbench.trainer.loop import LoopTools

TINY = ["--model.backbone", "mobilenetv3small", "--model.image_size", "32", "--model.weights", "none"]


def _cfg(cifar_dir, tmp_path, *extra):
    return parse(["--data.source", "folder", "--data.root", str(cifar_dir), "--data.batch_size", "32",
                  "--trainer.default_root_dir", str(tmp_path), "--trainer.inference_batches", "1",
                  "--trainer.enable_progress_bar", "false", "--trainer.precision", "float32",
                  "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
                  "--trainer.limit_test_batches", "1", "--trainer.enable_checkpointing", "false", *TINY, *extra])


def test_two_views_serve_the_uncached_flip_draw_for_draw():
    n = 10
    plain = np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 4), np.float32)
    seq = TwoViewSequence((plain, -plain - 100), np.arange(n, dtype=np.int32), 4, shuffle=True, seed=3)
    images = np.zeros((n, 2, 2, 3), np.uint8)
    images[:, :, 0] = 255  # left column white: a flip moves it right
    uncached = BatchSequence(images, np.arange(n, dtype=np.int32), 4, 2, shuffle=True, seed=3, augment=True)
    for epoch in (0, 1):
        seq.epoch = uncached.epoch = epoch
        for i in range(len(seq)):
            x, y = seq[i]
            xi, yi = uncached[i]
            np.testing.assert_array_equal(y, yi)
            mirrored = x[:, 0] < 0
            np.testing.assert_array_equal(mirrored, flip_mask(3, epoch, i, len(y)))
            np.testing.assert_array_equal(mirrored, xi[:, 0, 0, 0] == 0)  # the same images flipped uncached
            np.testing.assert_array_equal(np.where(mirrored, -x[:, 0] - 100, x[:, 0]), y)


def test_mirrored_features_equal_the_prefix_of_flipped_images(cifar_dir):
    dm = DataModule("folder", str(cifar_dir), batch_size=64, max_train_per_class=3, augment=True,
                    progress=False).setup()
    tm = build_model("mobilenetv3small", "none", 32, "gap", 0.0, "auto", dm.num_classes, dm.class_names)
    names = [la.name for la in tm.base.layers]
    deep = cache_cut(tm.base, len(names))
    shallow = cache_cut(tm.base, names.index(deep) - 1)
    assert shallow and names.index(shallow) < names.index(deep)
    cache = FeatureCache(tm, dm, LoopTools(Console(quiet=True), {"train": 1.0, "val": 1.0, "test": 1.0},
                                           enable_progress_bar=False))
    cache.plan([shallow, deep])
    images = resize_batch(list(dm.train.x), 32)
    flipped = np.ascontiguousarray(images[:, :, ::-1])
    for cut in (shallow, deep):  # deep is derived from the shallow mirrored view
        got = cache.get("train", cut, mirror=True)
        prefix = tm.split(cut)[0]
        want, plain = (np.asarray(prefix.predict(v, batch_size=len(v), verbose=0), np.float32) for v in (flipped, images))
        assert got.dtype == np.float32 and got.shape == want.shape
        scale = float(np.abs(want).max())
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)
        assert not np.allclose(got, plain, atol=1e-3 * scale)
    assert cache.peak_mb > 0
    assert cache.peak_mb == pytest.approx(sum(v.nbytes for v in cache.store.values()) / 2**20)


def _results(tmp_path) -> dict:
    run_dir = next(Path(tmp_path).iterdir())
    return json.loads((run_dir / "results.json").read_text())


def test_flip_only_fit_uses_the_two_view_cache(cifar_dir, tmp_path):
    run(_cfg(cifar_dir, tmp_path, "--recipe.name", "feature_extraction", "--recipe.epochs", "1",
             "--data.augment", "true", "--recipe.label_smoothing", "0.1"))
    r = _results(tmp_path)
    phase = r["phases"][0]
    assert phase["cache_cut"] is not None and phase["cache_views"] == 2
    assert r["cache_memory_mb"] > 0 and r["status"] == "completed"


def test_crop_padding_fit_runs_uncached(cifar_dir, tmp_path):
    run(_cfg(cifar_dir, tmp_path, "--recipe.name", "feature_extraction", "--recipe.epochs", "1",
             "--data.augment", "true", "--data.crop_padding", "4"))
    phase = _results(tmp_path)["phases"][0]
    assert phase["cache_cut"] is None and phase["cache_views"] is None


def test_mixup_label_smoothing_randaugment_fit_end_to_end(cifar_dir, tmp_path):
    run(_cfg(cifar_dir, tmp_path, "--recipe.name", "feature_extraction", "--recipe.epochs", "2",
             "--recipe.mixup", "0.2", "--recipe.cutmix", "1.0", "--recipe.label_smoothing", "0.1",
             "--data.randaugment", "1", "--data.translate", "0.1"))
    r = _results(tmp_path)
    assert r["status"] == "completed" and r["phases"][0]["cache_cut"] is None
    assert 0.0 <= r["test_accuracy"] <= 1.0 and np.isfinite(r["test_loss"])
    run_dir = next(Path(tmp_path).iterdir())
    loaded = keras.saving.load_model(run_dir / "model.keras", compile=False)
    assert loaded.output.shape[-1] == 10


@pytest.mark.slow  # CI time (~30 s per backend); run with -m slow
def test_two_view_cache_trains_the_same_model_as_uncached_flips(cifar_dir, vgg16_weights, tmp_path):
    """Same seed, flips on: the two-view cache serves the features of exactly the images the
    uncached path flips, so both paths train the same head (label smoothing on in both)."""
    from kbench.recipes import Recipe, make_phases
    from kbench.trainer import Trainer

    out = {}
    for cache in ("auto", "off"):
        trainer = Trainer(seed=7, default_root_dir=str(tmp_path / cache), enable_progress_bar=False,
                          inference_batches=0, enable_checkpointing=False)
        dm = DataModule("folder", str(cifar_dir), batch_size=32, seed=7, max_train_per_class=8,
                        max_test_per_class=3, augment=True, progress=False)
        tm = build_model("vgg16", str(vgg16_weights), 32, "gap", 0.5, "auto", 10, dm.setup().class_names)
        phases = make_phases("feature_extraction", 2, 1e-3, 1, None, "auto", "block5")
        res = trainer.fit(tm, dm, Recipe("feature_extraction", phases, cache=cache, label_smoothing=0.1))
        out[cache] = (res, trainer.history, [np.asarray(w) for w in tm.keras_model.get_weights()])
    (ra, ha, wa), (ro, ho, wo) = out["auto"], out["off"]
    assert ra["phases"][0]["cache_cut"] == "block5_pool" and ra["phases"][0]["cache_views"] == 2
    assert ro["phases"][0]["cache_cut"] is None
    for a, o in zip(ha, ho):
        np.testing.assert_allclose([a["loss"], a["val_loss"]], [o["loss"], o["val_loss"]], rtol=2e-4)
        assert a["accuracy"] == pytest.approx(o["accuracy"], abs=1e-6)
    assert ra["test_loss"] == pytest.approx(ro["test_loss"], rel=2e-4)
    for a, o in zip(wa, wo):
        np.testing.assert_allclose(a, o, rtol=1e-3, atol=1e-5)
