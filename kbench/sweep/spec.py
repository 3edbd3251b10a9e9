"""What a sweep runs: the trials of ``python -m kbench.sweep`` (keras-free).

A sweep is a config file, a list of *points* (each a mapping of dotted config keys to
values, e.g. ``{"recipe.name": "fine_tune", "data.max_train_per_class": 50}``), seeds
and backends. ``--grid 'KEY=[v1,v2]'`` options (or a YAML sweep file's ``grid:``) make
the points as their cartesian product; a sweep file's ``points:`` lists them one by
one (studies use both). Every point x backend x seed is one :class:`Trial`, run as one
``python -m kbench.run --config FILE --trainer.seed S --KEY VALUE ...`` process with
``KERAS_BACKEND`` set (:mod:`kbench.sweep.trial`).

A trial's id names its backend, values and seed and ends with a hash of the config
text, the sweep-wide overrides and the point: a sweep rerun into the same folder
finds its finished trials by id, and a changed config or override makes new trials
instead of reusing results of another setting.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

import yaml

from kbench import BACKENDS

#: Keys a sweep sets itself: a grid over them is refused.
RESERVED_KEYS = ("trainer.seed", "trainer.default_root_dir", "resume", "config")
#: Keys of a YAML sweep file.
SWEEP_FILE_KEYS = ("config", "grid", "points", "seeds", "backends", "overrides", "name")
KEY_PATTERN = re.compile(r"^[a-z_]+(\.[a-z_0-9]+)+$")


class SweepError(Exception):
    """Bad sweep input (grid, sweep file, seeds, backends): one message naming the bad
    value and what to do; the CLI prints it and exits with status 2."""


def cli_value(value) -> str:
    """A config value as ``kbench.run`` reads it on the command line: strings as they
    are, ``None`` -> ``null``, booleans ``true``/``false``, numbers and lists as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


@dataclass(frozen=True)
class Trial:
    """One run of a sweep: ``point`` on ``backend`` with ``seed``.

    Attributes:
        backend: ``KERAS_BACKEND`` of the run (one of :data:`kbench.BACKENDS`).
        seed: ``--trainer.seed``.
        point: dotted config key -> value, in the order given.
        salt: hash of the sweep's config text and overrides (part of :attr:`id`).
    """

    backend: str
    seed: int
    point: dict = field(default_factory=dict)
    salt: str = ""

    @property
    def id(self) -> str:
        """``<backend>-<values>-seed<S>-<hash8>``: readable, unique per setting, safe as a file name."""
        values = "-".join(re.sub(r"[^A-Za-z0-9.]+", "_", cli_value(v)).strip("_") for v in self.point.values())
        digest = hashlib.sha256((self.salt + json.dumps(self.point, sort_keys=True)).encode()).hexdigest()[:8]
        return "-".join(x for x in (self.backend, values[:80], f"seed{self.seed}", digest) if x)

    def overrides(self) -> list[str]:
        """The point as ``kbench.run`` options: ``["--recipe.name", "fine_tune", ...]``."""
        return [a for k, v in self.point.items() for a in (f"--{k}", cli_value(v))]


def check_key(key: str, where: str) -> str:
    """``key`` if it is a dotted config key a sweep may vary.

    Raises:
        SweepError: not of the form ``section.field`` or one of :data:`RESERVED_KEYS`.
    """
    key = key.strip().removeprefix("--")
    if not KEY_PATTERN.match(key):
        raise SweepError(f"{where}: {key!r} is not a config key; use a dotted key such as recipe.name "
                         "or data.max_train_per_class")
    if key in RESERVED_KEYS:
        raise SweepError(f"{where}: {key!r} is set by the sweep itself; use --seeds for seeds and --output "
                         "for the run folders")
    return key


def parse_grid(text: str) -> tuple[str, list]:
    """``'recipe.name=[feature_extraction,fine_tune]'`` -> ``("recipe.name", [...])``.

    The value is read as YAML: ``[10,50]`` is a list of ints, ``fine_tune`` a single
    value (a one-element axis), ``[null, 0.5]`` holds ``None``.

    Raises:
        SweepError: no ``=``, a bad key, or an empty list.
    """
    if "=" not in text:
        raise SweepError(f"--grid {text!r}: expected KEY=[v1,v2,...], e.g. --grid 'recipe.name=[fine_tune,scratch]'")
    key, raw = text.split("=", 1)
    key = check_key(key, f"--grid {text!r}")
    try:
        values = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise SweepError(f"--grid {text!r}: the values are not valid YAML ({e.problem}); write them as [a,b,c]") from None
    if isinstance(values, str) and "," in values and not raw.strip().startswith(("'", '"')):
        raise SweepError(f"--grid {text!r}: several values go in brackets: --grid '{key}=[{values}]' "
                         "(quote the value to mean one string with a comma)")
    values = values if isinstance(values, list) else [values]
    if not values:
        raise SweepError(f"--grid {text!r}: the list of values is empty; give at least one value")
    return key, values


def grid_points(axes: Sequence[tuple[str, list]]) -> list[dict]:
    """The cartesian product of the axes, the first axis varying slowest.

    Raises:
        SweepError: the same key on two axes.
    """
    keys = [k for k, _ in axes]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise SweepError(f"grid key {dup[0]!r} is given twice; give each key once with all its values")
    return [dict(zip(keys, combo)) for combo in itertools.product(*(v for _, v in axes))]


