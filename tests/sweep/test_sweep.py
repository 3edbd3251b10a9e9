"""kbench.sweep without Ray: grid parsing, trial ids and options, sweep files, the
resume plan, the rows file and report, CLI input errors, and the subprocess options
a trial relies on (working directory, death with its parent, SIGINT on cancel)."""

from __future__ import annotations

import _thread
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from kbench import subproc
from kbench.sweep import cli, report, store
from kbench.sweep.spec import (
    Sweep,
    SweepError,
    Trial,
    combine_points,
    grid_points,
    load_sweep_file,
    parse_backends,
    parse_grid,
    parse_seeds,
)
from kbench.sweep.trial import resumable_run


def test_parse_grid_reads_yaml_values():
    assert parse_grid("recipe.name=[feature_extraction,fine_tune]") == ("recipe.name", ["feature_extraction",
                                                                                      "fine_tune"])
    assert parse_grid("data.max_train_per_class=[10, 50]") == ("data.max_train_per_class", [10, 50])
    assert parse_grid("--recipe.ema=[null,0.999]") == ("recipe.ema", [None, 0.999])
    assert parse_grid("recipe.name=scratch") == ("recipe.name", ["scratch"])


@pytest.mark.parametrize("text, words", [
    ("recipe.name", "expected KEY=[v1,v2"), ("recipe.name=[]", "list of values is empty"),
    ("trainer.seed=[1,2]", "use --seeds"), ("Recipe=[1]", "is not a config key"),
    ("recipe.name=[a", "not valid YAML"), ("recipe.name=a,b", "several values go in brackets"),
])
def test_parse_grid_refuses(text, words):
    with pytest.raises(SweepError, match=words.replace("[", r"\[")):
        parse_grid(text)


def test_grid_points_is_the_product_first_axis_slowest():
    pts = grid_points([("a.x", [1, 2]), ("b.y", ["p", "q", "r"])])
    assert len(pts) == 6 and pts[0] == {"a.x": 1, "b.y": "p"} and pts[3] == {"a.x": 2, "b.y": "p"}
    with pytest.raises(SweepError, match="given twice"):
        grid_points([("a.x", [1]), ("a.x", [2])])
    assert combine_points([("a.x", [1, 2])], [{"m.n": "u"}, {"m.n": "v"}]) == [
        {"m.n": "u", "a.x": 1}, {"m.n": "u", "a.x": 2}, {"m.n": "v", "a.x": 1}, {"m.n": "v", "a.x": 2}]
    assert combine_points([], []) == [{}]


def test_trial_id_and_options():
    t = Trial("jax", 2, {"recipe.name": "fine_tune", "data.max_train_per_class": 10, "recipe.ema": None,
                         "data.augment": True}, "salt")
    assert t.id == "jax-fine_tune-10-null-true-seed2-6043b8fb"
    assert t.overrides() == ["--recipe.name", "fine_tune", "--data.max_train_per_class", "10", "--recipe.ema",
                             "null", "--data.augment", "true"]
    other = Trial("jax", 2, dict(t.point), "other salt")
    assert other.id != t.id and other.id.startswith("jax-fine_tune-10-null-true-seed2-")


def test_sweep_trials_seed_by_seed_and_salt_changes_with_overrides():
    sw = Sweep("c.yaml", "recipe: {}\n", [{"a.x": 1}, {"a.x": 2}], [0, 1], ["jax", "torch"], ["--data.root", "d"])
    ts = sw.trials()
    assert [(t.seed, t.point["a.x"], t.backend) for t in ts[:4]] == [(0, 1, "jax"), (0, 1, "torch"), (0, 2, "jax"),
                                                                    (0, 2, "torch")]
    assert len({t.id for t in ts}) == 8
    sw2 = Sweep("c.yaml", "recipe: {}\n", sw.points, [0, 1], ["jax", "torch"], ["--data.root", "e"])
    assert not {t.id for t in ts} & {t.id for t in sw2.trials()}


