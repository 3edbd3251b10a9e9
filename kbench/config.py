"""Typed configuration: four sections (data, model, recipe, trainer), parsed with
jsonargparse the way LightningCLI does.

Precedence (as in nanoGPT): dataclass defaults < ``--config FILE`` (YAML, may be
given several times) < ``--section.key VALUE`` on the command line. Unknown keys
and wrong types are rejected with the key's name and its allowed values.
The defaults are the reference scenario: VGG16 at 64x64 on CIFAR-10, ``fine_tune``
(``configs/default.yaml`` holds the same values).

The allowed values of the keys with a closed set (backbones, sources, heads, presets,
optimizers, monitors, precisions, ...) come from their registries (:data:`CHOICES`), and
:func:`parse` checks the recipe (a preset or ``recipe.phases``) as ``kbench.run`` will use
it, all without importing keras: the tools' parent processes parse configs too.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Literal, Optional, Union

from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser

from kbench import LR_SCALINGS, PRECISIONS, PROFILE_MODES, STRATEGIES, KbenchError
from kbench.config_errors import error_message
from kbench.data.augment_policy import IMAGE_OPS, TARGET_OPS
from kbench.data.sources import INTERPOLATIONS, SOURCES
from kbench.data.weights import ClassWeight
from kbench.models.registry import BACKBONES, HEADS, PREPROCESS_MODES
from kbench.recipes.optimizers import OPTIMIZERS
from kbench.recipes.phases import CACHE_MODES, build_recipe, phase_configs
from kbench.recipes.policy import BN_MODES, PHASE_POLICY, RECIPE_POLICY, SCHEDULES
from kbench.recipes.presets import PRESETS
from kbench.subproc import arg_value
from kbench.trainer.best import MONITORS
from kbench.trainer.tracking import LOGGERS

# The allowed values of each key, derived from its registry (keras-free modules), so that
# adding a backbone, source, head, preset, optimizer or monitor touches only its registry.
BackboneName = Literal[tuple(BACKBONES)]
SourceName = Literal[tuple(SOURCES)]
InterpolationName = Literal[tuple(INTERPOLATIONS)]
HeadName = Literal[tuple(HEADS)]
PreprocessName = Literal[("auto", *PREPROCESS_MODES)]
RecipeName = Union[Literal[tuple(PRESETS)], str]  # a preset; with recipe.phases a label of your own
OptimizerName = Literal[tuple(OPTIMIZERS)]
CacheMode = Literal[tuple(CACHE_MODES)]
ScheduleName = Literal[tuple(SCHEDULES)]
BnMode = Literal[tuple(BN_MODES)]
PrecisionName = Literal[tuple(PRECISIONS)]
MonitorName = Literal[tuple(MONITORS)]
LoggerName = Literal[tuple(LOGGERS)]
ProfileMode = Union[bool, Literal[tuple(m for m in PROFILE_MODES if isinstance(m, str))]]
StrategyName = Literal[tuple(STRATEGIES)]
LrScaling = Literal[tuple(LR_SCALINGS)]
# Which config key takes its values from which registry (tests/test_config.py checks them).
CHOICES = {"model.backbone": BackboneName, "data.source": SourceName, "data.interpolation": InterpolationName,
           "model.head": HeadName, "model.preprocess": PreprocessName, "recipe.name": RecipeName,
           "recipe.optimizer": OptimizerName, "recipe.cache": CacheMode,
           "recipe.schedule": ScheduleName, "recipe.bn": BnMode, "trainer.precision": PrecisionName,
           "trainer.monitor": MonitorName, "trainer.loggers": LoggerName,
           "trainer.profile": ProfileMode, "trainer.strategy": StrategyName, "trainer.lr_scaling": LrScaling}


@dataclass
class DataConfig:
    """Data set and batching.

    Args:
        source: cifar10 / cifar100 (local copy first, then keras.datasets), an image folder, or an .npz file.
        root: local data: CIFAR tarball, its folder or an image folder; the folder
            or .npz file for the folder / npz sources. Also read from KBENCH_DATA_DIR.
        val_split: fraction of every training class held out for validation (stratified, seeded).
        test_split: for a single-tree folder, fraction of every class held out for testing.
        batch_size: images per batch.
        max_train_per_class: stratified subset of the training set (null = all).
        max_test_per_class: stratified subset of the test set (null = all).
        interpolation: OpenCV resize interpolation.
        augment: random horizontal flips while training (alone: two-view frozen-prefix cache).
        strict: undecodable image files are an error instead of a warning.
        class_weight: null, balanced or {class: weight}, for the training loss (kbench.data.weights).
        crop_padding: random crop after zero padding by this many pixels (0 = off; kbench.data.augment_policy).
        translate: random shift by up to this fraction of the side (0 = off).
        randaugment: RandAugment ops per image (0 = off).
        randaugment_magnitude: RandAugment strength in (0, 1] (keras factor).
    """

    source: SourceName = "cifar10"
    root: Optional[str] = None
    val_split: float = 0.1
    test_split: float = 0.2
    batch_size: int = 64
    max_train_per_class: Optional[int] = None
    max_test_per_class: Optional[int] = None
    interpolation: InterpolationName = "linear"
    augment: bool = False
    strict: bool = False
    class_weight: ClassWeight = None
    crop_padding: int = IMAGE_OPS["crop_padding"]
    translate: float = IMAGE_OPS["translate"]
    randaugment: int = IMAGE_OPS["randaugment"]
    randaugment_magnitude: float = IMAGE_OPS["randaugment_magnitude"]


@dataclass
class ModelConfig:
    """Backbone and head.

    Args:
        backbone: keras.applications backbone from the registry (kbench.models.BACKBONES).
        weights: imagenet, none, or a path to a Keras weights file of the headless backbone.
        image_size: square input side in pixels (null = the backbone's default size).
        head: gap (pool, dropout, dense), flatten (flatten, dropout, dense), mlp (flatten, batch norm,
            dense hidden ReLU, dropout, dense) or article (the seed tutorial's head).
        head_dropout: dropout rate before the last Dense of the gap / flatten / mlp heads.
        head_hidden: units of the hidden Dense layer of the mlp head.
        preprocess: auto (the backbone's own), caffe, tf, torch, scale01 (x/255) or none.
    """

    backbone: BackboneName = "vgg16"
    weights: str = "imagenet"
    image_size: Optional[int] = 64
    head: HeadName = "mlp"
    head_dropout: float = 0.5
    head_hidden: int = 512
    preprocess: PreprocessName = "auto"


@dataclass
class RecipeConfig:
    """The recipe: a named preset, or your own list of phases (``phases``).

    With ``phases`` (not null) the list replaces the preset's phases: ``name`` becomes the
    recipe's label in results.json and the default run name (left at its default it is
    ``custom``; another preset's name is refused), ``epochs``, ``learning_rate``,
    ``fine_tune_*``, ``unfreeze`` and ``unfreeze_blocks`` must stay at their defaults (each phase has its own),
    and the model starts from ``model.weights``.

    Args:
        name: a preset (kbench.recipes.PRESETS), or with phases a label of your own.
        epochs: epochs of the preset's first (or only) phase.
        learning_rate: learning rate of the preset's first phase.
        fine_tune_epochs: fine_tune: epochs with the top of the backbone unfrozen; gradual_unfreeze: epochs per stage.
        fine_tune_learning_rate: learning rate of fine_tune's phase 2 and of each gradual_unfreeze stage
            (null = learning_rate / 10).
        unfreeze: fine_tune only: auto (the registry's top block), a layer-name prefix (block5), last:N or all.
        unfreeze_blocks: gradual_unfreeze only: stages train the top 1, 2, ... unfreeze_blocks blocks (>= 1).
        phases: your own phases, run in order, e.g. [{name: head, epochs: 3, learning_rate: 1e-3, train: none},
            {name: all, epochs: 1, learning_rate: 1e-5, train: all}]. Keys: name, epochs, learning_rate, train
            (none, all, auto, from:<layer-name prefix>, last:<N> or a prefix), base_inference (optional: the
            backbone in inference mode, BatchNormalization frozen; null = true unless train is all).
            null = the preset's phases.
            Optional phase keys: schedule, warmup_steps, warmup_epochs, final_lr_fraction, layer_decay,
            lr_mult, bn (null = the recipe key of the same name); learning_rate may be auto (LR finder).
        optimizer: the optimizer (sgd uses momentum; adamw with weight_decay 0 uses 0.004).
        weight_decay: weight decay (0 = off).
        momentum: SGD momentum.
        cache: auto = train on cached frozen-prefix features where that is exact; off = never.
        schedule: learning-rate schedule of every phase that sets none: constant, cosine (to
            final_lr_fraction), step (x0.1 at 50% and 75% of the phase) or one_cycle (fastai).
        warmup_steps: linear warm-up over this many optimizer updates at the start of each phase.
        warmup_epochs: warm-up in epochs instead (fractions allowed; not both).
        final_lr_fraction: cosine / one_cycle end at this fraction of the phase's learning rate.
        layer_decay: layer-wise learning rates (timm): the top backbone block trains at lr * decay, the next
            block down at lr * decay^2, ...; the head at lr (null = off).
        lr_mult: learning-rate multipliers by layer-name prefix, e.g. {block4: 0.1, block5: 0.3} (fastai slice).
        bn: BatchNormalization of trainable blocks: frozen (inference mode, statistics fixed) or train
            (null = frozen unless a phase trains all layers).
        accumulate_steps: average gradients over this many batches per optimizer update (effective batch
            size = batch_size x accumulate_steps; schedules count updates).
        clip_norm: clip gradients to this global norm (null = off).
        ema: keep an exponential moving average of the trained weights with this momentum (e.g. 0.999);
            validation, testing and the saved model use the averaged weights (null = off).
        swa_epochs: stochastic weight averaging over the last N epochs of the last phase (0 = off).
        lr_find_steps: steps of the learning-rate sweep behind learning_rate: auto.
        mixup: MixUp alpha (0 = off; see kbench.data.augment_policy).
        cutmix: CutMix factor in [0, 1] (0 = off; with mixup, one of the two per batch).
        label_smoothing: label smoothing of the loss, in [0, 1).
    """

    name: RecipeName = "fine_tune"
    epochs: int = 6
    learning_rate: float = 1e-3
    fine_tune_epochs: int = 3
    fine_tune_learning_rate: Optional[float] = None
    unfreeze: str = "auto"
    unfreeze_blocks: int = 3
    phases: Optional[list[dict]] = None
    optimizer: OptimizerName = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    cache: CacheMode = "auto"
    schedule: ScheduleName = PHASE_POLICY["schedule"]
    warmup_steps: int = PHASE_POLICY["warmup_steps"]
    warmup_epochs: float = PHASE_POLICY["warmup_epochs"]
    final_lr_fraction: float = PHASE_POLICY["final_lr_fraction"]
    layer_decay: Optional[float] = PHASE_POLICY["layer_decay"]
    lr_mult: Optional[dict[str, float]] = PHASE_POLICY["lr_mult"]
    bn: Optional[BnMode] = PHASE_POLICY["bn"]
    accumulate_steps: int = RECIPE_POLICY["accumulate_steps"]
    clip_norm: Optional[float] = RECIPE_POLICY["clip_norm"]
    ema: Optional[float] = RECIPE_POLICY["ema"]
    swa_epochs: int = RECIPE_POLICY["swa_epochs"]
    lr_find_steps: int = RECIPE_POLICY["lr_find_steps"]
    mixup: float = TARGET_OPS["mixup"]
    cutmix: float = TARGET_OPS["cutmix"]
    label_smoothing: float = TARGET_OPS["label_smoothing"]


@dataclass
class TrainerConfig:
    """Trainer options (Lightning names).

    Args:
        max_epochs: cap on total epochs over all phases (null = the recipe's sum).
        max_steps: cap on total optimizer steps (-1 = none).
        limit_train_batches: int = batches per epoch, float = fraction.
        limit_val_batches: int = batches per validation, float = fraction.
        limit_test_batches: int = test batches, float = fraction.
        fast_dev_run: one batch per split and one epoch per phase, as a smoke test.
        precision: auto (mixed_bfloat16 on a GPU or CPU with native bfloat16, else float32), float32,
            mixed_bfloat16 or mixed_float16.
        jit_compile: auto, true or false (passed to keras Model.compile).
        seed: global seed (weights init, split, shuffling, dropout).
        deterministic: ask the backend for deterministic kernels.
        default_root_dir: parent of the run folders.
        name: run name (null = <backbone>-<recipe>); run folder is <default_root_dir>/<name>-<timestamp>.
        enable_progress_bar: rich progress bars, and progress while an image folder is decoded.
        inference_batches: batches timed end to end for inference images/s (0 = skip).
        enable_checkpointing: write checkpoints/epoch-NNNN after every epoch (needed for --resume).
        monitor: the metric that picks the best epoch, whose weights are tested and saved.
        save_top_k: best epoch checkpoints kept besides the last one.
        early_stopping_patience: end a phase after this many epochs without a better monitor value (null = never).
        checkpoint_every_n_steps: also checkpoint every N optimizer steps inside an epoch (null = only after each
            epoch and at Ctrl-C); --resume from one continues exactly at that step.
        loggers: experiment trackers (csv is always on; see kbench.trainer.tracking).
        profile: true = where the time goes in results.json; trace = also the backend's trace (kbench.trainer.profile).
        strategy: auto, single or data_parallel (kbench.backend.distributed; README "Scaling out").
        devices: device count or list of indices (null = all; PyTorch: one per torchrun process).
        lr_scaling: none = data.batch_size is the global batch; linear = per device, learning rate x replicas.
    """

    max_epochs: Optional[int] = None
    max_steps: int = -1
    limit_train_batches: Union[int, float] = 1.0
    limit_val_batches: Union[int, float] = 1.0
    limit_test_batches: Union[int, float] = 1.0
    fast_dev_run: bool = False
    precision: PrecisionName = "auto"
    jit_compile: Union[bool, Literal["auto"]] = "auto"
    seed: int = 42
    deterministic: bool = True
    default_root_dir: str = "runs"
    name: Optional[str] = None
    enable_progress_bar: bool = True
    inference_batches: int = 10
    enable_checkpointing: bool = True
    monitor: MonitorName = "val_accuracy"
    save_top_k: int = 1
    early_stopping_patience: Optional[int] = None
    checkpoint_every_n_steps: Optional[int] = None
    loggers: list[LoggerName] = field(default_factory=lambda: ["csv"])
    profile: ProfileMode = False
    strategy: StrategyName = "auto"
    devices: Optional[Union[int, list[int]]] = None
    lr_scaling: LrScaling = "none"


@dataclass
class RunConfig:
    """The whole resolved configuration."""

    data: DataConfig
    model: ModelConfig
    recipe: RecipeConfig
    trainer: TrainerConfig
    resume: Optional[str] = None

    def to_dict(self) -> dict:
        """Plain nested dict of the four sections, as written to ``config.yaml``."""
        return {k: v for k, v in asdict(self).items() if k in SECTIONS}


SECTIONS = {"data": DataConfig, "model": ModelConfig, "recipe": RecipeConfig, "trainer": TrainerConfig}


def build_parser(prog: str = "python -m kbench.run") -> ArgumentParser:
    """The command-line parser: ``--config FILE``, ``--print_config`` and ``--<section>.<key>``.

    It raises instead of exiting on bad input; :func:`parse` turns that into one message.
    """
    p = ArgumentParser(prog=prog, exit_on_error=False, allow_abbrev=False, description="kbench: transfer-learning trainer for "
                       "Keras 3 (backend from KERAS_BACKEND: jax, tensorflow or torch).")
    p.add_argument("--config", action=ActionConfigFile, help="YAML config file(s); later ones override earlier")
    p.add_argument("--resume", type=Optional[str], default=None,
                   help="continue a run from its last checkpoint: a run folder (runs/<name>-<time>) or one of its "
                        "checkpoints/<tag> folders; the run's config.yaml is the base config")
    for name, cls in SECTIONS.items():
        p.add_class_arguments(cls, name)
    return p


# Keys that may differ between a run and its --resume (they do not change results).
RESUME_MAY_DIFFER = {"trainer.enable_progress_bar", "trainer.default_root_dir", "trainer.name",
                     "trainer.inference_batches", "trainer.checkpoint_every_n_steps", "trainer.loggers",
                     "trainer.profile", "trainer.strategy", "trainer.devices"}


def _fail(msg: str, prog: str = "python -m kbench.run"):
    print(f"error: {msg}\n(run `{prog} --help` for all options)", file=sys.stderr)
    sys.exit(2)


def resume_run_dir(path: str) -> str:
    """The run folder of ``--resume PATH`` (a run folder or ``<run>/checkpoints/<tag>``).

    Raises:
        SystemExit(2): the folder does not exist or has no ``config.yaml``.
    """
    if not os.path.isdir(path):
        _fail(f"--resume {path!r}: no such folder; pass a run folder such as runs/<name>-<time>")
    run_dir = path
    if os.path.isfile(os.path.join(path, "state.json")):
        run_dir = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    if not os.path.isfile(os.path.join(run_dir, "config.yaml")):
        _fail(f"--resume {path!r}: {run_dir!r} has no config.yaml, so it is not a kbench run folder")
    return run_dir


def _check_same_config(cfg: "RunConfig", run_dir: str) -> None:
    import yaml

    with open(os.path.join(run_dir, "config.yaml")) as f:
        saved = yaml.safe_load(f) or {}
    now = cfg.to_dict()
    diffs = [f"{sec}.{k}: {saved.get(sec, {}).get(k)!r} in the run, {v!r} now"
             for sec, vals in now.items() for k, v in vals.items()
             if f"{sec}.{k}" not in RESUME_MAY_DIFFER and k in saved.get(sec, {}) and saved[sec][k] != v]
    if diffs:
        _fail(f"--resume {run_dir!r} belongs to another config; these keys differ:\n  " + "\n  ".join(diffs)
              + "\ndrop the --config file or overrides that change them, or start a new run")


def check_recipe(cfg: RunConfig) -> None:
    """Check the recipe section as ``kbench.run`` will use it (no backend needed) and write
    it out in full: every key of each ``recipe.phases`` entry, and ``recipe.name`` set to the
    label a phase list runs under (see :func:`kbench.recipes.build_recipe`).

    Raises:
        SystemExit(2): after one message naming the bad key, phase or value.
    """
    r = cfg.recipe
    try:
        if r.phases is not None:
            r.phases = [asdict(pc) for pc in phase_configs(r.phases)]
        r.name = build_recipe(r, BACKBONES[cfg.model.backbone].unfreeze).name
    except KbenchError as e:
        _fail(str(e))


def parse(argv: list[str] | None = None, prog: str = "python -m kbench.run") -> RunConfig:
    """Parse ``argv`` into a :class:`RunConfig` (``prog``: the command named in ``--help``).

    On bad input (unknown key, wrong type, value not among the allowed ones, a bad
    recipe or phase list, missing config file) prints one message naming the key and
    exits with status 2.
    """
    p = build_parser(prog)
    argv = list(sys.argv[1:] if argv is None else argv)
    resume = arg_value(argv, "--resume")
    run_dir = resume_run_dir(resume) if resume else None
    if run_dir:  # the run's own config is the base; explicit overrides are checked below
        argv = ["--config", os.path.join(run_dir, "config.yaml"), *argv]
    try:
        ns = p.parse_args(argv)
    except ArgumentError as e:
        _fail(error_message(e, SECTIONS), p.prog)
    init = p.instantiate(ns)
    cfg = RunConfig(**{k: getattr(init, k) for k in SECTIONS}, resume=resume)
    check_recipe(cfg)
    if run_dir:
        _check_same_config(cfg, run_dir)
    return cfg
