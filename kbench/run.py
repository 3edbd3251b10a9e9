"""``python -m kbench.run``: parse the config, set up the process, build the parts, call the trainer.

Exit status: 0 on success, 2 on a user error (bad config, missing data or
weights, a non-finite loss: one clear message, no traceback), 130 on Ctrl-C
(SIGINT) and 143 on SIGTERM, after a checkpoint and ``results.json`` are written.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Callable

from rich.console import Console
from rich.markup import escape

import kbench
from kbench.config import RunConfig, parse

console = Console() if Console().is_terminal else Console(width=120)


def run(cfg: RunConfig, callbacks: list | None = None) -> dict:
    """Set up the process, build DataModule, TransferModel, Recipe and Trainer from
    ``cfg`` (:func:`build_parts`) and fit (resuming from ``cfg.resume`` when set).

    Args:
        callbacks: extra ``keras.callbacks.Callback`` objects for every phase.

    Returns the results dict (also written to ``results.json``).

    Raises:
        KbenchError: a user error (see the module docstring).
    """
    trainer, dm, model, recipe = build_parts(cfg, callbacks, before_data=lambda _recipe: _check_resume_or_root(cfg))
    if not cfg.resume:
        trainer.make_run_dir()
    results = trainer.fit(model, dm, recipe, config=cfg.to_dict(), ckpt_path=cfg.resume)
    from kbench.backend import distributed

    distributed.finish()  # PyTorch under torchrun: end the process group
    return results


def build_parts(cfg: RunConfig, callbacks: list | None = None, before_data: Callable | None = None) -> tuple:
    """Set up the process and build ``(trainer, datamodule, model, recipe)`` from ``cfg``
    (the data read and split, the model built with the data's classes).

    Order: :func:`~kbench.trainer.setup_process` first (dtype policy, backend
    environment, seeds: they shape every model built after it), then the checks
    that need no data (weights file, recipe, trainer settings, input size, then
    ``before_data(recipe)``, e.g. the run folder), then the data and the model.

    Raises:
        KbenchError: a user error (see the module docstring).
    """
    from kbench.data import DataModule
    from kbench.models import build_model
    from kbench.trainer import setup_process

    setup_process(cfg.trainer.precision, cfg.trainer.seed, cfg.trainer.deterministic, cfg.trainer.strategy,
                  cfg.trainer.devices)
    spec, recipe = _model_spec_and_recipe(cfg)
    trainer = build_trainer(cfg, callbacks)
    trainer.profiler.start()  # trainer.profile: data and model times count too
    chief = distributed_is_chief()  # other processes of a torchrun group print nothing
    dm = DataModule(**vars(cfg.data), seed=cfg.trainer.seed, progress=cfg.trainer.enable_progress_bar and chief)
    # cheap checks first: before any data is read or weights downloaded
    spec.input_size(cfg.model.image_size)
    if before_data:
        before_data(recipe)
    dm.setup()
    trainer.profiler.lap("data_s")
    model = build_model(**vars(cfg.model), num_classes=dm.num_classes, class_names=dm.class_names)
    trainer.profiler.lap("model_s")
    trainer.check_recipe(model, dm, recipe)  # bad layer prefixes, warm-ups: before the run folder
    return trainer, dm, model, recipe


def _model_spec_and_recipe(cfg: RunConfig):
    """The backbone's registry entry and the recipe; refuses a missing weights file
    (even where the recipe ignores weights) and sets ``model.weights`` to ``none``
    for a recipe that trains the architecture only."""
    from kbench.models import check_weights_file, get_spec
    from kbench.recipes import build_recipe

    m = cfg.model
    spec = get_spec(m.backbone)
    if m.weights not in ("imagenet", "none"):
        check_weights_file(m.weights)  # a wrong path is a mistake even where it would be ignored
    recipe = build_recipe(cfg.recipe, spec.unfreeze)
    if not recipe.pretrained and m.weights != "none":
        console.print(f"[yellow]recipe {cfg.recipe.name} trains the architecture only: ignoring "
                      f"model.weights={m.weights!r}")
        m.weights = "none"
    return spec, recipe


def build_trainer(cfg: RunConfig, callbacks: list | None = None):
    """The :class:`~kbench.trainer.Trainer` of ``cfg.trainer`` (its fields are the
    Trainer's parameters by name; run name default ``<backbone>-<recipe name>``),
    with the process set-up left to the caller (:func:`~kbench.trainer.setup_process`).

    Raises:
        KbenchError: a trainer setting out of range.
    """
    from kbench.trainer import Trainer

    name = cfg.trainer.name or f"{cfg.model.backbone}-{cfg.recipe.name}"
    return Trainer(**{**vars(cfg.trainer), "name": name}, callbacks=callbacks,
                   console=console if distributed_is_chief() else Console(quiet=True), process_setup=False)


def distributed_is_chief() -> bool:
    """False in the processes of a data-parallel group other than rank 0 (they print nothing)."""
    from kbench.backend import distributed

    return distributed.current().is_chief


def _check_resume_or_root(cfg: RunConfig) -> None:
    """Before any work: a ``--resume`` checkpoint must be readable (not a newer
    format) and from this backend; a new run's root folder must be writable."""
    if cfg.resume:
        from kbench.trainer.resume import find_resume_point

        find_resume_point(cfg.resume)  # no checkpoint, a newer format or another backend: fail before work
    else:
        check_writable(cfg.trainer.default_root_dir)


def _already_completed(path: str) -> bool:
    """True (after saying so) when ``--resume`` points at a run that already finished."""
    from kbench.config import resume_run_dir

    results = os.path.join(resume_run_dir(path), "results.json")
    try:
        with open(results) as f:
            done = json.load(f)
    except (OSError, ValueError):
        return False
    if done.get("status") != "completed":
        return False
    console.print(f"run {os.path.dirname(results)!r} already completed (test top-1 "
                  f"{done.get('test_accuracy', float('nan')):.4f}); nothing to resume, nothing changed")
    return True


def check_writable(root: str) -> None:
    """Refuse a run root that cannot be created or written, before any work starts.

    Raises:
        KbenchError: names the folder and the flag to change.
    """
    probe = os.path.abspath(root)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not (os.path.isdir(probe) and os.access(probe, os.W_OK | os.X_OK)):
        raise kbench.KbenchError(f"run folder root {root!r} is not writable (checked {probe!r}); "
                                 "set --trainer.default_root_dir to a writable folder")


def main(argv: list[str] | None = None, callbacks: list | None = None) -> int:
    """Console entry point; returns the exit status (see the module docstring)."""
    bad_backend = kbench.check_backend_env()
    if bad_backend:
        console.print(f"[bold red]error:[/] {escape(bad_backend)}")
        return 2
    cfg = parse(argv)
    if cfg.resume and _already_completed(cfg.resume):
        return 0
    try:
        results = run(cfg, callbacks)
    except kbench.KbenchError as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}")
        return 2
    except KeyboardInterrupt as e:  # TrainingInterrupted carries the signal; a second Ctrl-C does not
        signum = getattr(e, "signum", signal.SIGINT)
        console.print(f"[bold red]interrupted ({signal.Signals(signum).name})[/]")
        return 128 + signum
    if distributed_is_chief():
        console.print(f"test top-1 accuracy {results['test_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