def test_seeds_and_backends():
    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("0,5,5") == [0, 5] and parse_seeds([4, 2]) == [4, 2]
    assert parse_seeds(1) == [0]
    for bad in ("0", "x", "-1", ""):
        with pytest.raises(SweepError, match="count >= 1"):
            parse_seeds(bad)
    assert parse_backends("JAX, torch,jax") == ["jax", "torch"]
    with pytest.raises(SweepError, match="comma-separated list of jax, tensorflow, torch"):
        parse_backends("jax,mxnet")


def test_sweep_file(tmp_path):
    (tmp_path / "base.yaml").write_text("recipe:\n  name: fine_tune\n")
    f = tmp_path / "s.yaml"
    f.write_text("config: base.yaml\ngrid:\n  recipe.epochs: [1, 2]\n  data.batch_size: 8\n"
                 "points:\n  - {recipe.name: scratch}\nseeds: 2\nbackends: [torch]\n"
                 "overrides: {data.root: /d, data.augment: true}\n")
    data = load_sweep_file(str(f))
    assert data["config"] == str(tmp_path / "base.yaml")
    assert data["grid"] == [("recipe.epochs", [1, 2]), ("data.batch_size", [8])]
    assert data["overrides"] == ["--data.root", "/d", "--data.augment", "true"]
    args = cli.build_parser().parse_args(["--sweep", str(f), "--grid", "recipe.learning_rate=[0.1]"])
    sw = cli.sweep_from_args(args)
    assert sw.seeds == [0, 1] and sw.backends == ["torch"] and sw.name == "base" and len(sw.points) == 2
    assert sw.points[1] == {"recipe.name": "scratch", "recipe.epochs": 2, "data.batch_size": 8,
                            "recipe.learning_rate": 0.1}
    f.write_text("config: base.yaml\ngird: {}\n")
    with pytest.raises(SweepError, match="unknown key.*gird"):
        load_sweep_file(str(f))


def _row(trial: Trial, status: str, acc: float | None = None, attempt: int = 1, wall: float = 10.0) -> dict:
    return {**store.pending_row(trial), "status": status, "attempt": attempt, "wall_time_s": wall,
            "results": {"test_accuracy": acc} if acc is not None else None,
            "error": None if status == "completed" else "exit code 2: error: boom"}


def test_plan_skips_finished_and_counts_attempts():
    sw = Sweep("c.yaml", "", [{"a.x": 1}, {"a.x": 2}], [0], ["jax"], [])
    t1, t2 = sw.trials()
    assert store.plan(sw.trials(), {}, False) == [(t1, 1), (t2, 1)]
    stored = {t1.id: _row(t1, "completed", 0.5), t2.id: _row(t2, "failed")}
    assert store.plan(sw.trials(), stored, False) == []
    assert store.plan(sw.trials(), stored, True) == [(t2, 2)]
    stored[t2.id] = _row(t2, "interrupted", attempt=2)
    assert store.plan(sw.trials(), stored, False) == [(t2, 3)]


def test_rows_file_and_report(tmp_path):
    sw = Sweep("c.yaml", "", [{"recipe.name": "a"}, {"recipe.name": "b"}], [0, 1], ["jax"], [], "demo")
    ts = sw.trials()  # seed 0: a, b; seed 1: a, b
    rows = [_row(ts[0], "completed", 0.5, wall=10), _row(ts[1], "failed"), _row(ts[2], "completed", 0.7, wall=14)]
    for r in rows:
        store.save_row(str(tmp_path), r)
    stored = store.stored_rows(str(tmp_path))
    assert set(stored) == {ts[0].id, ts[1].id, ts[2].id}
    store.write_rows(str(tmp_path), sw, stored)
    data = store.load_rows(str(tmp_path))
    assert [r["status"] for r in data["rows"]] == ["completed", "failed", "completed", "pending"]
    g = report.group(data["rows"], ["point.recipe.name"], report.SWEEP_METRICS)
    assert g[0]["completed"] == 2 and g[0]["total"] == 2 and g[0]["top1"]["mean"] == pytest.approx(0.6)
    assert g[0]["top1"]["std"] == pytest.approx(0.1414213562) and g[0]["wall"]["mean"] == 12.0
    assert g[1]["completed"] == 0 and g[1]["total"] == 2 and len(g[1]["failed"]) == 1
    md = open(report.write_sweep_report(data, str(tmp_path))).read()
    assert "| a | jax | 2/2 | 0.6000 ± 0.1414 (n=2) | 12.0 ± 2.8 (n=2) |" in md
    assert "| b | jax | 0/2 | - | - |" in md and "1 not run yet" in md
    assert f"**{ts[1].id}: failed** (attempt 1): exit code 2: error: boom" in md
    with pytest.raises(SweepError, match="not a sweep rows file"):
        store.load_rows(str(tmp_path / "nothing"))


