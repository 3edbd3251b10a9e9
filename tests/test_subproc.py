"""kbench.subproc (child environment, logged child with time limit, error line, atomic JSON)
and the tool parents it serves: ``python -m kbench.bench|compare|parity`` import no keras and
work in a venv holding a single backend (the other backends, and keras itself in the parent,
made not installed by a ``sitecustomize`` on ``PYTHONPATH``, inherited by the workers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from marks import slow_on

from kbench import BACKENDS, subproc
from kbench.host import is_installed

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")


# --------------------------------------------------------------------------- error line
TRACEBACK = """\
[bench] torch mobilenetv3small 32px: measuring inference
Traceback (most recent call last):
  File "x.py", line 1, in <module>
    raise RuntimeError("boom")
RuntimeError: boom
W0000 some trailing warning
"""


@pytest.mark.parametrize("text, expected", [
    (TRACEBACK, "RuntimeError: boom"),
    ("loading config\nerror: unknown key 'trainer.max_epohcs'\n", "error: unknown key 'trainer.max_epohcs'"),
    ("kbench.parity: unknown model nope; valid: vgg16\n", "kbench.parity: unknown model nope; valid: vgg16"),
    ("x\njaxlib.xla_extension.XlaRuntimeError: INTERNAL: oops\ndone\n", "jaxlib.xla_extension.XlaRuntimeError: "
                                                                         "INTERNAL: oops"),
    ("KeyboardInterrupt\n", "KeyboardInterrupt"),
    ("ValueErrors are not errors\nthe last line\n", "the last line"),
    ("  \n\n", "no output"),
])
def test_error_line(text, expected):
    assert subproc.error_line(text) == expected


def test_error_line_is_cut_to_the_limit():
    assert subproc.error_line("ValueError: " + "x" * 900) == ("ValueError: " + "x" * 900)[:500]
    assert len(subproc.error_line("y" * 900, limit=400)) == 400


def test_log_tail(tmp_path):
    log = tmp_path / "a.log"
    log.write_text("".join(f"line {i}\n\n" for i in range(30)))
    assert subproc.log_tail(str(log), 3) == "line 27\nline 28\nline 29"
    assert subproc.log_tail(str(tmp_path / "missing.log")) == ""


# --------------------------------------------------------------------------- environment, JSON
def test_backend_env(monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    env = subproc.backend_env("torch", {"EXTRA": "1", "KERAS_BACKEND": "tensorflow"})
    assert env["KERAS_BACKEND"] == "torch" and env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert env["PYTHONUNBUFFERED"] == "1" and env["EXTRA"] == "1" and env["TF_CPP_MIN_LOG_LEVEL"] == "0"
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL")
    assert subproc.backend_env("jax")["TF_CPP_MIN_LOG_LEVEL"] == "2"


def test_json_round_trip_and_unreadable_files(tmp_path):
    path = str(tmp_path / "a.json")
    subproc.write_json(path, {"b": [1, 2.5, None], "p": Path("/x")}, indent=2)
    assert subproc.read_json(path) == {"b": [1, 2.5, None], "p": "/x"}
    assert open(path).read() == json.dumps({"b": [1, 2.5, None], "p": "/x"}, indent=2)
    assert os.listdir(tmp_path) == ["a.json"]  # no temporary file left
    (tmp_path / "cut.json").write_text('{"rows": [1, ')
    assert subproc.read_json(str(tmp_path / "cut.json")) is None
    assert subproc.read_json(str(tmp_path / "missing.json")) is None


# --------------------------------------------------------------------------- run_logged
def _py(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_run_logged_writes_the_log_and_the_exit_status(tmp_path):
    log, seen = tmp_path / "c.log", []
    done = subproc.run_logged(_py("import sys; print('one'); print('two', file=sys.stderr); sys.exit(3)"), str(log),
                              header="$ child\n", on_line=seen.append)
    assert done.returncode == 3 and not done.timed_out and done.error is None and done.wall_s > 0
    assert log.read_text().splitlines()[0] == "$ child"
    assert sorted(log.read_text().splitlines()[1:]) == ["one", "two"] and sorted(seen) == ["one", "two"]


def test_run_logged_kills_after_the_timeout(tmp_path):
    log = tmp_path / "c.log"
    done = subproc.run_logged(_py("import time; print('started', flush=True); time.sleep(60)"), str(log),
                              timeout=1, timeout_note="\ntimed out\n", new_session=True)
    assert done.timed_out and done.returncode == -9
    assert log.read_text().split() == ["started", "timed", "out"]


def test_run_logged_terminates_then_waits_with_a_grace(tmp_path):
    child = """
        import signal, sys, time
        def bye(*_):
            print('got SIGTERM', flush=True)
            sys.exit(5)
        signal.signal(signal.SIGTERM, bye)
        print('ready', flush=True)
        time.sleep(60)
    """
    log = tmp_path / "c.log"
    done = subproc.run_logged(_py(child), str(log), timeout=2, grace_s=30)
    assert done.timed_out and done.returncode == 5
    assert log.read_text().splitlines() == ["ready", "got SIGTERM"]


def test_run_logged_reports_a_child_that_cannot_start(tmp_path):
    done = subproc.run_logged(["/nonexistent/kbench-child"], str(tmp_path / "c.log"))
    assert done.returncode is None and "No such file" in done.error


# --------------------------------------------------------------------------- tool parents without keras
TOOL_MODULES = ["kbench.bench.cli", "kbench.bench.measure", "kbench.bench.report", "kbench.compare.cli",
                "kbench.compare.env", "kbench.compare.report", "kbench.compare.run", "kbench.parity.cli",
                "kbench.parity.worker", "kbench.parity.report", "kbench.host", "kbench.subproc",
                "kbench.models.registry", "kbench.models.heads", "kbench.config", "kbench.recipes.policy",
                "kbench.sweep.cli", "kbench.sweep.engine", "kbench.sweep.trial", "kbench.studies.cli",
                "kbench.studies.data_efficiency", "kbench.studies.time_to_accuracy", "kbench.studies.freeze_depth",
                "kbench.studies.backbone_table", "kbench.studies.task_similarity"]
HEAVY = ("keras", "tensorflow", "jax", "torch")


def test_tool_parents_import_no_keras():
    code = (f"import importlib, sys\nfor m in {TOOL_MODULES!r}: importlib.import_module(m)\n"
            f"print(sorted(m for m in sys.modules if m.partition('.')[0] in {HEAVY!r}))")
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "[]"


# A venv holding only ``KBENCH_ONLY_BACKEND``: the other backends are not found, and keras is not
# found in a process without KERAS_BACKEND (a tool parent), so a parent that imports keras fails.
SITECUSTOMIZE = '''\
import os
import sys
from importlib.machinery import PathFinder

ONLY = os.environ["KBENCH_ONLY_BACKEND"]
HIDDEN = {"jax", "jaxlib", "tensorflow", "torch"} - {ONLY} - ({"jaxlib"} if ONLY == "jax" else set())


class NotInstalled:
    """Finds nothing for the hidden modules (so ``import`` and ``find_spec`` say not installed)."""

    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in HIDDEN or (top == "keras" and "KERAS_BACKEND" not in os.environ):
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, attr):
        return getattr(self.finder, attr)


sys.meta_path[:] = [NotInstalled(f) if f is PathFinder else f for f in sys.meta_path]
'''


@pytest.fixture(scope="module")
def only_backend(tmp_path_factory):
    """``(run, backend)``: ``run(*args)`` runs ``python -m ARGS`` as a tool parent (no
    KERAS_BACKEND) in a process where only this session's backend is installed."""
    backend = os.environ.get("KERAS_BACKEND", "torch")
    if backend not in BACKENDS or not is_installed(backend):
        pytest.skip(f"backend {backend!r} is not installed")
    site = tmp_path_factory.mktemp("only-backend")
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env.update(KBENCH_ONLY_BACKEND=backend, KBENCH_CACHE_DIR=str(site / "cache"),
               PYTHONPATH=os.pathsep.join([str(site), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))

    def run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env, cwd=site,
                              timeout=timeout)

    check = subprocess.run([sys.executable, "-c", "import keras"], capture_output=True, text=True, env=env)
    assert "No module named 'keras'" in check.stderr  # the blocker is active: a parent cannot import keras
    return run, backend


