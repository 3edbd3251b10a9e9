"""``python -m kbench.studies NAME``: one of the seed article's claims measured, with one
command, through the Ray sweep runner (:mod:`kbench.sweep`).

    python -m kbench.studies data_efficiency --output studies/data -- \\
        --data.root data/cifar10 --model.weights ../shared/weights/vgg16_notop_hed-bsds500.weights.h5
    python -m kbench.studies NAME --report-only       # report.md and plots again from the rows
    RAY_ADDRESS=ray://head:10001 python -m kbench.studies NAME --backends jax,torch --seeds 3 \\
        --gpus-per-trial 1 ...                        # the same study on a Ray cluster

Studies (``NAME``): see :data:`STUDIES`. Options common to all: ``--output`` (default
``studies/NAME``), ``--backends``, ``--seeds``, ``--image-size``, and the sweep runner's
``--address``, ``--num-cpus``, ``--cpus-per-trial``, ``--gpus-per-trial``,
``--retry-failed``, ``--timeout``; each study adds its own (``NAME --help``). Options after
``--`` go to every ``kbench.run`` trial. Rerunning a study continues it (finished trials
are kept). Exit status: 0 every trial completed, 1 some did not (the report says which),
2 bad input, 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from kbench import subproc
from kbench.studies.common import StudyContext
from kbench.sweep.cli import default_backend
from kbench.sweep.spec import SweepError, parse_backends, parse_seeds

#: Study name -> module under kbench.studies.
STUDIES = {
    "data_efficiency": "data_efficiency",
    "time_to_accuracy": "time_to_accuracy",
    "freeze_depth": "freeze_depth",
    "backbone_table": "backbone_table",
    "task_similarity": "task_similarity",
}


def study_module(name: str):
    """The module of study ``name`` (imported on demand; none imports keras)."""
    return importlib.import_module(f"kbench.studies.{STUDIES[name]}")


def _common(p: argparse.ArgumentParser, name: str, seeds: str) -> None:
    p.add_argument("--output", default=os.path.join("studies", name), help=f"study folder (default studies/{name})")
    p.add_argument("--backends", help="comma-separated Keras backends (default KERAS_BACKEND or the first installed)")
    p.add_argument("--seeds", default=seeds, help=f"count or list of seeds (default {seeds})")
    p.add_argument("--image-size", type=int, default=32, help="model.image_size (default 32; 64 = reference scenario)")
    p.add_argument("--address", help="Ray cluster address (default RAY_ADDRESS, else a local Ray instance)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default all)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs each trial declares to Ray (default 1)")
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="GPUs each trial declares to Ray (default 0)")
    p.add_argument("--retry-failed", action="store_true", help="run failed trials again")
    p.add_argument("--timeout", type=float, help="seconds a trial may run before it is stopped")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from the stored rows, run nothing")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kbench.studies", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="study", metavar="NAME", required=True)
    for name in STUDIES:
        mod = study_module(name)
        sp = sub.add_parser(name, help=mod.HELP, description=f"{mod.HELP} Claim tested: {mod.CLAIM}")
        _common(sp, name, getattr(mod, "DEFAULT_SEEDS", "2"))
        mod.add_arguments(sp)
        sp.add_argument("overrides", nargs="*", help="after --: kbench.run options for every trial")
    return p


def context(args: argparse.Namespace) -> StudyContext:
    """The :class:`StudyContext` of the parsed options.

    Raises:
        SweepError: bad backends, seeds or image size.
    """
    if args.image_size < 32:
        raise SweepError(f"--image-size {args.image_size}: use 32 or more (the registry's smallest input side)")
    opts = {"address": args.address, "num_cpus": args.num_cpus, "cpus_per_trial": args.cpus_per_trial,
            "gpus_per_trial": args.gpus_per_trial, "retry_failed": args.retry_failed, "timeout_s": args.timeout}
    return StudyContext(args.output, parse_backends(args.backends or default_backend()), parse_seeds(args.seeds),
                        list(args.overrides), args.image_size, opts, report_only=args.report_only)


def stored_options(args: argparse.Namespace) -> argparse.Namespace:
    """A run stores its options in ``OUT/study.json``; ``--report-only`` takes them from
    there (the report describes what ran, not today's defaults); a folder without one
    (written before kbench stored it) is read with the options given."""
    path = os.path.join(args.output, "study.json")
    if args.report_only:
        stored = subproc.read_json(path)
        if isinstance(stored, dict) and stored.get("study") == args.study:
            return argparse.Namespace(**{**stored, "output": args.output, "report_only": True})
        return args
    os.makedirs(args.output, exist_ok=True)
    subproc.write_json(path, {k: v for k, v in vars(args).items() if k not in ("output", "report_only")})
    return args


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    mod = study_module(args.study)
    try:
        args = stored_options(args)
        ctx = context(args)
        path = mod.run(ctx, args)
    except SweepError as e:
        print(f"kbench.studies: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kbench.studies: interrupted; finished trials are stored, rerun the same command to go on",
              file=sys.stderr)
        return 130
    if ctx.warnings:
        with open(path) as f:
            title, _, rest = f.read().partition("\n")
        with open(path, "w") as f:
            f.write("\n".join([title, "", *ctx.warnings, rest]))
        print("\n".join(ctx.warnings), file=sys.stderr)
    print(f"report: {path}")
    if ctx.incomplete:
        print(f"kbench.studies: {len(ctx.incomplete)} trial(s) did not complete (see the report): "
              + ", ".join(ctx.incomplete[:5]) + (" ..." if len(ctx.incomplete) > 5 else ""), file=sys.stderr)
        return 1
    return 0
