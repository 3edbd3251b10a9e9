"""kbench.studies.time_to_accuracy on hand-made rows (golden values; no Ray, no subprocess)."""

from __future__ import annotations

import os

import pytest

from kbench.studies import cli
from kbench.studies import time_to_accuracy as tta
from kbench.studies.common import RECIPE_POINTS
from kbench.sweep import store
from kbench.sweep.spec import Sweep, SweepError

NUM_TRAIN = 90
# recipe -> phases (name, wall_time_s, fit_time_s, cache_time_s, epoch_time_s per epoch)
PHASES = {"feature_extraction": [("feature_extraction", 3.0, 2.1, 0.8, [0.5, 0.5, 0.5])],
          "fine_tune": [("feature_extraction", 2.0, 1.2, 0.8, [0.5, 0.5]), ("fine_tune", 4.0, 3.0, 0.9, [1.0, 1.6])],
          "scratch": [("scratch", 20.6, 20.4, 0.0, [5.0] * 4)]}
# (recipe, seed) -> validation top-1 per epoch, test top-1
VAL = {("feature_extraction", 0): ([0.30, 0.40, 0.50], 0.50), ("feature_extraction", 1): ([0.40, 0.50, 0.50], 0.52),
       ("fine_tune", 0): ([0.30, 0.35, 0.55, 0.60], 0.60), ("fine_tune", 1): ([0.30, 0.35, 0.55, 0.60], 0.60),
       ("scratch", 0): ([0.10, 0.20, 0.30, 0.40], 0.40), ("scratch", 1): ([0.10, 0.20, 0.30, 0.42], 0.44)}
TOTAL = {"feature_extraction": 5.0, "fine_tune": 9.0, "scratch": 22.0}


def make_row(recipe: str, seed: int, backend: str = "tensorflow") -> dict:
    vals, test = VAL[(recipe, seed)]
    metrics, phases, epoch = [], [], 0
    for name, wall, fit, cache, times in PHASES[recipe]:
        phases.append({"phase": name, "wall_time_s": wall, "fit_time_s": fit, "cache_time_s": cache})
        for t in times:
            metrics.append({"phase": name, "epoch": epoch + 1, "val_accuracy": vals[epoch], "epoch_time_s": t})
            epoch += 1
    results = {"test_accuracy": test, "num_train": NUM_TRAIN, "num_val": 10, "phases": phases,
               "train_time_s": sum(p["wall_time_s"] for p in phases), "total_time_s": TOTAL[recipe]}
    return {"trial": f"{backend}-{recipe}-seed{seed}", "point": dict(RECIPE_POINTS[recipe]), "backend": backend,
            "seed": seed, "status": "completed", "results": results, "metrics": metrics,
            "wall_time_s": TOTAL[recipe] + 9.0}


def all_rows() -> list[dict]:
    failed = {"trial": "tensorflow-feature_extraction-seed2", "point": dict(RECIPE_POINTS["feature_extraction"]),
              "backend": "tensorflow", "seed": 2, "status": "failed", "error": "boom", "results": None, "metrics": []}
    return [make_row(r, s) for r in PHASES for s in (0, 1)] + [failed]


def test_epoch_points_count_phase_setup_cache_and_checkpoint_writes():
    pts = tta.epoch_points(make_row("fine_tune", 0))
    # phase 1: 0.8 s set-up + cache, epochs 0.5 s + 0.1 s each of the 0.2 s outside them; phase 2 from 2.0 s: 1.0 s + epochs 1.0 s / 1.6 s + 0.2 s each
    assert [(p["epoch"], p["phase"], p["images"]) for p in pts] == [
        (1, "feature_extraction", 90), (2, "feature_extraction", 180), (3, "fine_tune", 270), (4, "fine_tune", 360)]
    assert [p["time_s"] for p in pts] == pytest.approx([1.4, 2.0, 4.2, 6.0])
    assert [p["val"] for p in pts] == [0.30, 0.35, 0.55, 0.60]


def test_mean_curve_and_auto_target():
    groups = tta.summarize(all_rows())
    fe = next(g for g in groups if g["recipe"] == "feature_extraction")
    assert (fe["completed"], fe["total"]) == (2, 3)
    assert [round(p["val"], 6) for p in fe["curve"]] == [0.35, 0.45, 0.5]
    assert [p["n"] for p in fe["curve"]] == [2, 2, 2]
    target, how = tta.resolve_target(groups, *tta.parse_target("auto"))
    assert target == pytest.approx(0.9 * 0.41)
    assert "90% of the lowest best mean validation top-1 (scratch on tensorflow, 0.4100)" in how


