"""kbench.studies.task_similarity: the file-level split, the symlink trees, options, verdict and report."""

from __future__ import annotations

import argparse
import os

import pytest

from kbench.studies import task_similarity as ts
from kbench.studies.common import StudyContext
from kbench.sweep.report import group
from kbench.sweep.spec import SweepError


def fake_cifar(root, n_train=6, n_test=2):
    for c in (*ts.CLASSES_A, *ts.CLASSES_B):
        for split, n in (("train", n_train), ("test", n_test)):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                (root / split / c / f"{c}_{i:03d}.jpg").write_bytes(b"jpg")
    return root


def listing(tree, split, cls):
    return sorted(os.listdir(os.path.join(tree, split, cls)))


def test_split_files_is_disjoint_complete_and_seeded():
    files = [f"f{i}.jpg" for i in range(10)]
    a, b = ts.split_files(files, 3)
    assert len(a) == 3 and len(b) == 7 and not set(a) & set(b) and sorted(a + b) == files
    assert ts.split_files(list(reversed(files)), 3) == (a, b)  # input order does not matter
    assert ts.split_files(files, 3, seed=1) != (a, b)
    for n in (0, 10):
        with pytest.raises(SweepError, match=f"--pretrain-size {n}: a class folder has 10 training images"):
            ts.split_files(files, n)


def test_build_trees_links_disjoint_and_idempotent(tmp_path):
    root = fake_cifar(tmp_path / "cifar")
    out = tmp_path / "study"
    trees = ts.build_trees(str(root), str(out), 2)
    assert trees == {"pretrain": str(out / "data" / "pretrain-n2"), "similar": str(out / "data" / "similar-n2"),
                     "different": str(out / "data" / "different")}
    for c in ts.CLASSES_A:
        pre, sim = listing(trees["pretrain"], "train", c), listing(trees["similar"], "train", c)
        assert len(pre) == 2 and len(sim) == 4 and not set(pre) & set(sim)
        assert sorted(pre + sim) == sorted(os.listdir(root / "train" / c))
        assert listing(trees["pretrain"], "test", c) == listing(trees["similar"], "test", c) == [f"{c}_000.jpg", f"{c}_001.jpg"]
        link = os.path.join(trees["similar"], "train", c, sim[0])
        assert os.path.islink(link) and os.readlink(link) == str(root / "train" / c / sim[0])
    assert sorted(os.listdir(os.path.join(trees["different"], "train"))) == sorted(ts.CLASSES_B)
    assert sorted(os.listdir(os.path.join(trees["pretrain"], "train"))) == sorted(ts.CLASSES_A)
    assert len(listing(trees["different"], "train", "dog")) == 6
    # a rerun reuses the trees as they are (same links, no temporary folder left)
    stamp = os.lstat(os.path.join(trees["pretrain"], "train", "deer", pre[0])).st_mtime_ns
    assert ts.build_trees(str(root), str(out), 2) == trees
    assert os.lstat(os.path.join(trees["pretrain"], "train", "deer", pre[0])).st_mtime_ns == stamp
    assert sorted(os.listdir(out / "data")) == ["different", "pretrain-n2", "similar-n2"]
    # another pretraining size builds new trees beside them
    assert ts.build_trees(str(root), str(out), 3)["similar"].endswith("similar-n3")
    assert len(listing(str(out / "data" / "similar-n3"), "train", "deer")) == 3


def test_an_interrupted_build_is_redone(tmp_path):
    root = fake_cifar(tmp_path / "cifar")
    (tmp_path / "study" / "data" / "different.tmp" / "train").mkdir(parents=True)
    trees = ts.build_trees(str(root), str(tmp_path / "study"), 1)
    assert len(listing(trees["different"], "train", "ship")) == 6
    assert not (tmp_path / "study" / "data" / "different.tmp").exists()


def test_data_root_is_read_and_removed_from_the_overrides(tmp_path):
    root = fake_cifar(tmp_path / "cifar")
    assert ts.data_root(["--data.root", str(root), "--trainer.max_epochs", "1"]) == (str(root), ["--trainer.max_epochs", "1"])
    assert ts.data_root([f"--data.root={root}"]) == (str(root), [])
    with pytest.raises(SweepError, match="needs the CIFAR-10 image folder"):
        ts.data_root(["--trainer.max_epochs", "1"])
    (root / "test" / "truck").rename(root / "test" / "lorry")
    with pytest.raises(SweepError, match="no folder test/truck"):
        ts.data_root(["--data.root", str(root)])


def args(**kw):
    base = {"size": 20, "pretrain_size": 100, "pretrain_epochs": 5, "pretrain_backbone": "vgg16", "pretrain_lr": 1e-4,
            "recipes": "feature_extraction,fine_tune,scratch"}
    return argparse.Namespace(**{**base, **kw})


