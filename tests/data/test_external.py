"""Issue 13 items 4 and 5: class weights and your own data (arrays, PyDataset, tf.data, torch DataLoader).

Each backend's session runs this file: the first-step weighted loss and the first batch of
kbench's own loader are asserted against values computed here (or a constant), so equal
results on every backend and every pipeline follow."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import keras
import numpy as np
import pytest

from kbench import KbenchError
from kbench.data import DataModule, from_arrays, from_pipelines, resolve_class_weight
from kbench.data.external import prepare_data

# ----------------------------------------------------------------------------- helpers


class ArrayPyDataset(keras.utils.PyDataset):
    """A user's PyDataset: fixed-order batches of (x, y)."""

    def __init__(self, x, y, batch_size):
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self):
        return -(-len(self.y) // self.batch_size)

    def __getitem__(self, i):
        s = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return self.x[s], self.y[s]


def _tf_dataset(x, y, batch_size):
    tf = pytest.importorskip("tensorflow")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)


def _torch_loader(x, y, batch_size):
    torch = pytest.importorskip("torch")
    ds = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)))
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False)


PIPELINES = {"pydataset": ArrayPyDataset, "tf.data": _tf_dataset, "torch": _torch_loader}

# ----------------------------------------------------------------------------- class weights


def _imbalanced():
    """900 images of class 0, 100 of class 1 (4x4 RGB uint8), interleaved, seeded."""
    rng = np.random.default_rng(0)
    y = np.zeros(1000, np.int32)
    y[rng.permutation(1000)[:100]] = 1
    x = rng.integers(0, 256, (1000, 4, 4, 3), dtype=np.uint8)
    x[y == 1, :, :, 0] //= 2  # a little signal
    return x, y