def test_parents_check_arguments_without_keras(only_backend, tmp_path):
    run, backend = only_backend
    for tool in ("kbench.bench", "kbench.compare", "kbench.parity"):
        r = run(tool, "--help")
        assert r.returncode == 0 and "usage: python -m " + tool in r.stdout, r.stderr[-2000:]
    cases = [
        (("kbench.bench", "--backends", f"{backend},mxnet"), "unknown backend 'mxnet'"),
        (("kbench.bench", "--models", "vgg16", "--image-size", "16"), "input size 16 is below the minimum of 32 px"),
        (("kbench.compare", "--config", SMOKE, "--backends", backend, "--", "--trainer.max_epohcs", "1"),
         "trainer.max_epohcs"),
        (("kbench.parity", "--models", "resnet51"), "unknown model resnet51"),
        (("kbench.parity", "--precision", "mixed_float16"), "unknown precision 'mixed_float16'"),
    ]
    for args, needle in cases:
        r = run(*args)
        text = " ".join((r.stdout + r.stderr).split())
        assert r.returncode == 2 and needle in text and "Traceback" not in text, (args, text[-2000:])


@slow_on("jax")  # CI time: 30-33 s on JAX; in CI on tensorflow and torch
def test_bench_runs_with_a_single_backend_installed(only_backend, tmp_path):
    """The issue's command (there with torch), --output added, in a venv with only this backend."""
    run, backend = only_backend
    r = run("kbench.bench", "--backends", backend, "--models", "mobilenetv3small", "--steps", "2", "--warmup", "1",
            "--repeats", "1", "--output", str(tmp_path / "out"))
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    data = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert {(row["backend"], row["mode"], row["status"]) for row in data["rows"]} == {
        (backend, "train", "ok"), (backend, "inference", "ok")}
    assert all(row["images_per_s"] > 0 and row["measured_steps"] == 2 for row in data["rows"])
    assert data["backends"][backend]["versions"][backend]


