"""Config: defaults < file < command line, rejection of unknown keys and wrong types."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from kbench.config import DataConfig, ModelConfig, RecipeConfig, TrainerConfig, parse

ROOT = Path(__file__).resolve().parents[1]


def test_default_yaml_matches_dataclass_defaults():
    """configs/default.yaml is exactly what `python -m kbench.run` runs with no arguments."""
    with open(ROOT / "configs" / "default.yaml") as f:
        file_cfg = yaml.safe_load(f)
    defaults = {"data": asdict(DataConfig()), "model": asdict(ModelConfig()),
                "recipe": asdict(RecipeConfig()), "trainer": asdict(TrainerConfig())}
    assert file_cfg == defaults


def test_reference_scenario_defaults():
    cfg = parse([])
    assert (cfg.model.backbone, cfg.model.image_size, cfg.data.source, cfg.recipe.name) == (
        "vgg16", 64, "cifar10", "fine_tune")


def test_precedence_defaults_file_cli(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("data: {batch_size: 16}\nrecipe: {epochs: 7, learning_rate: 0.01}\n")
    cfg = parse(["--config", str(f), "--recipe.epochs", "3"])
    assert cfg.data.batch_size == 16          # file beats default 64
    assert cfg.recipe.epochs == 3             # command line beats file
    assert cfg.recipe.learning_rate == 0.01   # file value kept
    assert cfg.model.backbone == "vgg16"      # default kept


@pytest.mark.parametrize("configs", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_shipped_config_parses(configs):
    cfg = parse(["--config", str(ROOT / "configs" / configs)])
    assert cfg.model.backbone in ("vgg16", "mobilenetv3small", "mobilenetv2", "resnet50")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "kbench.run", *args], capture_output=True, text=True, timeout=300)


def test_unknown_key_rejected_with_name():
    r = _cli("--recipe.epochz", "3")
    assert r.returncode == 2
    assert "epochz" in r.stderr and "Traceback" not in r.stderr
    assert "Did you mean 'recipe.epochs'" in r.stderr and "recipe.fine_tune_epochs" in r.stderr
    assert "usage:" not in r.stderr  # one message, not the whole usage block


def test_wrong_type_and_bad_choice_name_the_key_and_choices(tmp_path):
    r = _cli("--data.batch_size", "many")
    assert r.returncode == 2 and "data.batch_size" in r.stderr and "Traceback" not in r.stderr
    r = _cli("--model.backbone", "vgg17")
    assert r.returncode == 2 and "vgg16" in r.stderr and "convnexttiny" in r.stderr
    assert "typing.Literal" not in r.stderr
    f = tmp_path / "bad.yaml"
    f.write_text("recipe: {nme: fine_tune}\n")
    r = _cli("--config", str(f))
    assert r.returncode == 2 and "nme" in r.stderr


def test_print_config_is_resolved_yaml():
    r = _cli("--print_config", "--recipe.epochs", "9")
    assert r.returncode == 0, r.stderr
    out = yaml.safe_load(r.stdout)
    assert out["recipe"]["epochs"] == 9 and out["model"]["backbone"] == "vgg16"


def test_precision_auto_follows_native_bfloat16(monkeypatch):
    from kbench import backend

    monkeypatch.setattr(backend, "gpu_devices", lambda: [])
    monkeypatch.setattr(backend, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    assert backend.resolve_precision("auto") == "mixed_bfloat16"
    monkeypatch.setattr(backend, "cpu_flags", lambda: {"avx2", "avx512f"})
    assert backend.resolve_precision("auto") == "float32"
    assert backend.resolve_precision("mixed_float16") == "mixed_float16"


def test_abbreviated_key_is_refused_not_guessed(capsys):
    with pytest.raises(SystemExit) as e:
        parse(["--trainer.max_epoch", "3"])
    assert e.value.code == 2 and "Did you mean 'trainer.max_epochs'" in capsys.readouterr().err
