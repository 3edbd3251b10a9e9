"""kbench.sweep through a real local Ray instance (nox session tests-cross-backend, which
has Ray and every backend): a 2 x 2 grid x 2 seeds on TensorFlow and PyTorch whose
driver is killed half way and rerun (finished trials are not run again, no run is left
orphaned), and a sweep with a failing trial (reported, the others complete, retried
on request)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

BACKENDS = ("tensorflow", "torch")
pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray not installed (pip install 'kbench[sweep]')"),
    pytest.mark.skipif(any(importlib.util.find_spec(b) is None for b in BACKENDS),
                       reason="needs TensorFlow and PyTorch in one environment (nox -s tests-cross-backend)"),
]

ROOT = Path(__file__).resolve().parents[2]
TINY = """\
data:
  source: folder
  root: {root}
  max_train_per_class: 8
  max_test_per_class: 4
model:
  backbone: vgg16
  weights: none
  image_size: 32
  head: gap
recipe:
  name: feature_extraction
trainer:
  precision: float32
  limit_train_batches: 3
  limit_val_batches: 1
  limit_test_batches: 2
  inference_batches: 1
  enable_progress_bar: false
"""


def _sweep(cfg: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "kbench.sweep", "--config", str(cfg), "--output", str(out), "--num-cpus", "2",
            *extra]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}


def _kbench_runs(out: Path) -> list[int]:
    """pids of live processes whose command line is a kbench.run of this sweep."""
    pids = []
    for p in os.listdir("/proc"):
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{p}/stat").read_text().split()[2]
        except (OSError, IndexError):
            continue
        if "kbench.run" in cmd and str(out) in cmd and state != "Z":
            pids.append(int(p))
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_grid_on_two_backends_survives_killing_the_driver(cifar_dir, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY.format(root=cifar_dir))
    out = tmp_path / "sweep"
    cmd = _sweep(cfg, out, "--grid", "recipe.epochs=[1,2]", "--grid", "data.batch_size=[8,16]", "--seeds", "2",
                 "--backends", ",".join(BACKENDS))
    driver = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    trials = out / "trials"
    deadline = time.time() + 400
    while time.time() < deadline and len(list(trials.glob("*.json")) if trials.is_dir() else []) < 3:
        assert driver.poll() is None, "the sweep ended before it was killed"
        time.sleep(0.2)
    driver.send_signal(signal.SIGKILL)  # the driver only, as `kill -9 <pid>` would
    driver.wait()
    first = {p.name: json.loads(p.read_text()) for p in trials.glob("*.json")}
    assert 3 <= len(first) < 16
    deadline = time.time() + 30
    while time.time() < deadline and _kbench_runs(out):
        time.sleep(0.5)
    assert _kbench_runs(out) == [], "a kbench.run of the killed sweep is still running"

    again = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"16 trials (4 points x 2 backends x 2 seeds), {16 - len(first)} to run" in again.stdout
    data = json.loads((out / "rows.json").read_text())
    rows = data["rows"]
    assert len(rows) == 16 and all(r["status"] == "completed" for r in rows)
    assert {r["backend"] for r in rows} == set(BACKENDS) and {r["seed"] for r in rows} == {0, 1}
    assert sorted({(r["point"]["recipe.epochs"], r["point"]["data.batch_size"]) for r in rows}) == [
        (1, 8), (1, 16), (2, 8), (2, 16)]
    for name, row in first.items():  # finished before the kill: stored once, not run again
        assert json.loads((trials / name).read_text()) == row
    for r in rows:
        assert r["results"]["backend"] == r["backend"] and r["results"]["seed"] == r["seed"]
        assert r["results"]["batch_size"] == r["point"]["data.batch_size"]
        assert [m["epoch"] for m in r["metrics"]] == list(range(1, r["point"]["recipe.epochs"] + 1))
        assert 0.0 <= r["results"]["test_accuracy"] <= 1.0 and r["attempt"] == 1
        assert r["checkpoints_dropped"] and not (out / r["run_dir"] / "checkpoints").exists()
    md = (out / "sweep.md").read_text()
    assert "| 2 | 16 | torch | 2/2 |" in md


def test_a_failing_trial_is_reported_and_retried_on_request(cifar_dir, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY.format(root=cifar_dir))
    out = tmp_path / "sweep"
    cmd = _sweep(cfg, out, "--grid", "model.image_size=[32,16]", "--backends", "torch")
    first = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]
    rows = json.loads((out / "rows.json").read_text())["rows"]
    ok, bad = rows
    assert ok["status"] == "completed" and ok["point"] == {"model.image_size": 32}
    assert bad["status"] == "failed" and bad["exit_code"] == 2 and bad["attempt"] == 1
    assert "16" in bad["error"] and "vgg16" in bad["error"].lower()
    assert "1/2 trials completed" in first.stdout and f"{bad['trial']}: failed" in first.stdout
    assert f"**{bad['trial']}: failed** (attempt 1)" in (out / "sweep.md").read_text()
    again = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 1 and "0 to run" in again.stdout  # failed trials are kept, not rerun
    retry = subprocess.run([*cmd, "--retry-failed"], env=_env(), capture_output=True, text=True, timeout=600)
    assert retry.returncode == 1 and "1 to run" in retry.stdout
    rows2 = json.loads((out / "rows.json").read_text())["rows"]
    assert rows2[0] == ok and rows2[1]["attempt"] == 2 and rows2[1]["status"] == "failed"
    assert (out / "logs" / f"{bad['trial']}.attempt2.log").is_file()


def test_ctrl_c_stops_running_trials_at_a_checkpoint(cifar_dir, tmp_path):
    """SIGINT to the driver: the running trial gets SIGINT through Ray's cancel (its worker
    blocks SIGINT; the run must not inherit that), checkpoints, and the sweep exits 130
    with the trial stored as interrupted."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY.format(root=cifar_dir))
    out = tmp_path / "sweep"
    cmd = _sweep(cfg, out, "--grid", "recipe.epochs=[200]", "--backends", "torch")
    driver = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.glob("runs/*/*/checkpoints/epoch-*")):
        time.sleep(0.2)
    assert list(out.glob("runs/*/*/checkpoints/epoch-*")), "no checkpoint was written"
    driver.send_signal(signal.SIGINT)
    text, _ = driver.communicate(timeout=90)
    assert driver.returncode == 130, text[-3000:]
    row = json.loads((out / "rows.json").read_text())["rows"][0]
    assert row["status"] == "interrupted" and row["exit_code"] == 130 and "SIGINT" in row["error"]
    assert (out / row["run_dir"] / "checkpoints").is_dir() and _kbench_runs(out) == []
