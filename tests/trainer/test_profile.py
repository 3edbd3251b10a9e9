"""trainer.profile: the time breakdown adds up to the wall time, changes no result, and
``trace`` writes the backend's own trace (kbench.trainer.profile)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import keras
import numpy as np
import pytest

from kbench import KbenchError
from kbench.config import parse
from kbench.run import run
from kbench.trainer import profile
from kbench.trainer.profile import PHASE_PARTS, RUN_PARTS, TRACE_SKIP, TRACE_STEPS, RunProfile, check_profile

TINY = ["--model.backbone", "mobilenetv3small", "--model.image_size", "32", "--model.weights", "none",
        "--recipe.name", "feature_extraction", "--recipe.epochs", "2", "--data.batch_size", "16",
        "--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "2", "--trainer.limit_test_batches", "2",
        "--trainer.inference_batches", "0", "--trainer.enable_progress_bar", "false",
        "--trainer.precision", "float32", "--data.source", "folder"]


def _run(cifar_dir, root, *extra) -> tuple:
    results = run(parse([*TINY, "--data.root", str(cifar_dir), "--trainer.default_root_dir", str(root), *extra]))
    run_dir = next(Path(root).iterdir())
    model = keras.saving.load_model(run_dir / "model.keras")
    return results, run_dir, [keras.ops.convert_to_numpy(w) for w in model.weights]


def test_profile_adds_up_and_changes_no_result(cifar_dir, tmp_path, capsys):
    off, _, w_off = _run(cifar_dir, tmp_path / "off")
    on, run_dir, w_on = _run(cifar_dir, tmp_path / "on", "--trainer.profile", "trace")
    assert "profile" not in off and not any("profile" in p for p in off["phases"])
    assert (on["test_loss"], on["test_accuracy"]) == (off["test_loss"], off["test_accuracy"])
    for a, b in zip(w_on, w_off, strict=True):
        np.testing.assert_array_equal(a, b)

    prof = on["profile"]
    parts = {k: prof[k] for k in (*RUN_PARTS, "other_s")}
    assert min(parts.values()) >= 0 and prof["mode"] == "trace"
    assert sum(parts.values()) == pytest.approx(prof["wall_s"], abs=1e-3)
    assert prof["other_s"] <= 0.03 * prof["wall_s"]  # every stretch of the run is in a named part
    assert min(prof[k] for k in ("model_s", "cache_s", "phases_s", "test_s", "save_s")) > 0
    assert prof["wall_s"] >= on["total_time_s"]  # the profile also holds the data and the model
    assert prof["cache_s"] == pytest.approx(on["cache_time_s"], abs=1e-3)  # FeatureCache's own clock
    assert prof["phases_s"] + sum(p["cache_time_s"] for p in on["phases"]) >= sum(
        p["wall_time_s"] for p in on["phases"]) - 1e-3

    for p in on["phases"]:
        pp = p["profile"]
        assert min(pp[k] for k in PHASE_PARTS) >= 0, pp
        assert sum(pp[k] for k in PHASE_PARTS) == pytest.approx(p["wall_time_s"], abs=2e-3)
        assert pp["other_s"] <= 0.5 * p["fit_time_s"], pp  # the named parts cover most of Model.fit
        assert pp["steps"] == 8 and min(pp["step_s"], pp["validation_s"], pp["checkpoint_s"]) > 0
        assert pp["data_wait_s"] + pp["data_background_s"] > 0
    assert on["phases"][0]["profile"]["trace_s"] > 0

    trace = prof["trace"]
    assert trace["phase"] == "feature_extraction" and trace["steps"] == [TRACE_SKIP + 1, TRACE_SKIP + TRACE_STEPS]
    assert trace["files"] and all(os.path.getsize(run_dir / f) > 0 for f in trace["files"])
    assert json.loads((run_dir / "results.json").read_text())["profile"] == prof
    assert "where the time goes" in capsys.readouterr().out


class _Seq:
    def __getitem__(self, i):
        _CLOCK[0] += 0.5
        return i


class _Saver:
    def on_epoch_end(self, epoch, logs=None):
        _CLOCK[0] += 2.0


_CLOCK = [0.0]


def _at(t: float, call) -> None:
    _CLOCK[0] = t
    call()


def test_phase_profile_books_each_interval(monkeypatch):
    """Hooks at known clock times (one batch fetched outside its step as the torch
    trainer does, one inside as JAX's does, one in another thread as tf.data does)."""
    monkeypatch.setattr(profile, "perf_counter", lambda: _CLOCK[0])
    seq, saver, run_prof = _Seq(), _Saver(), RunProfile(True)
    prof = profile.PhaseProfile(seq, [(saver, "on_epoch_end")], run_prof, None, "p")
    head, tail = prof.wrap([])
    _at(0.0, head.on_train_begin), _at(0.1, tail.on_train_begin)
    _at(0.1, lambda: head.on_epoch_begin(0)), _at(0.1, lambda: tail.on_epoch_begin(0))
    _at(0.1, lambda: seq[0])  # -> 0.6, between batches
    _at(0.6, lambda: head.on_train_batch_begin(0)), _at(0.7, lambda: tail.on_train_batch_begin(0))
    _at(1.7, lambda: head.on_train_batch_end(0)), _at(1.8, lambda: tail.on_train_batch_end(0))
    _at(1.8, lambda: head.on_train_batch_begin(1)), _at(1.8, lambda: tail.on_train_batch_begin(1))
    _at(1.8, lambda: seq[1])  # -> 2.3, inside the step
    _at(3.3, lambda: head.on_train_batch_end(1)), _at(3.3, lambda: tail.on_train_batch_end(1))
    worker = threading.Thread(target=lambda: seq[2])  # background: +0.5 on the clock, not a wait
    worker.start(), worker.join()
    _at(3.3, head.on_test_begin), _at(4.0, tail.on_test_end)
    _at(4.0, lambda: head.on_epoch_end(0))
    saver.on_epoch_end(0)  # -> 6.0
    _at(6.1, lambda: tail.on_epoch_end(0))
    _at(6.1, head.on_train_end), _at(6.1, tail.on_train_end)
    row = prof.row({"wall_time_s": 8.0, "fit_time_s": 6.5, "cache_time_s": 1.0})["profile"]
    expected = {"setup_s": 0.5, "cache_s": 1.0, "data_wait_s": 1.0, "step_s": 2.0, "callbacks_s": 0.4,
                "validation_s": 0.7, "checkpoint_s": 2.0, "trace_s": 0.0, "other_s": 0.4}
    assert row == pytest.approx({**expected, "data_background_s": 0.5, "steps": 2, "step_ms_mean": 1000.0})
    assert type(seq) is _Seq and "on_epoch_end" not in saver.__dict__  # wrappers undone


class _Cache:
    seconds = 0.0


def test_run_profile_laps_split_out_the_cache(monkeypatch):
    monkeypatch.setattr(profile, "perf_counter", lambda: _CLOCK[0])
    prof, cache = RunProfile(True), _Cache()
    _at(10.0, prof.start)
    _at(11.0, lambda: prof.lap("data_s"))
    cache.seconds = 3.0
    _at(15.0, lambda: prof.lap("phases_s", cache))
    _at(15.5, lambda: prof.start())  # running: no restart
    out = prof.results("save_s")["profile"]
    assert out == {"mode": True, "wall_s": 5.5, "data_s": 1.0, "model_s": 0.0, "setup_s": 0.0, "cache_s": 3.0,
                   "phases_s": 1.0, "test_s": 0.0, "save_s": 0.5, "other_s": 0.0, "trace": None}
    _at(20.0, prof.start)  # a new fit restarts the clock
    assert prof.parts["data_s"] == 0.0 and prof.t0 == 20.0
    assert RunProfile(False).results() == {}


def test_profile_values(tmp_path):
    assert check_profile(True) is True and check_profile("trace") == "trace" and check_profile(False) is False
    for bad in ("yes", 1, None):
        with pytest.raises(KbenchError, match="trainer.profile"):
            check_profile(bad)
    assert parse([]).trainer.profile is False
    assert parse(["--trainer.profile", "trace"]).trainer.profile == "trace"
    assert parse(["--trainer.profile", "true"]).trainer.profile is True
    with pytest.raises(SystemExit):
        parse(["--trainer.profile", "maybe"])


def test_trace_that_cannot_start_is_one_warning(monkeypatch):
    lines = []
    prof = RunProfile("trace", lines.append)

    def refuse(logdir):
        raise RuntimeError("no profiler here")

    monkeypatch.setattr(profile.backend, "start_trace", refuse)
    assert profile.start_trace("/nonexistent", prof) is None
    assert prof.trace == {"error": "RuntimeError: no profiler here"}
    assert len(lines) == 1 and "no profiler here" in lines[0] and "goes on" in lines[0]