def test_cli_bad_input_exits_2_before_any_run(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("recipe:\n  name: feature_extraction\n")
    out = tmp_path / "out"
    assert cli.main(["--grid", "recipe.name=[a]", "--output", str(out)]) == 2
    assert "no config" in capsys.readouterr().err
    assert cli.main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot be read" in capsys.readouterr().err
    assert cli.main(["--config", str(cfg), "--grid", "recipe.name=[fine_tune,no_such_recipe]",
                     "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no_such_recipe" in err and "point {'recipe.name': 'no_such_recipe'} are invalid" in err
    assert cli.main(["--config", str(cfg), "--backends", "jax,nope", "--output", str(out)]) == 2
    assert not out.exists()
    assert cli.main(["--config", str(cfg), "--grid", "recipe.epochs=[1,2]", "--seeds", "2", "--backends", "jax",
                     "--output", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "4 trials (2 points x 1 backends x 2 seeds), 4 to run" in text and "--recipe.epochs 2" in text


def test_resumable_run_finds_the_newest_unfinished_checkpoint(tmp_path):
    def make(name: str, status: str | None, ckpt: bool):
        d = tmp_path / name
        (d / "checkpoints" / "epoch-0001").mkdir(parents=True)
        if ckpt:
            (d / "checkpoints" / "epoch-0001" / "state.json").write_text("{}")
        if status:
            (d / "results.json").write_text(json.dumps({"status": status}))
        time.sleep(0.01)
    assert resumable_run(str(tmp_path)) is None
    make("a-done", "completed", True)
    make("b-killed", None, True)
    make("c-nockpt", None, False)
    assert resumable_run(str(tmp_path)) == str(tmp_path / "b-killed")
    make("d-interrupted", "interrupted", True)
    assert resumable_run(str(tmp_path)) == str(tmp_path / "d-interrupted")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_run_logged_child_dies_with_its_parent_and_runs_in_cwd(tmp_path):
    """A parent that runs a child with die_with_parent is SIGKILLed: the child goes too."""
    parent = ("import sys; from kbench import subproc; subproc.run_logged([sys.executable, '-c', "
              "'import os,time; print(os.getpid(), os.getcwd(), flush=True); time.sleep(120)'], sys.argv[1], "
              "cwd=sys.argv[2], die_with_parent=True, new_session=True)")
    log = tmp_path / "child.log"
    proc = subprocess.Popen([sys.executable, "-c", parent, str(log), str(tmp_path)],
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    deadline = time.time() + 60
    while time.time() < deadline and not (log.exists() and log.read_text().strip()):
        time.sleep(0.1)
    pid, cwd = log.read_text().split()
    assert cwd == str(tmp_path) and _alive(int(pid))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and _alive(int(pid)):
        time.sleep(0.1)
    assert not _alive(int(pid))


def test_run_logged_interrupt_child_sends_sigint(tmp_path):
    """Cancelled while waiting (KeyboardInterrupt in the waiting thread): the child gets
    SIGINT and can finish cleanly within the grace period."""
    code = ("import signal, sys, time\n"
            "signal.signal(signal.SIGINT, lambda *a: (print('got SIGINT', flush=True), sys.exit(7)))\n"
            "print('ready', flush=True)\ntime.sleep(60)\n")
    log = tmp_path / "c.log"

    def interrupt_when_ready():
        deadline = time.time() + 60
        while time.time() < deadline and "ready" not in (log.read_text() if log.exists() else ""):
            time.sleep(0.05)
        _thread.interrupt_main()  # what ray.cancel does to the task's thread: KeyboardInterrupt

    threading.Thread(target=interrupt_when_ready, daemon=True).start()
    with pytest.raises(KeyboardInterrupt) as e:
        subproc.run_logged([sys.executable, "-c", code], str(log), grace_s=20, new_session=True,
                           interrupt_child=True)
    assert e.value.finished.returncode == 7 and "got SIGINT" in log.read_text()


def test_unreachable_address_is_refused_before_ray_starts(tmp_path):
    from kbench.sweep.engine import check_address

    check_address("auto")  # left to Ray
    with pytest.raises(SweepError, match="no Ray cluster answers at '127.0.0.1:1'"):
        check_address("127.0.0.1:1", timeout_s=2)


def test_sweep_file_overrides_as_one_string(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("config: c.yaml\noverrides: --data.root 'my data' --recipe.epochs 2\n")
    assert load_sweep_file(str(f))["overrides"] == ["--data.root", "my data", "--recipe.epochs", "2"]


def test_error_line_completed_from_the_wrapped_log(tmp_path):
    from kbench.sweep.trial import whole_error

    log = tmp_path / "t.log"
    log.write_text("$ cmd\nloading\nerror: not enough disk space in '/x' for checkpoints: 89 MiB free; free some\n"
                   "space or set --trainer.default_root_dir elsewhere\n")
    error = "exit code 2: error: not enough disk space in '/x' for checkpoints: 89 MiB free; free some\n--- last"
    assert whole_error(error, str(log)) == ("exit code 2: error: not enough disk space in '/x' for checkpoints: "
                                            "89 MiB free; free some space or set --trainer.default_root_dir "
                                            "elsewhere\n--- last")
    assert whole_error("other\n--- last", str(log)) == "other\n--- last"


def test_completed_trials_drop_their_checkpoints(tmp_path, capsys):
    from kbench.sweep.trial import drop_checkpoints

    (tmp_path / "runs" / "t" / "r" / "checkpoints" / "epoch-0001").mkdir(parents=True)
    row = {"status": "interrupted", "run_dir": "runs/t/r"}
    drop_checkpoints(row, str(tmp_path))
    assert (tmp_path / "runs/t/r/checkpoints").is_dir() and "checkpoints_dropped" not in row
    row["status"] = "completed"
    drop_checkpoints(row, str(tmp_path))
    assert not (tmp_path / "runs/t/r/checkpoints").exists() and row["checkpoints_dropped"]
    cli.show_row({"trial": "t", "status": "failed", "wall_time_s": 6.8, "log": "logs/t.log",
                  "error": "exit code 2: error: pip install -e '.[jax]'\n--- last lines"}, 1, 2)
    assert "[1/2] t: failed after 6.8 s: exit code 2: error: pip install -e '.[jax]' (log: logs/t.log)" in \
        capsys.readouterr().out


def test_a_trial_past_its_timeout_is_failed_not_resumed_forever(tmp_path):
    """--timeout: the run gets SIGTERM; its row is ``failed`` with the reason (a plain
    rerun keeps it; --retry-failed resumes it), not ``interrupted`` (rerun into the limit)."""
    from kbench.sweep.trial import execute_trial

    trial = Trial(os.environ.get("KERAS_BACKEND", "torch"), 0, {"recipe.epochs": 1}, "s")
    row = execute_trial(trial, str(tmp_path), "data:\n  root: /nonexistent\n", [], timeout_s=0.5)
    assert row["status"] == "failed" and row["error"].startswith("timed out after --timeout 0.5 s")
    assert row["trial"] == trial.id and row["attempt"] == 1 and (tmp_path / "logs" / f"{trial.id}.log").is_file()