def parse_seeds(value) -> list[int]:
    """``3`` or ``"3"`` -> ``[0, 1, 2]``; ``"0,5"`` or ``[0, 5]`` -> that list.

    Raises:
        SweepError: not a count >= 1 or a list of integers.
    """
    try:
        if isinstance(value, list) or (isinstance(value, str) and "," in value):
            items = value if isinstance(value, list) else [s for s in value.split(",") if s.strip()]
            seeds = list(dict.fromkeys(int(s) for s in items))
            if seeds:
                return seeds
        elif int(value) >= 1 and str(value).strip().isdigit():
            return list(range(int(value)))
    except (TypeError, ValueError):
        pass
    raise SweepError(f"seeds {value!r}: give a count >= 1 (3 -> seeds 0,1,2) or a list of integers (0,5,7)")


def parse_backends(value) -> list[str]:
    """``"jax,torch"`` or ``["jax", "torch"]`` -> ``["jax", "torch"]`` (order kept).

    Raises:
        SweepError: empty, or a name not in :data:`kbench.BACKENDS`.
    """
    items = value.split(",") if isinstance(value, str) else list(value or [])
    names = list(dict.fromkeys(str(b).strip().lower() for b in items if str(b).strip()))
    bad = [b for b in names if b not in BACKENDS]
    if not names or bad:
        raise SweepError(f"backends {value!r}: give a comma-separated list of {', '.join(BACKENDS)}")
    return names


@dataclass
class Sweep:
    """A whole sweep: what :func:`kbench.sweep.engine.run_sweep` runs.

    Attributes:
        config: path of the ``kbench.run`` config file; ``config_text`` its text
            (shipped to each trial, so a trial on another machine needs no copy).
        points: the settings (see the module docstring); ``[{}]`` runs the config as it is.
        seeds, backends: every point runs once per backend and seed.
        overrides: ``kbench.run`` options added to every trial (``--data.root ...``).
        name: a title for the report.
    """

    config: str
    config_text: str
    points: list[dict]
    seeds: list[int]
    backends: list[str]
    overrides: list[str] = field(default_factory=list)
    name: str = "sweep"

    def salt(self) -> str:
        """Hash of the config text and the overrides (see :attr:`Trial.salt`)."""
        return hashlib.sha256(json.dumps([self.config_text, self.overrides]).encode()).hexdigest()[:16]

    def trials(self) -> list[Trial]:
        """Every point x seed x backend, seed by seed (all points and backends of seed 0
        first), so an interrupted sweep has whole seeds rather than whole backends."""
        salt = self.salt()
        return [Trial(b, s, dict(p), salt) for s in self.seeds for p in self.points for b in self.backends]

    def describe(self) -> dict:
        """JSON summary stored with the rows."""
        return {"name": self.name, "config": self.config, "points": self.points, "seeds": self.seeds,
                "backends": self.backends, "overrides": self.overrides}


def read_config_text(path: str) -> str:
    """The text of the config file ``path``.

    Raises:
        SweepError: it does not exist or cannot be read.
    """
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        raise SweepError(f"--config {path!r} cannot be read ({e.strerror}); pass a kbench YAML config such as "
                         "configs/fine_tune.yaml") from None


def load_sweep_file(path: str) -> dict:
    """A YAML sweep file as a dict of :data:`SWEEP_FILE_KEYS` (``grid`` as axes; a
    relative ``config`` is relative to the sweep file's folder).

    Raises:
        SweepError: unreadable, not a mapping, an unknown key, or bad grid/points.
    """
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        raise SweepError(f"--sweep {path!r} cannot be read as YAML ({e}); see README \"Sweeps and research studies\" for the format") from None
    if not isinstance(data, dict):
        raise SweepError(f"--sweep {path!r}: expected a mapping with keys {', '.join(SWEEP_FILE_KEYS)}")
    unknown = sorted(set(data) - set(SWEEP_FILE_KEYS))
    if unknown:
        raise SweepError(f"--sweep {path!r}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(SWEEP_FILE_KEYS)}")
    grid = data.get("grid") or {}
    if not isinstance(grid, dict):
        raise SweepError(f"--sweep {path!r}: grid must map keys to lists of values")
    data["grid"] = [(check_key(k, f"{path} grid"), v if isinstance(v, list) else [v]) for k, v in grid.items()]
    points = data.get("points") or []
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise SweepError(f"--sweep {path!r}: points must be a list of mappings (config key: value)")
    data["points"] = [{check_key(k, f"{path} points"): v for k, v in p.items()} for p in points]
    over = data.get("overrides") or []
    if isinstance(over, str):
        over = shlex.split(over)
    if isinstance(over, dict):
        over = [a for k, v in over.items() for a in (f"--{k.removeprefix('--')}", cli_value(v))]
    data["overrides"] = [str(a) for a in over]
    if data.get("config") and not os.path.isabs(data["config"]):
        data["config"] = os.path.join(os.path.dirname(os.path.abspath(path)), data["config"])
    return data


def combine_points(axes: Sequence[tuple[str, list]], points: Sequence[dict]) -> list[dict]:
    """The sweep's points: each listed point crossed with the grid (the grid alone
    when no points are listed; ``[{}]`` when neither is given)."""
    grid = grid_points(axes) if axes else [{}]
    return [{**p, **g} for p in (list(points) or [{}]) for g in grid]