def test_table_cells():
    groups = tta.summarize(all_rows())
    rows = tta.table(groups, 0.369)
    assert rows[0] == ["feature_extraction", "tensorflow", "2/3", "0.5100 ± 0.0141 (n=2)", "0.5000", "3",
                       "3.0 ± 0.0 (n=2)", "0.8 ± 0.0 (n=2)", "5.0 ± 0.0 (n=2)", "14.0 ± 0.0 (n=2)", "2.3", "2", "180"]
    assert rows[1][-3:] == ["4.2", "3", "270"]
    assert rows[1][7] == "1.7 ± 0.0 (n=2)"  # both phases' cache passes
    assert rows[2][-3:] == ["20.6", "4", "360"]
    assert tta.table(groups, 0.99)[0][-3:] == ["-", "-", "-"]


def test_verdict_auto_target():
    groups = tta.summarize(all_rows())
    target, _ = tta.resolve_target(groups, "fraction", 0.9)
    assert tta.verdict(groups, target) == [
        "- tensorflow: reached first by feature_extraction after 2.3 s (epoch 2, 180 images); then fine_tune after "
        "4.2 s (epoch 3, 270 images); then scratch after 20.6 s (epoch 4, 360 images)",
        "  - feature_extraction reaches it 9.0x faster than scratch in training wall time, with 2.0x fewer training "
        "images processed",
        "  - fine_tune reaches it 4.9x faster than scratch in training wall time, with 1.3x fewer training images "
        "processed",
        "  - final test top-1: scratch 0.4200 vs fine_tune 0.6000 (-18.0 points): scratch does not beat the transfer "
        "recipes within its 4 epochs"]


def test_verdict_when_scratch_misses_an_absolute_target():
    groups = tta.summarize(all_rows())
    target, how = tta.resolve_target(groups, *tta.parse_target("0.44"))
    assert (target, how) == (0.44, "validation top-1 >= 0.4400 (--target)")
    lines = tta.verdict(groups, target)
    assert lines[0].endswith("; then scratch not within 4 epochs (best 0.4100)")
    assert lines[1] == "  - scratch does not reach it in 4 epochs (20.6 s): feature_extraction is more than 9.0x faster"
    assert tta.verdict([], None) == ["- no completed trial with per-epoch validation accuracy"]


@pytest.mark.parametrize("text,expected", [("auto", ("fraction", 0.9)), ("80%", ("fraction", 0.8)),
                                           ("0.45", ("absolute", 0.45)), (" 1 ", ("absolute", 1.0))])
def test_parse_target(text, expected):
    assert tta.parse_target(text) == expected


@pytest.mark.parametrize("text", ["x", "0", "1.5", "150%", "-0.2", "%"])
def test_parse_target_refuses(text):
    with pytest.raises(SweepError, match="--target"):
        tta.parse_target(text)


def test_report_only_from_a_rows_file(tmp_path):
    out = str(tmp_path / "study")
    sweep = Sweep("c.yaml", "", [{**RECIPE_POINTS[r], tta.SIZE_KEY: 10} for r in PHASES], [0, 1], ["tensorflow"])
    stored = {}
    for t in sweep.trials():
        stored[t.id] = {**make_row(t.point["recipe.name"], t.seed), "trial": t.id, "point": t.point}
    os.makedirs(os.path.join(out, "trials"))
    store.write_rows(os.path.join(out, "trials"), sweep, stored)
    assert cli.main(["time_to_accuracy", "--output", out, "--report-only", "--backends", "tensorflow"]) == 0
    report = open(os.path.join(out, "report.md")).read()
    assert "(90 train + 10 validation images)" in report
    assert "- tensorflow: reached first by feature_extraction after 2.3 s" in report
    assert os.path.getsize(os.path.join(out, "time_to_accuracy.png")) > 1000


def test_run_refuses_a_bad_size(tmp_path):
    assert cli.main(["time_to_accuracy", "--output", str(tmp_path), "--size", "0", "--report-only",
                     "--backends", "tensorflow"]) == 2