@slow_on("jax")  # CI time: 30-33 s on JAX; in CI on tensorflow and torch
def test_parity_runs_with_a_single_backend_installed(only_backend, tmp_path):
    """The installed backend runs; another one is reported as not installed, and its pair fails."""
    run, backend = only_backend
    other = next(b for b in BACKENDS if b != backend)
    r = run("kbench.parity", "--models", "mobilenetv3small", "--backends", f"{backend},{other}", "--batch-size", "2",
            "--steps", "1", "--output", str(tmp_path / "out"))
    report = json.loads((tmp_path / "out" / "parity.json").read_text())
    runs = report["models"][0]["backends"]
    assert r.returncode == 1, (r.stdout + r.stderr)[-3000:]
    assert runs[other]["error"] == f"backend {other!r} is not installed (no module {other!r})"
    assert len(runs[backend]["fingerprint"]) == 64 and len(runs[backend]["step_losses"]) == 1
    (pair,) = report["models"][0]["pairs"]
    assert pair["verdict"] == "fail" and pair["error"].startswith(f"{other} failed: backend {other!r} is not")


@pytest.mark.slow
def test_compare_runs_with_a_single_backend_installed(only_backend, cifar_dir, tmp_path):
    run, backend = only_backend
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(f"data:\n  source: folder\n  root: {cifar_dir}\n  batch_size: 16\nmodel:\n  backbone: "
                   "mobilenetv3small\n  weights: none\n  image_size: 32\nrecipe:\n  name: feature_extraction\n"
                   "  epochs: 1\ntrainer:\n  precision: float32\n  limit_train_batches: 2\n  limit_val_batches: 1\n"
                   "  limit_test_batches: 1\n  inference_batches: 1\n  enable_checkpointing: false\n")
    r = run("kbench.compare", "--config", str(cfg), "--backends", backend, "--seeds", "1", "--output",
            str(tmp_path / "cmp"), "--no-compute")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    (row,) = json.loads((tmp_path / "cmp" / "rows.json").read_text())["rows"]
    assert row["status"] == "completed" and row["results"]["backend"] == backend
    assert (tmp_path / "cmp" / "compare.md").read_text().count(f"| {backend} | 1/1 |") == 1
