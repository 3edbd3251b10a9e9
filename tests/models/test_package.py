"""The models package: the head table, kbench's saved layers across the package layout,
keras-free imports; and for the models and data packages both: acyclic imports, and
build_model's / DataModule's keywords = their config sections' fields."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
import zipfile
from dataclasses import fields
from pathlib import Path

import keras
import numpy as np
import pytest

from kbench import KbenchError
from kbench.config import DataConfig, ModelConfig
from kbench.data import DataModule
from kbench.models import HEADS, ClassNames, Preprocess, build_head, build_model, load_saved_model
from kbench.models.registry import CAFFE_MEAN_BGR

ROOT = Path(__file__).resolve().parents[2]
# config.json of a 4x4 model (Preprocess caffe -> pool -> Dense(2) "logits" -> ClassNames cat, dog)
# saved by kbench before the package layout (commit e48d496, layers then in kbench/models.py).
PRE_LAYOUT_CONFIG = Path(__file__).with_name("pre_restructure_config.json")


@pytest.mark.parametrize("section, build, extra", [
    (ModelConfig, build_model, {"num_classes", "class_names"}),
    (DataConfig, DataModule, {"seed", "progress"}),
])
def test_builders_take_their_config_section_as_keywords(section, build, extra):
    """run.py calls build_model(**vars(cfg.model), num_classes=..., class_names=...) and
    DataModule(**vars(cfg.data), seed=..., progress=...)."""
    params = set(inspect.signature(build).parameters)
    config = {f.name for f in fields(section)}
    assert config <= params, f"{section.__name__} fields {build.__name__} does not take: {sorted(config - params)}"
    assert params - config == extra


def test_layers_keep_their_registered_names():
    assert keras.saving.get_registered_name(Preprocess) == "kbench>Preprocess"
    assert keras.saving.get_registered_name(ClassNames) == "kbench>ClassNames"


def test_model_saved_before_the_package_layout_loads(tmp_path):
    """A model.keras whose config names the old module (kbench.models) loads, and computes."""
    old = PRE_LAYOUT_CONFIG.read_text()
    assert old.count('"module": "kbench.models"') == 2 and "kbench>Preprocess" in old and "kbench>ClassNames" in old
    # Weights for it: the same model rebuilt from that config by today's code, with known values.
    model = keras.models.model_from_json(old)
    kernel, bias = np.arange(6, dtype=np.float32).reshape(3, 2) / 10, np.array([1.0, -1.0], np.float32)
    model.get_layer("logits").set_weights([kernel, bias])
    model.save(tmp_path / "today.keras")
    with zipfile.ZipFile(tmp_path / "today.keras") as src, zipfile.ZipFile(tmp_path / "model.keras", "w") as dst:
        for name in src.namelist():
            dst.writestr(name, old if name == "config.json" else src.read(name))

    loaded = load_saved_model(str(tmp_path / "model.keras"))
    assert (loaded.class_names, loaded.preprocess, loaded.image_size, loaded.from_logits) == (
        ["cat", "dog"], "caffe", 4, True)
    x = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype(np.float32)
    features = (x[..., ::-1] - np.array(CAFFE_MEAN_BGR, np.float32)).mean(axis=(1, 2))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded.model(x)), features @ kernel + bias,
                               rtol=1e-5, atol=1e-4)


def test_head_table_order_and_one_name_list():
    import kbench.models.registry

    assert list(HEADS) == ["gap", "flatten", "mlp", "article"]
    assert kbench.models.registry.HEADS is HEADS
    with pytest.raises(KbenchError, match=r"unknown head 'pool'; choose one of: gap, flatten, mlp, article"):
        build_head("pool", 3, 0.5)


@pytest.mark.parametrize("name", ["gap", "flatten", "mlp", "article"])
def test_each_head_builds_float32_outputs_under_mixed_precision(name):
    keras.config.set_dtype_policy("mixed_bfloat16")  # conftest puts float32 back
    np.random.seed(7)
    head = build_head(name, 5, 0.25, hidden=16)
    x = keras.ops.ones((2, 2, 2, 8))
    for layer in head:
        x = layer(x)
    assert tuple(x.shape) == (2, 5) and head[-1].compute_dtype == "float32" == keras.backend.standardize_dtype(x.dtype)
    assert head[0].compute_dtype == "bfloat16"
    by_name = {layer.name: layer for layer in head}
    if name == "article":
        np.testing.assert_allclose(keras.ops.convert_to_numpy(keras.ops.sum(x, axis=-1)), [1, 1], rtol=1e-5)
        assert "head_dropout" not in by_name
    else:  # the dropout seed is the first draw from NumPy's global generator
        assert by_name["head_dropout"].rate == 0.25
        assert by_name["head_dropout"].seed == np.random.RandomState(7).randint(0, 2**31 - 1)
    if name == "mlp":
        assert by_name["head_hidden"].units == 16


def _top_level_imports(path: Path, package: str) -> set[str]:
    """Modules of ``package`` that ``path`` imports at import time (not under TYPE_CHECKING
    or inside functions)."""
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(package + "."):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith(package + ".")}
    return out


@pytest.mark.parametrize("package", ["kbench.models", "kbench.data"])
def test_subpackage_imports_have_no_cycle(package):
    folder = ROOT.joinpath(*package.split("."))
    graph = {f"{package}.{p.stem}": _top_level_imports(p, package) for p in folder.glob("*.py")
             if p.stem != "__init__"}
    assert len(graph) >= 5 and all(set(deps) <= set(graph) for deps in graph.values())
    done: set[str] = set()

    def visit(module, path):
        assert module not in path, f"import cycle: {' -> '.join([*path, module])}"
        if module not in done:
            for dep in graph[module]:
                visit(dep, [*path, module])
            done.add(module)

    for module in graph:
        visit(module, [])


def test_registry_and_heads_import_no_keras_and_saved_not_transfer():
    code = ("import sys, kbench.models.registry, kbench.models.heads, kbench.models\n"
            "assert 'keras' not in sys.modules, 'keras imported'\n"
            "import kbench.models.saved\n"
            "assert 'kbench.models.transfer' not in sys.modules, 'saved imported transfer'\n"
            "print(list(kbench.models.registry.HEADS))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split("\n")[0] == "['gap', 'flatten', 'mlp', 'article']"
