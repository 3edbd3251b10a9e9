"""kbench.studies.data_efficiency on hand-made rows (golden values; no Ray, no subprocess),
the epoch scaling of small training sets, and the study CLI's input errors."""

from __future__ import annotations

import os

import pytest

from kbench import subproc
from kbench.studies import cli
from kbench.studies import data_efficiency as de
from kbench.studies.common import scaled_recipe
from kbench.sweep import store
from kbench.sweep.report import group
from kbench.sweep.spec import SweepError

# (recipe, images per class) -> test top-1 of seeds 0 and 1
ACC = {("feature_extraction", 10): (0.30, 0.32), ("fine_tune", 10): (0.34, 0.36), ("scratch", 10): (0.12, 0.10),
       ("feature_extraction", 100): (0.50, 0.52), ("fine_tune", 100): (0.60, 0.58), ("scratch", 100): (0.40, 0.44),
       ("feature_extraction", 1000): (0.60, 0.62), ("fine_tune", 1000): (0.70, 0.72), ("scratch", 1000): (0.71, 0.69)}


def _rows() -> list[dict]:
    return [{"trial": f"tf-{r}-{n}-seed{s}", "point": {"recipe.name": r, de.SIZE_KEY: n}, "backend": "tensorflow",
             "seed": s, "status": "completed", "results": {"test_accuracy": acc[s]}, "metrics": [],
             "wall_time_s": 10.0 * (s + 1)} for (r, n), acc in ACC.items() for s in (0, 1)]


def test_scaled_recipe_reaches_the_minimum_steps():
    # 10/class: 90 training images = 2 batches of 64 per epoch -> 10 epochs = 20 steps -> x5
    assert scaled_recipe("feature_extraction", 10) == {"recipe.name": "feature_extraction", "recipe.epochs": 50}
    assert scaled_recipe("fine_tune", 10) == {"recipe.name": "fine_tune", "recipe.epochs": 30,
                                              "recipe.fine_tune_epochs": 20}
    assert scaled_recipe("scratch", 50)["recipe.epochs"] == 20  # 8 steps x 10 = 80 < 100 -> x2
    assert scaled_recipe("scratch", 100)["recipe.epochs"] == 10  # 15 x 10 = 150 steps: base epochs
    assert scaled_recipe("scratch", 10, batch_size=8)["recipe.epochs"] == 10  # 12 steps x 10
    assert scaled_recipe("scratch", 10, min_steps=1000)["recipe.epochs"] == 500


def test_verdict_names_the_gap_and_where_scratch_catches_up():
    groups = group(_rows(), ["point.recipe.name", f"point.{de.SIZE_KEY}"], {"top1": lambda r: r["results"]
                                                                            ["test_accuracy"]})
    lines = de.verdict(groups, [10, 100, 1000])
    assert lines == ["- 10 images/class: fine_tune 0.3500 vs scratch 0.1100 (+24.0 points)",
                     "- 100 images/class: fine_tune 0.5900 vs scratch 0.4200 (+17.0 points)",
                     "- 1000 images/class: fine_tune 0.7100 vs scratch 0.7000 (+1.0 points)",
                     "- scratch catches up (within one std of the best transfer recipe from there on) at 1000 images/class"]
    assert de.verdict(groups, [10, 100])[-1] == "- scratch does not catch up with transfer at the largest size measured"
    tie_at_chance = [dict(r, results={"test_accuracy": 0.1}) if r["point"][de.SIZE_KEY] == 10 else r for r in _rows()]
    groups = group(tie_at_chance, ["point.recipe.name", f"point.{de.SIZE_KEY}"], {"top1": lambda r: r["results"]
                                                                                 ["test_accuracy"]})
    assert de.verdict(groups, [10, 100])[-1] == "- scratch does not catch up with transfer at the largest size measured"


def test_report_only_from_stored_rows(tmp_path, capsys):
    out = tmp_path / "study"
    os.makedirs(out / "trials")
    subproc.write_json(str(out / "trials" / store.ROWS_FILE), {"format": store.ROWS_FORMAT, "rows": _rows(),
                                                               "sweep": {"name": "trials"}})
    code = cli.main(["data_efficiency", "--output", str(out), "--sizes", "10,100,1000", "--seeds", "2",
                     "--backends", "tensorflow", "--report-only"])
    assert code == 0, capsys.readouterr().err
    md = (out / "report.md").read_text()
    assert "| fine_tune | tensorflow | 10 | 2/2 | 0.3500 ± 0.0141 (n=2) | 15 ± 7 (n=2) |" in md
    assert "- 10 images/class: fine_tune 0.3500 vs scratch 0.1100 (+24.0 points)" in md
    assert "fine_tune at 10/class: 30+20" in md and (out / "data_efficiency.png").stat().st_size > 10_000
    # a run stores its options; --report-only then describes what ran, not today's defaults
    args = cli.build_parser().parse_args(["data_efficiency", "--output", str(out), "--sizes", "10,100,1000",
                                          "--seeds", "2", "--backends", "tensorflow"])
    cli.stored_options(args)
    assert cli.main(["data_efficiency", "--output", str(out), "--report-only"]) == 0
    md = (out / "report.md").read_text()
    assert "- 1000 images/class: fine_tune 0.7100 vs scratch 0.7000 (+1.0 points)" in md and "seeds [0, 1]" in md


@pytest.mark.parametrize("args, words", [
    (["--sizes", "10,x"], "--sizes '10,x'"), (["--sizes", "0"], "integers >= 1"),
    (["--recipes", "fine_tune,full"], "choose from feature_extraction, fine_tune, scratch"),
    (["--min-steps", "0"], "--min-steps 0"), (["--backends", "mxnet"], "backends 'mxnet'"),
    (["--seeds", "0"], "seeds '0'"), (["--image-size", "16"], "--image-size 16"),
])
def test_bad_input_exits_2_before_running(tmp_path, capsys, args, words):
    out = tmp_path / "s"
    assert cli.main(["data_efficiency", "--output", str(out), *args]) == 2
    assert words in capsys.readouterr().err
    assert not (out / "trials").exists()


def test_parse_helpers():
    assert de.parse_int_list("10, 50,250", "--sizes") == [10, 50, 250]
    assert de.parse_recipes("scratch, fine_tune") == ["scratch", "fine_tune"]
    with pytest.raises(SweepError):
        de.parse_recipes("")


def test_study_refuses_options_it_sets_and_bad_options_before_running(tmp_path, capsys):
    out = tmp_path / "s"
    assert cli.main(["data_efficiency", "--output", str(out), "--", "--data.max_train_per_class", "50"]) == 2
    assert "the study sets data.max_train_per_class per trial" in capsys.readouterr().err
    assert cli.main(["data_efficiency", "--output", str(out), "--sizes", "5", "--", "--recipe.nmae", "x"]) == 2
    assert "are invalid" in capsys.readouterr().err and not (out / "trials").exists()


def test_protocol_cut_is_named_at_the_top_of_the_report(tmp_path, capsys):
    out = tmp_path / "study"
    os.makedirs(out / "trials")
    subproc.write_json(str(out / "trials" / store.ROWS_FILE), {"format": store.ROWS_FORMAT, "rows": _rows(),
                                                               "sweep": {"name": "trials"}})
    assert cli.main(["data_efficiency", "--output", str(out), "--sizes", "10,100,1000", "--report-only", "--",
                     "--trainer.max_epochs", "1"]) == 0
    lines = (out / "report.md").read_text().splitlines()
    assert lines[0].startswith("# Study: data efficiency") and lines[2].startswith(
        "**Protocol cut short:** `--trainer.max_epochs` was given")
