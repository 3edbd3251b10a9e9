"""kbench.studies.backbone_table: options, points, table cells and verdict from hand-made rows."""

from __future__ import annotations

import argparse

import pytest

from kbench.studies import backbone_table as bt
from kbench.studies.common import StudyContext
from kbench.sweep.report import group
from kbench.sweep.spec import SweepError

HED = "/w/vgg16_hed.weights.h5"


def row(backbone, top1, infer, train, params, wall=10.0, weights="none", size=32, status="completed", seed=0):
    """A row as kbench.compare.run.make_row + kbench.sweep.trial write it (only the fields read)."""
    phase = {"train_images_per_s": train, "trainable_params": params // 100, "non_trainable_params": params - params // 100}
    return {"trial": f"tensorflow-{backbone}-seed{seed}", "backend": "tensorflow", "seed": seed, "status": status,
            "wall_time_s": wall, "point": {"model.backbone": backbone, "model.image_size": size, "model.weights": weights,
                                           "recipe.name": "feature_extraction"},
            "results": {"test_accuracy": top1, "inference_images_per_s": infer, "phases": [phase]}
            if status == "completed" else None}


ROWS = [row("vgg16", 0.60, 500.0, 9000.0, 14_980_000, 12.0, HED), row("vgg16", 0.64, 520.0, 9100.0, 14_980_000, 14.0, HED, seed=1),
        row("mobilenetv2", 0.30, 800.0, None, 2_920_000, 20.0), row("xception", 0.25, 100.0, 3000.0, 30_380_000, 50.0, size=71)]


def groups(rows=ROWS):
    return group(rows, ["point.model.backbone", "point.model.image_size", "point.model.weights", "backend"], bt.METRICS)


def test_table_cells_and_imagenet_columns():
    cells = bt.table_rows(groups())
    assert cells[0] == ["vgg16", "tensorflow", "32", "vgg16_hed.weights.h5", "2/2", "0.6200 ± 0.0283 (n=2)", "510",
                        "9050", "14.98", "13", "528", "0.713", "0.901", "138.4", "16"]
    assert cells[1][3] == bt.RANDOM_INIT and cells[1][7] == "-"  # no timed head steps
    assert cells[2][2] == "71" and cells[2][-5:] == ["88", "0.790", "0.945", "22.9", "81"]
    assert len(bt.HEADER) == len(cells[0])


def test_verdict_names_fastest_most_accurate_smallest_and_random_init():
    lines = bt.verdict(groups())
    assert lines == [
        "- most accurate: vgg16 (tensorflow, vgg16_hed.weights.h5), test top-1 0.6200 (least: xception (tensorflow, "
        "random init (no weights file)), 0.2500)",
        "- fastest at inference: mobilenetv2 (tensorflow, random init (no weights file)), 800 images/s (8.0x the "
        "slowest, xception (tensorflow, random init (no weights file)), 100 images/s)",
        "- smallest: mobilenetv2 (tensorflow, random init (no weights file)), 2.92 M parameters (10.4x fewer than "
        "xception (tensorflow, random init (no weights file)), 30.38 M)",
        "- mobilenetv2, xception ran from random init (no weights file): their accuracy is a random-feature baseline "
        "and does not measure transfer; compare accuracy only among rows with a weights file",
    ]


def test_verdict_all_random_and_no_inference_timed():
    rows = [row("vgg19", 0.1, None, None, 20_000_000), row("resnet50", 0.2, None, None, 24_000_000)]
    lines = bt.verdict(groups(rows))
    assert lines[1] == "- inference images/s was not measured (no timed batches); raise data.max_test_per_class"
    assert lines[-1].startswith("- every backbone ran from random init (no weights file)")


def test_points_raise_xception_to_its_minimum_and_mark_weights(tmp_path):
    pts = bt.points(["vgg16", "xception"], {"vgg16": HED}, 50, 32)
    assert [(p["model.backbone"], p["model.image_size"], p["model.weights"]) for p in pts] == \
        [("vgg16", 32, HED), ("xception", 71, "none")]
    assert all(p["recipe.name"] == "feature_extraction" and p["data.max_train_per_class"] == 50 for p in pts)
    assert bt.points(["xception"], {}, 5, 96)[0]["model.image_size"] == 96


def test_parse_weights_and_backbones(tmp_path):
    f = tmp_path / "v.weights.h5"
    f.write_bytes(b"x")
    assert bt.parse_weights([f"VGG16={f}"], ["vgg16"]) == {"vgg16": str(f)}
    assert bt.parse_weights([f"vgg16={f}", "all=imagenet"], ["vgg16", "xception"]) == {"vgg16": str(f),
                                                                                      "xception": "imagenet"}
    assert bt.weights_label("imagenet") == "imagenet"
    for bad, msg in [(["vgg16"], "write NAME=PATH"), ([f"vgg19={f}"], "not one of the backbones compared"),
                     ([f"vgg16={f}", f"vgg16={f}"], "a second file"), (["vgg16=/nope.weights.h5"], "does not exist")]:
        with pytest.raises(SweepError, match=msg):
            bt.parse_weights(bad, ["vgg16"])
    assert bt.parse_backbones("vgg16, Xception") == ["vgg16", "xception"]
    with pytest.raises(SweepError, match="--backbones 'vgg16,efficientnetb0'"):
        bt.parse_backbones("vgg16,efficientnetb0")


@pytest.mark.parametrize("over", [["--model.weights", HED], [f"--model.weights={HED}"], ["--model.backbone", "vgg19"]])
def test_global_per_backbone_options_are_refused(over):
    with pytest.raises(SweepError, match="would apply to every backbone"):
        bt.check_overrides(["--data.root", "d", *over])
    bt.check_overrides(["--data.root", "d", "--trainer.max_epochs", "1"])


class FakeContext(StudyContext):
    def sweep(self, stage, points, **kw):
        self.swept = (stage, points)
        return {"rows": ROWS}


def test_run_writes_report_and_plot(tmp_path):
    ctx = FakeContext(str(tmp_path), ["tensorflow"], [0, 1], report_only=True)
    args = argparse.Namespace(size=20, backbones="vgg16,mobilenetv2,xception", weights=[])
    path = bt.run(ctx, args)
    text = open(path).read()
    assert (tmp_path / "backbone_table.png").stat().st_size > 1000
    assert "xception 71 px" in text and "## Verdict" in text and "| vgg16 | tensorflow | 32 |" in text
    assert ctx.swept[0] == "trials" and len(ctx.swept[1]) == 3
    with pytest.raises(SweepError, match="--size 0"):
        bt.run(ctx, argparse.Namespace(size=0, backbones="vgg16", weights=[]))
