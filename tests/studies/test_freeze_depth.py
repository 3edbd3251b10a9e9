"""kbench.studies.freeze_depth on hand-made rows (golden values; no Ray, no subprocess)."""

from __future__ import annotations

import pytest

from kbench.studies import cli
from kbench.studies import freeze_depth as fd
from kbench.studies.common import RECIPE_POINTS
from kbench.sweep import store
from kbench.sweep.spec import Sweep, SweepError

# depth -> (last phase's trainable params, its cache cut, test top-1 per seed, total_time_s per seed)
DEPTHS = {0: (268_810, "block5_pool", (0.50, 0.52), (5.0, 7.0)),
          1: (7_348_234, "block4_pool", (0.60, 0.62), (10.0, 12.0)),
          3: (13_083_402, "block2_pool", (0.63, 0.61), (20.0, 22.0)),
          5: (14_983_498, None, (0.55, 0.57), (40.0, 44.0))}


def make_row(depth: int, seed: int, cut: str | None = "default", backend: str = "tensorflow") -> dict:
    params, default_cut, accs, totals = DEPTHS[depth]
    head = {"phase": "feature_extraction", "trainable_params": 268_810, "cache_cut": "block5_pool"}
    last = {"phase": "fine_tune", "trainable_params": params, "cache_cut": default_cut if cut == "default" else cut}
    results = {"test_accuracy": accs[seed], "total_time_s": totals[seed], "phases": [head] if depth == 0 else
               [head, last]}
    return {"trial": f"{backend}-d{depth}-seed{seed}", "point": fd.depth_point(depth), "backend": backend,
            "seed": seed, "status": "completed", "results": results, "metrics": [], "wall_time_s": totals[seed] + 10}


def rows() -> list[dict]:
    return [make_row(d, s) for d in DEPTHS for s in (0, 1)]


def test_parse_blocks():
    assert fd.parse_blocks("0,1,all") == [0, 1, 5]
    assert fd.parse_blocks(" 3, 1,1 ") == [1, 3]
    assert fd.parse_blocks(fd.DEFAULT_BLOCKS) == [0, 1, 2, 3, 5]


@pytest.mark.parametrize("text", ["6", "-1", "x", "", "1,,top"])
def test_parse_blocks_refuses(text):
    with pytest.raises(SweepError, match="--blocks"):
        fd.parse_blocks(text)


def test_depth_points_and_back():
    assert fd.depth_point(0) == RECIPE_POINTS["feature_extraction"]
    assert fd.depth_point(2) == {**RECIPE_POINTS["fine_tune"], "recipe.unfreeze": "block4"}
    assert fd.depth_point(5)["recipe.unfreeze"] == "all"
    assert [fd.depth_of(p["recipe.name"], p.get("recipe.unfreeze")) for p in map(fd.depth_point, fd.UNFREEZE)] == \
        list(fd.UNFREEZE)
    assert fd.depth_of("fine_tune", "block5_conv3") is None


@pytest.mark.parametrize("depth,cut,expected", [
    (0, "block5_pool", "yes"), (1, "block4_pool", "yes"), (1, "block5_pool", "no"), (3, "block2_pool", "yes"),
    (3, "block3_conv3", "no"), (2, None, "no cache"), (5, None, "n/a"), (5, "block1_pool", "no")])
def test_cut_check(depth, cut, expected):
    assert fd.cut_check(depth, cut) == expected


def test_table_cells():
    table = fd.table(fd.summarize(rows()))
    assert [r[0] for r in table] == ["0", "1", "3", "5"]
    assert table[0] == ["0", "feature_extraction", "tensorflow", "2/2", "0.5100 ± 0.0141 (n=2)", "-",
                        "6.0 ± 1.4 (n=2)", "16.0 ± 1.4 (n=2)", "268,810", "block5_pool (yes)"]
    assert table[1][1] == "block5" and table[1][5] == "+10.0" and table[1][8:] == ["7,348,234", "block4_pool (yes)"]
    assert table[3][5:] == ["+5.0", "42.0 ± 2.8 (n=2)", "52.0 ± 2.8 (n=2)", "14,983,498", "none (n/a)"]


def test_verdict():
    assert fd.verdict(fd.summarize(rows(), ())) == [
        "- best: 3 block(s) unfrozen (block3), test top-1 0.6200 ± 0.0141 (n=2)",
        "- 1 block(s) (block5): +10.0 points over feature extraction (0.6100 vs 0.5100); total_time_s 11.0 s vs "
        "6.0 s (1.8x), trainable parameters 7,348,234 vs 268,810 (27.3x)",
        "- 3 block(s) (block3): +11.0 points over feature extraction (0.6200 vs 0.5100); total_time_s 21.0 s vs "
        "6.0 s (3.5x), trainable parameters 13,083,402 vs 268,810 (48.7x)",
        "- 5 block(s) (all): +5.0 points over feature extraction (0.5600 vs 0.5100); total_time_s 42.0 s vs "
        "6.0 s (7.0x), trainable parameters 14,983,498 vs 268,810 (55.7x)",
        "- the fewest blocks unfrozen within one std (0.0141) of the best: 1",
        "- frozen-prefix cache cut below the first trainable block in every completed run"]


def test_verdict_flags_a_cache_above_the_trained_blocks_and_empty_input():
    bad = [r for r in rows() if r["trial"] != "tensorflow-d3-seed1"] + [make_row(3, 1, cut="block4_pool")]
    assert fd.verdict(fd.summarize(bad, ()))[-1] == \
        "- frozen-prefix cache NOT below the first trainable block (or absent) at depth 3: block4_pool"
    assert fd.verdict([]) == ["- no completed trial"]


def test_report_only_from_a_rows_file(tmp_path):
    folder = tmp_path / "study" / "trials"
    folder.mkdir(parents=True)
    sweep = Sweep("c.yaml", "", [{**fd.depth_point(d), fd.SIZE_KEY: 10} for d in DEPTHS], [0, 1], ["tensorflow"])
    depth = {t.id: fd.depth_of(t.point["recipe.name"], t.point.get("recipe.unfreeze")) for t in sweep.trials()}
    store.write_rows(str(folder), sweep, {t.id: {**make_row(depth[t.id], t.seed), "trial": t.id, "point": t.point}
                                          for t in sweep.trials()})
    argv = ["freeze_depth", "--output", str(folder.parent), "--report-only", "--backends", "tensorflow"]
    assert cli.main(argv) == 0
    report = (folder.parent / "report.md").read_text()
    assert "| 3 | block3 | tensorflow | 2/2 | 0.6200 ± 0.0141 (n=2) | +11.0 |" in report
    assert "- best: 3 block(s) unfrozen (block3)" in report
    assert (folder.parent / "freeze_depth.png").stat().st_size > 1000


def test_run_refuses_bad_blocks(tmp_path):
    assert cli.main(["freeze_depth", "--output", str(tmp_path), "--blocks", "7", "--report-only",
                     "--backends", "tensorflow"]) == 2
