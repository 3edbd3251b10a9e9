"""``python -m kbench.run``: parse the config, build the parts, call the trainer.

Exit status: 0 on success, 2 on a user error (bad config, missing data or
weights, a non-finite loss: one clear message, no traceback), 130 on Ctrl-C
(SIGINT) and 143 on SIGTERM, after a checkpoint and ``results.json`` are written.
"""

from __future__ import annotations

import json
import os
import signal
import sys

from rich.console import Console

import kbench
from kbench.config import RunConfig, parse

console = Console() if Console().is_terminal else Console(width=120)


def run(cfg: RunConfig, callbacks: list | None = None) -> dict:
    """Build DataModule, TransferModel, Recipe and Trainer from ``cfg`` and fit
    (resuming from ``cfg.resume`` when set).

    Args:
        callbacks: extra ``keras.callbacks.Callback`` objects for every phase.

    Returns the results dict (also written to ``results.json``).
    """
    from kbench.data.module import DataModule
    from kbench.models.transfer import build_model, check_weights_file, get_spec
    from kbench.recipes import build_recipe
    from kbench.trainer import Trainer

    d, m, r, t = cfg.data, cfg.model, cfg.recipe, cfg.trainer
    spec = get_spec(m.backbone)
    if m.weights not in ("imagenet", "none"):
        check_weights_file(m.weights)  # a wrong path is a mistake even where it would be ignored
    recipe = build_recipe(r, spec.unfreeze)
    if not recipe.pretrained and m.weights != "none":
        console.print(f"[yellow]recipe {r.name} trains the architecture only: ignoring model.weights={m.weights!r}")
        m.weights = "none"
    trainer = Trainer(max_epochs=t.max_epochs, max_steps=t.max_steps, limit_train_batches=t.limit_train_batches,
                      limit_val_batches=t.limit_val_batches, limit_test_batches=t.limit_test_batches,
                      fast_dev_run=t.fast_dev_run, precision=t.precision, jit_compile=t.jit_compile, seed=t.seed,
                      deterministic=t.deterministic, default_root_dir=t.default_root_dir,
                      name=t.name or f"{m.backbone}-{r.name}", enable_progress_bar=t.enable_progress_bar,
                      inference_batches=t.inference_batches, enable_checkpointing=t.enable_checkpointing,
                      monitor=t.monitor, save_top_k=t.save_top_k, early_stopping_patience=t.early_stopping_patience,
                      checkpoint_every_n_steps=t.checkpoint_every_n_steps, callbacks=callbacks, console=console)
    dm = DataModule(d.source, d.root, d.val_split, d.test_split, d.batch_size, t.seed, d.max_train_per_class,
                    d.max_test_per_class, d.interpolation, d.augment, d.strict, progress=t.enable_progress_bar)
    # cheap checks first: before any data is read or weights downloaded
    size = spec.input_size(m.image_size)
    if cfg.resume:
        from kbench.trainer import checkpoint

        checkpoint.load_state(checkpoint.find(cfg.resume))  # a newer format or no checkpoint: fail before work
    else:
        check_writable(t.default_root_dir)
    dm.setup()
    model = build_model(m.backbone, m.weights, size, m.head, m.head_dropout, m.preprocess,
                        dm.num_classes, dm.class_names, m.head_hidden)
    if not cfg.resume:
        trainer.make_run_dir()
    return trainer.fit(model, dm, recipe, config=cfg.to_dict(), ckpt_path=cfg.resume)


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
        console.print(f"[bold red]error:[/] {bad_backend}")
        return 2
    cfg = parse(argv)
    if cfg.resume and _already_completed(cfg.resume):
        return 0
    try:
        results = run(cfg, callbacks)
    except kbench.KbenchError as e:
        console.print(f"[bold red]error:[/] {e}")
        return 2
    except KeyboardInterrupt as e:  # TrainingInterrupted carries the signal; a second Ctrl-C does not
        signum = getattr(e, "signum", signal.SIGINT)
        console.print(f"[bold red]interrupted ({signal.Signals(signum).name})[/]")
        return 128 + signum
    console.print(f"test top-1 accuracy {results['test_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