def _tiny_net():
    keras.utils.set_random_seed(1)
    net = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                            keras.layers.Dense(2)])
    net.compile(optimizer=keras.optimizers.SGD(0.0), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return net


class FirstLoss(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if batch == 0:
            self.loss = float(logs["loss"])


def _first_step_loss(dm, net):
    """The first training step's loss as the trainer's PhaseRun computes it: kbench's
    loader of ``dm`` into ``Model.fit`` with ``class_weight=dm.class_weights()``."""
    dm.setup()
    weights = prepare_data(dm, 4)
    seq = dm.loader("train", 4, shuffle=False)
    cb = FirstLoss()
    net.fit(seq, epochs=1, shuffle=False, verbose=0, callbacks=[cb], class_weight=weights)
    return cb.loss


def _numpy_losses(net, x, y, w):
    """Keras's reduction, in NumPy: sum_i(w_i * ce_i) / batch size ('sum_over_batch_size':
    divided by the number of samples, not by the sum of the weights)."""
    logits = np.asarray(net.predict(x.astype(np.float32), verbose=0), np.float64)
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    ce = -logp[np.arange(len(y)), y]
    return float((w[y] * ce).sum() / len(y)), float(ce.mean())


def _imbalanced_dm(pipeline, class_weight):
    x, y = _imbalanced()
    if pipeline == "arrays":
        return from_arrays(x, y, x[:10], y[:10], x[:10], y[:10], batch_size=1000, class_weight=class_weight)
    return from_pipelines(PIPELINES[pipeline](x, y, 1000), class_names=2, class_weight=class_weight)


@pytest.mark.parametrize("pipeline", ["arrays", *PIPELINES])
def test_class_weight_first_step_loss_same_on_every_pipeline(pipeline):
    x, y = _imbalanced()
    net = _tiny_net()
    weighted, unweighted = _numpy_losses(net, x, y, np.array([1.0, 9.0]))
    np.testing.assert_allclose(_first_step_loss(_imbalanced_dm(pipeline, {0: 1, 1: 9}), net), weighted, rtol=1e-5)
    assert abs(weighted - unweighted) > 0.1 * unweighted
    np.testing.assert_allclose(_first_step_loss(_imbalanced_dm(pipeline, None), _tiny_net()), unweighted, rtol=1e-5)


def test_keras_refuses_class_weight_for_a_torch_dataloader():
    """Why kbench wraps pipelines (kbench.data.pipelines): keras 3.15 refuses class_weight
    for a torch DataLoader on every backend."""
    x, y = _imbalanced()
    with pytest.raises(ValueError, match="class_weight"):
        _tiny_net().fit(_torch_loader(x, y, 100), epochs=1, verbose=0, class_weight={0: 1.0, 1: 9.0})


def test_class_weight_balanced_names_and_errors():
    y = np.array([0] * 900 + [1] * 100)
    got = resolve_class_weight("balanced", ["a", "b"], lambda: y)
    assert got == pytest.approx({0: 1000 / (2 * 900), 1: 1000 / (2 * 100)})  # sklearn's "balanced"
    assert resolve_class_weight({"b": 9, 0: 0.5}, ["a", "b", "c"], None) == {0: 0.5, 1: 9.0, 2: 1.0}
    assert resolve_class_weight(None, ["a", "b"], None) is None
    with pytest.raises(KbenchError, match=r"unknown class 'dog'.*\['a', 'b'\]"):
        resolve_class_weight({"dog": 2}, ["a", "b"], None)
    with pytest.raises(KbenchError, match=r"unknown class 5; use a class index in \[0, 2\)"):
        resolve_class_weight({5: 2}, ["a", "b"], None)
    with pytest.raises(KbenchError, match=r"\['c'\] have no training sample"):
        resolve_class_weight("balanced", ["a", "b", "c"], lambda: y)
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(KbenchError, match="finite numbers >= 0"):
            DataModule("cifar10", class_weight={0: bad})
    with pytest.raises(KbenchError, match="'balanced' or a mapping"):
        DataModule("cifar10", class_weight="auto")


def test_class_weight_config_key():
    from kbench.config import parse

    assert parse(["--data.class_weight", "{0: 1, 1: 9}"]).data.class_weight == {0: 1.0, 1: 9.0}
    assert parse(["--data.class_weight", "balanced"]).data.class_weight == "balanced"
    assert parse([]).data.class_weight is None


# ----------------------------------------------------------------------------- first batch


# sha256 of kbench's first training batch (float32 images, then int32 labels) of the real
# CIFAR-10 subset below, seed 7, no augmentation: computed once; every backend must give it.
FIRST_BATCH_SHA256 = "d95c3cbe77994b9717e8bdf741c819727ce41b1844caa82024413c56243eb7cc"


def test_first_batch_identical_on_every_backend(cifar_dir):
    dm = DataModule("folder", root=str(cifar_dir), batch_size=8, seed=7, max_train_per_class=4,
                    max_test_per_class=1, progress=False).setup()
    x, y = dm.loader("train", 32, shuffle=True)[0]
    assert x.dtype == np.float32 and x.shape == (8, 32, 32, 3) and y.dtype == np.int32
    assert hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest() == FIRST_BATCH_SHA256


# ----------------------------------------------------------------------------- Trainer.fit end to end


@pytest.fixture(scope="module")
def cifar_arrays(cifar_dir):
    """Real CIFAR-10 images as arrays: 5 train and 2 test per class, uint8 32x32."""
    dm = DataModule("folder", root=str(cifar_dir), val_split=0.0, seed=0, max_train_per_class=5,
                    max_test_per_class=2, progress=False).setup()
    return dm.train.x, dm.train.y, dm.test.x, dm.test.y, dm.class_names


def _fit(root, data, class_names):
    from kbench.config import RecipeConfig
    from kbench.models import build_model, get_spec
    from kbench.recipes import build_recipe
    from kbench.trainer import Trainer

    trainer = Trainer(seed=3, default_root_dir=str(root), enable_progress_bar=False, inference_batches=0,
                      limit_train_batches=2, limit_val_batches=1)
    tm = build_model(backbone="mobilenetv3small", weights="none", image_size=32, head="gap", head_dropout=0.0,
                     preprocess="auto", num_classes=len(class_names), class_names=class_names)
    recipe = build_recipe(RecipeConfig(name="fine_tune", epochs=1, fine_tune_epochs=1),
                          get_spec("mobilenetv3small").unfreeze)
    return trainer.fit(tm, data, recipe), tm, trainer


def _stored(root) -> dict:
    (run_dir,) = [p for p in Path(root).iterdir() if p.is_dir()]
    return json.loads((run_dir / "results.json").read_text())


def test_fit_numpy_arrays_fine_tune(cifar_arrays, tmp_path):
    xtr, ytr, xte, yte, names = cifar_arrays
    data = from_arrays(xtr, ytr, x_test=xte, y_test=yte, class_names=names, batch_size=8, seed=3,
                       class_weight="balanced")
    res, _, _ = _fit(tmp_path, data, names)
    stored = _stored(tmp_path)
    assert stored["test_accuracy"] == res["test_accuracy"] and stored["test_images"] == 20
    assert [p["phase"] for p in stored["phases"]] == ["feature_extraction", "fine_tune"]
    assert stored["phases"][0]["cache_cut"] is not None  # arrays are deterministic: the cache works
    assert stored["class_weight"] == {str(c): pytest.approx(1.0) for c in range(10)}  # balanced, 4 per class


@pytest.mark.parametrize("pipeline", list(PIPELINES))
def test_fit_pipelines_fine_tune(cifar_arrays, tmp_path, pipeline):
    """PyDataset and DataLoader through from_pipelines (with a test pipeline and class weights by
    name); a raw tf.data.Dataset straight into Trainer.fit (no test pipeline: tested on train)."""
    xtr, ytr, xte, yte, names = cifar_arrays
    make = PIPELINES[pipeline]
    if pipeline == "tf.data":
        data, n_test, weights = make(xtr, ytr, 8), 50, None
    else:
        data = from_pipelines(make(xtr, ytr, 8), test=make(xte, yte, 8), class_names=names,
                              class_weight={"cat": 2.0})
        n_test, weights = 20, {**{str(c): 1.0 for c in range(10)}, "3": 2.0}
    res, _, _ = _fit(tmp_path, data, names)
    stored = _stored(tmp_path)
    assert 0.0 <= stored["test_accuracy"] == res["test_accuracy"] <= 1.0 and stored["test_images"] == n_test
    assert [p["cache_cut"] for p in stored["phases"]] == [None, None]  # pipelines: no cache
    assert stored["phases"][0]["optimizer_iterations"] == 2  # limit_train_batches
    assert stored["class_weight"] == weights


def test_bad_data_one_clear_error_before_the_run_folder(cifar_arrays, tmp_path):
    xtr, ytr, _, _, names = cifar_arrays
    with pytest.raises(KbenchError, match=r"cannot train on a builtins\.str; pass one of: a kbench DataModule"):
        _fit(tmp_path, "cifar10", names)
    with pytest.raises(KbenchError, match=r"the model has 10 classes but the data has 2"):
        _fit(tmp_path, from_pipelines(ArrayPyDataset(xtr, ytr % 2, 8), class_names=2), names)
    with pytest.raises(KbenchError, match=r"class_names must list the class names"):
        from_pipelines(ArrayPyDataset(xtr, ytr, 8))
    bad_y = ytr.copy()
    bad_y[3] = 10
    with pytest.raises(KbenchError, match=r"train pipeline: labels range 0\.\.10, outside \[0, 10\)"):
        _fit(tmp_path, from_pipelines(ArrayPyDataset(xtr, bad_y, 50), class_names=names), names)
    with pytest.raises(KbenchError, match=r"images have shape \(8, 28, 28, 3\); kbench needs \(batch, 32, 32, 3\)"):
        _fit(tmp_path, from_pipelines(ArrayPyDataset(xtr[:, :28, :28], ytr, 8), class_names=names), names)
    with pytest.raises(KbenchError, match=r"values range 0\.\.1, i\.e\. scaled|image values range 0\.\.1;"):
        _fit(tmp_path, from_pipelines(ArrayPyDataset(xtr / 255.0, ytr, 8), class_names=names), names)
    with pytest.raises(KbenchError, match=r"train labels must be in \[0, 10\), found 0\.\.10"):
        _fit(tmp_path, (xtr, bad_y), names)
    with pytest.raises(KbenchError, match=r"data.class_weight: unknown class 'zebra'"):
        _fit(tmp_path, from_arrays(xtr, ytr, class_names=names, class_weight={"zebra": 2}), names)
    with pytest.raises(KbenchError, match=r"from_pipelines: train is a builtins\.list"):
        from_pipelines([1, 2], class_names=names)
    assert not any(Path(tmp_path).iterdir())  # nothing written


def test_raw_arrays_become_a_datamodule_with_held_out_splits(cifar_arrays):
    from kbench.data.external import ArrayDataModule, as_datamodule

    xtr, ytr, _, _, names = cifar_arrays
    dm = as_datamodule((xtr, ytr), names, seed=3).setup()
    assert isinstance(dm, ArrayDataModule) and dm.deterministic and dm.class_names == names
    assert (len(dm.train), len(dm.val), len(dm.test)) == (30, 10, 10)  # 20 % test, then 10 % (>= 1) val per class
    together = np.concatenate([dm.train.x, dm.val.x, dm.test.x]).reshape(50, -1)
    assert len(np.unique(together, axis=0)) == 50 and sorted(np.bincount(dm.test.y)) == [1] * 10


@pytest.mark.parametrize("pipeline", list(PIPELINES))
def test_pipeline_sequence_order_sizes_and_tail(pipeline):
    """Batches in the pipeline's order, in any index order keras asks; the served sizes fill
    batch_sizes(); tail(k) serves batches k.. of a fresh pass (exact for a repeating order)."""
    x, y = (a[:50] for a in _imbalanced())
    dm = from_pipelines(PIPELINES[pipeline](x, y, 16), class_names=2).setup()
    dm.check(4)
    seq = dm.loader("train", 4)
    assert len(seq) == 4 and seq.batch_sizes() == [16] * 4 and dm.batch_size == 16
    for i in (0, 1, 3, 0, 2):
        xb, yb = seq[i]
        np.testing.assert_array_equal(xb, x[16 * i:16 * (i + 1)].astype(np.float32))
        np.testing.assert_array_equal(yb, y[16 * i:16 * (i + 1)])
        assert xb.dtype == np.float32 and yb.dtype == np.int32
    assert seq.batch_sizes() == [16, 16, 16, 2]
    tail = seq.tail(2)
    assert len(tail) == 2 and tail.batch_sizes() == [16, 2]
    np.testing.assert_array_equal(tail[1][1], y[48:50])
    assert len(dm.loader("train", 4, limit_batches=2)) == 2
    assert len(dm.train) == (50 if pipeline == "torch" else 64)  # a DataLoader's dataset length, else 4 x 16