def test_bad_options_are_refused():
    with pytest.raises(SweepError, match="--pretrain-epochs 0"):
        ts.check_options(args(pretrain_epochs=0), [])
    with pytest.raises(SweepError, match="--pretrain-lr 0"):
        ts.check_options(args(pretrain_lr=0.0), [])
    with pytest.raises(SweepError, match="--pretrain-backbone 'vgg17'"):
        ts.check_options(args(pretrain_backbone="vgg17"), [])
    with pytest.raises(SweepError, match="--model.weights after --: the study sets it"):
        ts.check_options(args(), ["--model.weights=/w.weights.h5"])
    ts.check_options(args(), ["--data.root", "x"])


def test_transfer_points_and_targets():
    trees = {"similar": "/o/data/similar-n500", "different": "/o/data/different"}
    pts = ts.transfer_points(trees, "/o/export/p.weights.h5", ["feature_extraction", "scratch"], 50)
    assert [(ts.target_of(p["data.root"]), p["recipe.name"]) for p in pts] == [
        ("similar", "feature_extraction"), ("similar", "scratch"), ("different", "feature_extraction"),
        ("different", "scratch")]
    assert {p["model.weights"] for p in pts} == {"/o/export/p.weights.h5"}
    assert {p["data.max_train_per_class"] for p in pts} == {50}
    assert ts.target_of("/o/data/pretrain-n500") is None and ts.target_of(None) is None


def trow(target, recipe, acc, seed=0, status="completed"):
    root = {"similar": "/o/data/similar-n500", "different": "/o/data/different"}[target]
    return {"trial": f"tensorflow-{target}-{recipe}-seed{seed}", "backend": "tensorflow", "seed": seed, "status": status,
            "wall_time_s": 30.0, "point": {"recipe.name": recipe, "data.root": root},
            "results": {"test_accuracy": acc} if status == "completed" else None}


ROWS = [trow("similar", "feature_extraction", 0.70), trow("similar", "feature_extraction", 0.72, 1),
        trow("similar", "fine_tune", 0.72), trow("similar", "fine_tune", 0.74, 1),
        trow("similar", "scratch", 0.40), trow("similar", "scratch", 0.42, 1),
        trow("different", "feature_extraction", 0.50), trow("different", "feature_extraction", 0.52, 1),
        trow("different", "fine_tune", 0.60), trow("different", "fine_tune", 0.62, 1),
        trow("different", "scratch", 0.45), trow("different", "scratch", 0.0, 1, status="failed")]


def pooled(rows=ROWS):
    rows = [{**r, "target": ts.target_of(r["point"]["data.root"])} for r in rows]
    return group(rows, ["target", "point.recipe.name"], {"top1": lambda r: r["results"]["test_accuracy"]})


def test_verdict_gaps_and_direction():
    assert ts.verdict(pooled(), 0.55) == [
        "- pretraining run (scratch on A): test top-1 0.5500 on A's test images (chance 0.20)",
        "- similar: fine_tune 0.7300 vs feature_extraction 0.7100: +2.0 points (scratch 0.4100)",
        "- different: fine_tune 0.6100 vs feature_extraction 0.5100: +10.0 points (scratch 0.4500)",
        "- fine-tune minus feature extraction is +8.0 points larger on the different task than on the similar one: "
        "the claim's direction holds",
        "- similar task: feature extraction is 2.0 points behind fine-tuning, more than one std (1.4): not enough here",
    ]


def test_verdict_claim_fails_and_pretraining_at_chance():
    rows = [trow("similar", "feature_extraction", 0.5), trow("similar", "fine_tune", 0.6),
            trow("different", "feature_extraction", 0.5), trow("different", "fine_tune", 0.55)]
    lines = ts.verdict(pooled(rows), 0.2)
    assert lines[0].endswith("(chance 0.20): at or near chance, so the exported backbone carries little to transfer")
    assert lines[3] == ("- fine-tune minus feature extraction is -5.0 points larger on the different task than on the "
                        "similar one: the claim's direction does not hold here")
    assert ts.verdict([], None) == ["- the pretraining run did not complete: no transfer was measured"]


class FakeContext(StudyContext):
    def sweep(self, stage, points, **kw):
        self.swept = getattr(self, "swept", []) + [(stage, points, kw)]
        pre = {"trial": "tensorflow-scratch-seed0-abc", "backend": "tensorflow", "status": "completed",
               "run_dir": "runs/x/vgg16-scratch-1", "point": {}, "results": {"test_accuracy": 0.55}}
        return {"rows": [pre] if stage == "pretrain" else ROWS}


def test_run_report_only_writes_report_and_plot(tmp_path):
    ctx = FakeContext(str(tmp_path), ["tensorflow"], [0, 1], report_only=True)
    text = open(ts.run(ctx, args())).read()
    assert (tmp_path / "task_similarity.png").stat().st_size > 1000
    assert [s for s, _, _ in ctx.swept] == ["pretrain", "transfer"]
    assert ctx.swept[0][2]["seeds"] == [0] and ctx.swept[0][2]["backends"] == ["tensorflow"]
    assert "| different | scratch | tensorflow | 1/2 | 0.4500 (n=1) | 30 (n=1) |" in text
    assert "test top-1 on A's test images: 0.5500" in text and "claim's direction holds" in text
    assert not (tmp_path / "export").exists()  # report-only exports nothing
