"""Config: defaults < file < command line, rejection of unknown keys and wrong types."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import typing
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


# ------------------------------------------------------------------ one source per name list
def test_config_choices_are_the_registries():
    """Every key with a closed set of values takes it from its registry, and no other key
    of the config spells out a Literal of its own (jit_compile's auto aside)."""
    from kbench import LR_SCALINGS, PRECISIONS, STRATEGIES
    from kbench.config import CHOICES, SECTIONS
    from kbench.data.sources import INTERPOLATIONS, SOURCES
    from kbench.data.weights import CLASS_WEIGHT_MODES
    from kbench.models.registry import BACKBONES, HEADS, PREPROCESS_MODES
    from kbench.recipes import CACHE_MODES, OPTIMIZERS, PRESETS
    from kbench.recipes.policy import BN_MODES, SCHEDULES
    from kbench.trainer.best import MONITORS
    from kbench.trainer.tracking import LOGGERS

    registries = {"model.backbone": tuple(BACKBONES), "data.source": tuple(SOURCES), "data.interpolation": tuple(INTERPOLATIONS),
                  "model.head": tuple(HEADS), "model.preprocess": ("auto", *PREPROCESS_MODES), "recipe.name": tuple(PRESETS),
                  "recipe.optimizer": tuple(OPTIMIZERS), "recipe.cache": CACHE_MODES, "trainer.precision": PRECISIONS,
                  "trainer.monitor": MONITORS, "recipe.schedule": SCHEDULES, "recipe.bn": BN_MODES,
                  "trainer.loggers": LOGGERS, "trainer.profile": ("trace",), "trainer.strategy": STRATEGIES,
                  "trainer.lr_scaling": LR_SCALINGS}

    def literal(tp):
        if typing.get_origin(tp) is typing.Literal:
            return typing.get_args(tp)
        return next((lit for a in typing.get_args(tp) if (lit := literal(a))), None)

    assert {k: literal(v) for k, v in CHOICES.items()} == registries
    with_literals = {f"{sec}.{name}" for sec, cls in SECTIONS.items()
                     for name, tp in typing.get_type_hints(cls).items() if literal(tp)}
    assert with_literals == set(registries) | {"trainer.jit_compile", "data.class_weight"}
    assert literal(typing.get_type_hints(SECTIONS["trainer"])["jit_compile"]) == ("auto",)
    assert literal(typing.get_type_hints(SECTIONS["data"])["class_weight"]) == CLASS_WEIGHT_MODES  # or a mapping


def test_help_shows_every_description_and_choice():
    from kbench.config import CHOICES, SECTIONS

    r = subprocess.run([sys.executable, "-m", "kbench.run", "--help"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    entries: dict[str, str] = {}  # option -> its help entry (option line and continuation lines, joined)
    for line in r.stdout.split("\n\n", 1)[1].splitlines():
        if line.startswith("  --"):
            key = line.split()[0]
            entries[key] = line
        elif line.startswith("    ") and entries:
            entries[key] += " " + line.strip()
    for sec, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            entry = entries[f"--{sec}.{f.name}"]
            words = [w for w in entry.split("(type:")[0].split()[1:]  # less the option, its aliases and metavars
                     if not (w.startswith(("--", "{")) or w.rstrip(",") == f.name.upper())]
            assert "(type:" in entry and len(words) >= 2, entry
    for key, tp in CHOICES.items():
        lit = next((a for a in typing.get_args(tp) if typing.get_origin(a) is typing.Literal), tp)  # of a Union
        assert all(f"'{v}'" in "".join(entries[f"--{key}"].split()) for v in typing.get_args(lit)), key
    assert "--recipe.optimizer {adam,adamw,sgd,rmsprop}" in r.stdout


def test_config_imports_no_backend():
    """The config (and a recipe check with phases) imports no keras: tool parents parse configs.
    Nor do the recipe names the config lists."""
    code = ("import sys; from kbench.config import parse; "
            "from kbench.recipes import PRESETS, OPTIMIZERS, CACHE_MODES, PhaseConfig, build_recipe; "
            "cfg = parse(['--recipe.phases', '[{name: a, epochs: 1, learning_rate: 0.1, train: auto}]']); "
            "assert cfg.recipe.name == 'custom', cfg; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('keras', 'tensorflow', 'jax', 'torch')); "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------ recipe.phases
THREE = [{"name": "head", "epochs": 3, "learning_rate": 1e-3, "train": "none"},
         {"name": "top", "epochs": 2, "learning_rate": 1e-4, "train": "from:block5"},
         {"name": "all", "epochs": 1, "learning_rate": 1e-5, "train": "all"}]


def test_phases_from_yaml_and_command_line_are_the_same(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("recipe:\n  phases:\n" + "".join(
        f"    - {{name: {p['name']}, epochs: {p['epochs']}, learning_rate: {p['learning_rate']}, train: "
        f"\"{p['train']}\"}}\n" for p in THREE))
    from_file = parse(["--config", str(f)]).recipe
    from_cli = parse(["--recipe.phases", json.dumps(THREE)]).recipe
    assert from_file == from_cli
    optional = dict.fromkeys(["base_inference", "schedule", "warmup_steps", "warmup_epochs", "final_lr_fraction",
                              "layer_decay", "lr_mult", "bn"])
    assert from_file.phases == [{**p, **optional} for p in THREE]  # written out in full
    assert from_file.name == "custom"  # a phase list without a label of its own


def test_shipped_three_phase_config():
    from kbench.recipes import Phase, build_recipe

    cfg = parse(["--config", str(ROOT / "configs" / "three_phase.yaml")])
    recipe = build_recipe(cfg.recipe, "block5")
    assert recipe.name == "three_phase" and recipe.pretrained
    assert recipe.phases == [Phase("head", 3, 1e-3, "none", True), Phase("top", 2, 1e-4, "from:block5", True),
                             Phase("all", 1, 1e-5, "all", False)]


def test_phases_config_round_trips_through_config_yaml(tmp_path):
    """config.yaml of a phase-list run parses back to the same config (what --resume compares)."""
    cfg = parse(["--recipe.phases", json.dumps(THREE), "--recipe.name", "mine", "--recipe.optimizer", "sgd"])
    f = tmp_path / "config.yaml"
    f.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    again = parse(["--config", str(f)])
    assert again.to_dict() == cfg.to_dict() and again.recipe.name == "mine"


@pytest.mark.parametrize("extra,match", [
    (["--recipe.epochs", "4"], "recipe.epochs=4 would have no effect; drop it and set epochs"),
    (["--recipe.fine_tune_learning_rate", "1e-5", "--recipe.unfreeze", "block4"],
     "recipe.fine_tune_learning_rate=1e-05, recipe.unfreeze='block4' would have no effect; drop them"),
    (["--recipe.name", "full"], "recipe.name 'full' is a preset, but recipe.phases replaces"),
    (["--recipe.name", "my recipe"], "recipe.name 'my recipe' is not a usable label"),
])
def test_phases_refuse_preset_keys_and_preset_names(capsys, extra, match):
    with pytest.raises(SystemExit) as e:
        parse(["--recipe.phases", json.dumps(THREE), *extra])
    assert e.value.code == 2 and match in capsys.readouterr().err


@pytest.mark.parametrize("change,match", [
    ({"trian": "none"}, "phase 2 of recipe.phases: unknown key 'trian'. Did you mean 'train'? Valid keys: name, "
                        "epochs, learning_rate, train, base_inference, schedule, warmup_steps, warmup_epochs, "
                        "final_lr_fraction, layer_decay, lr_mult, bn"),
    ({"train": None}, "phase 2 of recipe.phases: missing key train; every phase needs name, epochs, learning_rate"),
    ({"epochs": -1}, "phase 2 of recipe.phases ('top'): epochs must be an integer >= 0 (0 skips the phase), got -1"),
    ({"epochs": 1.5}, "phase 2 of recipe.phases ('top'): epochs must be an integer >= 0"),
    ({"learning_rate": 0}, "phase 2 of recipe.phases ('top'): learning_rate must be a number > 0 (e.g. 1e-4) or auto (the LR finder's suggestion), got 0"),
    ({"learning_rate": "fast"}, "learning_rate must be a number > 0 (e.g. 1e-4) or auto (the LR finder's suggestion), got 'fast'"),
    ({"train": "form:block5"}, "phase 2 of recipe.phases ('top'): train 'form:block5' is not valid; use none, all, "
                               "auto, blocks:<K>, from:<layer-name prefix>, last:<N> or a layer-name prefix"),
    ({"train": "blocks:x"}, "train 'blocks:x': K must be a positive integer, e.g. blocks:2"),
    ({"layer_decay": -0.5}, "phase 2 of recipe.phases ('top'): layer_decay must be a number in (0, 1]"),
    ({"schedule": "cosin"}, "phase 2 of recipe.phases ('top'): schedule 'cosin' is not known; choose one of: "
                            "constant, cosine, step, one_cycle"),
    ({"warmup_epochs": 3}, "warmup_epochs=3 is not shorter than the phase (2 epoch(s)); use less than 2"),
    ({"warmup_steps": 5, "warmup_epochs": 1}, "give warmup_steps (5) or warmup_epochs (1), not both"),
    ({"final_lr_fraction": 2}, "final_lr_fraction must be a number in [0, 1]"),
    ({"lr_mult": {"block5": -1}}, "lr_mult['block5'] must be a number >= 0"),
    ({"lr_mult": [0.1]}, "lr_mult must be a mapping of layer-name prefix to multiplier"),
    ({"bn": "trian"}, "bn 'trian' is not valid; choose frozen"),
    ({"bn": "train", "base_inference": True}, "bn 'train' contradicts base_inference True"),
    ({"train": "last:0"}, "train 'last:0': N must be a positive integer, e.g. last:4"),
    ({"base_inference": "maybe"}, "base_inference must be true, false or null (= true unless train is all), "
                                  "got 'maybe'"),
    ({"name": "head"}, "phase 2 of recipe.phases: name 'head' is already phase 1's; give every phase its own name"),
    ({"name": "a b"}, "name 'a b' is not a usable phase name"),
])
def test_bad_phase_is_one_message_naming_the_phase(capsys, change, match):
    phases = [dict(p) for p in THREE]
    phases[1].update(change)
    phases[1] = {k: v for k, v in phases[1].items() if v is not None}
    with pytest.raises(SystemExit) as e:
        parse(["--recipe.phases", json.dumps(phases)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and match in err and "Traceback" not in err and len(err.splitlines()) == 2


@pytest.mark.parametrize("value,match", [
    ("[]", "recipe.phases must be a non-empty list of phases"),
    ("[1, 2]", "recipe.phases must be a list of phases such as [{name: head"),
    ("{name: head}", "recipe.phases must be a list of phases such as [{name: head"),
])
def test_phases_of_the_wrong_shape(capsys, value, match):
    with pytest.raises(SystemExit) as e:
        parse(["--recipe.phases", value])
    assert e.value.code == 2 and match in capsys.readouterr().err


@pytest.mark.parametrize("extra,match", [
    (["--recipe.epochs", "-1"], "recipe.epochs must be an integer >= 0, got -1"),
    (["--recipe.fine_tune_learning_rate", "0"], "recipe.fine_tune_learning_rate must be a number > 0, got 0.0"),
    (["--recipe.unfreeze", "last:x"], "recipe.unfreeze 'last:x': N must be a positive integer"),
])
def test_bad_preset_values_name_the_key(capsys, extra, match):
    with pytest.raises(SystemExit) as e:
        parse(extra)
    assert e.value.code == 2 and match in capsys.readouterr().err


@pytest.mark.parametrize("args,match", [
    (["--recipe.accumulate_steps", "0"], "recipe.accumulate_steps must be an integer >= 1 (1 = no accumulation), got 0"),
    (["--recipe.ema", "1.0"], "recipe.ema must be a number in (0, 1), e.g. 0.999 (the EMA momentum), or null"),
    (["--recipe.ema", "0"], "recipe.ema must be a number in (0, 1)"),
    (["--recipe.clip_norm", "-1"], "recipe.clip_norm must be a number > 0"),
    (["--recipe.swa_epochs", "-2"], "recipe.swa_epochs must be an integer >= 0"),
    (["--recipe.layer_decay", "-0.7"], "recipe: layer_decay must be a number in (0, 1]"),
    (["--recipe.warmup_epochs", "9"], "phase 'feature_extraction': warmup_epochs=9.0 is not shorter than the phase (6 epoch(s))"),
    (["--recipe.lr_find_steps", "2"], "recipe.lr_find_steps must be an integer >= 5, got 2"),
])
def test_bad_toolkit_values_are_one_message_before_any_data(capsys, args, match):
    """Issue 12's bad values: refused by the parser (no backend, no data read), one message."""
    with pytest.raises(SystemExit) as e:
        parse(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and match in err and "Traceback" not in err and len(err.splitlines()) == 2, err
