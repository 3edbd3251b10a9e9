"""scripts/export_backbone.py: a kbench model's backbone becomes a --model.weights file."""

from __future__ import annotations

import sys
from pathlib import Path

import keras
import numpy as np

from kbench.models import build_backbone, build_model, get_spec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import export_backbone  # noqa: E402


def test_exported_backbone_loads_into_the_same_architecture(tmp_path, capsys):
    tm = build_model("mobilenetv3small", "none", 32, "gap", 0.0, "auto", 3, ["a", "b", "c"])
    tm.compose(base_training=None).save(tmp_path / "model.keras")
    out = tmp_path / "mnv3.weights.h5"
    assert export_backbone.main([str(tmp_path), str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    # a different input size: the weights do not depend on it
    base = build_backbone(get_spec("mobilenetv3small"), 48, str(out))
    want = [keras.ops.convert_to_numpy(w.value) for w in tm.base.weights]
    got = [keras.ops.convert_to_numpy(w.value) for w in base.weights]
    assert len(got) == len(want) > 0
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a, b)


def test_bad_arguments_exit_2(tmp_path, capsys):
    assert export_backbone.main([str(tmp_path)]) == 2
    assert export_backbone.main([str(tmp_path), str(tmp_path / "out.h5")]) == 2
    assert "ending in .weights.h5 (got output path" in capsys.readouterr().err
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    assert export_backbone.main([str(tmp_path / "run"), str(tmp_path / "x.weights.h5")]) == 2
    assert "has not finished" in capsys.readouterr().err
    assert export_backbone.main([str(tmp_path), str(tmp_path / "x.weights.h5"), "--recalibrate-bn", "/nonexistent"]) == 2
    assert "folder '/nonexistent' does not exist" in capsys.readouterr().err
    code = export_backbone.main([str(tmp_path / "missing"), str(tmp_path / "x.weights.h5")])
    assert code == 2 and "missing" in capsys.readouterr().err


def test_recalibrated_batchnorm_makes_inference_match_training_mode_on_that_batch():
    # after recalibration on one batch, every BN layer's moving statistics are that batch's
    # statistics, so inference mode reproduces training mode on it; before, it does not
    tm = build_model("mobilenetv3small", "none", 32, "gap", 0.0, "auto", 3, ["a", "b", "c"])
    model = tm.compose(base_training=None)
    x = np.random.default_rng(0).uniform(0, 255, (16, 32, 32, 3)).astype("float32")

    def gap(a, b):
        a, b = keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
        return float(np.abs(a - b).max() / np.abs(b).max())

    before = gap(model(x, training=False), model(x, training=True))
    assert export_backbone.recalibrate_bn(model, x, batch_size=16) == 34  # BN layers of MobileNetV3Small
    y_inference = model(x, training=False)
    after = gap(y_inference, model(x, training=True))
    assert before > 0.1 and after < 1e-3, (before, after)
