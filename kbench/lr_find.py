"""``python -m kbench.lr_find``: the learning-rate finder on one phase of a config's recipe.

    python -m kbench.lr_find --config FILE [overrides] [--phase NAME] [--out DIR]

The config and overrides are those of ``python -m kbench.run`` (same parser, same
process set-up, same data and model). ``--phase``: the phase to sweep (default: the
first phase with epochs > 0); ``--out``: the folder for ``lr_find.csv``,
``lr_find.json`` and ``lr_find.png`` (default: a new
``<trainer.default_root_dir>/<name>-lr_find-<time>``). Prints the suggestion, its rule
and the rule's source (:mod:`kbench.trainer.lr_finder`).

Exit status: 0 on success, 2 on a user error (bad flag or config, unknown phase,
missing data or weights: one ``error:`` line), 130 / 143 on SIGINT / SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys

import kbench
from kbench.config import RunConfig, parse
from kbench.run import build_parts, check_writable, console, escape

PROG = "python -m kbench.lr_find"
OWN_FLAGS = {"--phase": "phase to sweep (a phase name; default: the first phase with epochs > 0)",
             "--out": "folder for lr_find.csv / .json / .png (default: a new folder under trainer.default_root_dir)"}


def split_args(argv: list[str]) -> tuple[dict, list[str]]:
    """``({"phase": ..., "out": ...}, the other arguments)`` from ``argv`` (``--flag V`` or ``--flag=V``).

    Raises:
        KbenchError: a flag of ours without a value, given twice, or ``--resume``.
    """
    own, rest, i = {}, [], 0
    while i < len(argv):
        a = argv[i]
        flag, eq, value = a.partition("=")
        if flag in OWN_FLAGS:
            if not eq:
                if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                    raise kbench.KbenchError(f"{flag} needs a value: {OWN_FLAGS[flag]}")
                value, i = argv[i + 1], i + 1
            if flag[2:] in own or not value:
                raise kbench.KbenchError(f"{flag} given twice or empty; give it once with a value")
            own[flag[2:]] = value
        elif flag == "--resume":
            raise kbench.KbenchError("--resume is not an option of kbench.lr_find; pass the run's config instead "
                                     "(--config <run folder>/config.yaml)")
        else:
            rest.append(a)
        i += 1
    return own, rest


def find(cfg: RunConfig, phase: str | None = None, out: str | None = None):
    """Build the parts of ``cfg`` as ``kbench.run`` does and run
    :func:`kbench.trainer.lr_finder.lr_find` on ``phase``; returns ``(LRFindResult, phase name)``.

    Raises:
        KbenchError: unknown phase (before any data is read), unwritable folder, data errors.
    """
    from kbench.trainer.lr_finder import lr_find, phase_index

    def checks(recipe):
        phase_index(recipe, phase)
        check_writable(out or cfg.trainer.default_root_dir)

    trainer, dm, model, recipe = build_parts(cfg, before_data=checks)
    index = phase_index(recipe, phase)
    if out is None:
        from kbench.trainer.results import make_run_dir

        out = make_run_dir(cfg.trainer.default_root_dir, f"{trainer.name}-lr_find-{recipe.phases[index].name}")
    return lr_find(model, dm, recipe, index, trainer=trainer, out_dir=out), recipe.phases[index].name


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    bad_backend = kbench.check_backend_env()
    try:
        if bad_backend:
            raise kbench.KbenchError(bad_backend)
        own, rest = split_args(argv)
    except kbench.KbenchError as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}")
        return 2
    if "-h" in rest or "--help" in rest:
        print(f"usage: {PROG} --config FILE [overrides] [--phase NAME] [--out DIR]\n"
              + "".join(f"  {k} {v}\n" for k, v in OWN_FLAGS.items()) + "config and overrides as for kbench.run:")
    cfg = parse(rest, prog=PROG)
    try:
        result, name = find(cfg, own.get("phase"), own.get("out"))
    except kbench.KbenchError as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}")
        return 2
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        console.print(f"[bold red]interrupted ({signal.Signals(signum).name})[/]")
        return 128 + signum
    where = os.path.dirname(result.csv_path)
    files = ", ".join(os.path.basename(p) for p in (result.csv_path, result.json_path, result.png_path) if p)
    console.print(f"phase {name}: {len(result.lrs)} of {result.steps} steps"
                  + (" (stopped early: the loss diverged)" if result.diverged else "")
                  + f"; steepest descent at {result.steepest:.3g}; wrote {files} in {where}")
    if result.png_path is None:
        console.print("[yellow]no lr_find.png: matplotlib is not installed (pip install matplotlib, or the "
                      "kbench[report] extra)")
    console.print(f"suggested learning rate {result.suggestion:.3g} (rule: {result.rule}, {result.source})",
                  soft_wrap=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
