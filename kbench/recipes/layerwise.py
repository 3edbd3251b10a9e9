"""Layer-wise learning-rate multipliers of a phase: timm-style ``layer_decay`` by block
depth and fastai-style explicit ``lr_mult`` by layer-name prefix
(:mod:`kbench.recipes.policy` describes both). The optimizer that applies them is
:func:`kbench.recipes.schedules.layerwise_optimizer`.

Block depth: the registry's top block (e.g. ``block5`` for VGG16) is depth 1, the block
numbered one below (``block4``) depth 2, and so on (:func:`~kbench.recipes.policy.block_prefix`);
a layer belongs to the nearest block that starts at or below it; layers under the lowest
numbered block (the stem) get the next depth. The head is depth 0. With ``layer_decay``
= d a layer's multiplier is ``d ** depth`` (timm ``param_groups_layer_decay``: the head
at the full rate, each block down one more factor d).
"""

from __future__ import annotations

from kbench import KbenchError
from kbench.recipes.phases import Phase
from kbench.recipes.policy import block_prefix


def block_starts(layer_names: list[str], top_block: str) -> list[int]:
    """Index of the first layer of each numbered block, top block first (for VGG16:
    ``block5_conv1``, ``block4_conv1``, ...). Stops at the first block prefix that names
    no layer below the previous block's start."""
    starts, limit, k = [], len(layer_names), 1
    while True:
        try:
            prefix = block_prefix(top_block, k)
        except ValueError:
            return starts
        idx = next((i for i, n in enumerate(layer_names[:limit]) if n.startswith(prefix)), None)
        if idx is None:
            return starts
        starts.append(idx)
        limit, k = idx, k + 1


def block_depths(layer_names: list[str], top_block: str) -> list[int]:
    """Depth of every backbone layer (see the module docstring): 1 for the top block,
    ``len(blocks) + 1`` for the stem below the lowest numbered block."""
    starts = block_starts(layer_names, top_block)
    return [1 + sum(1 for s in starts if s > i) for i in range(len(layer_names))]


def layer_multipliers(base_names: list[str], head_names: list[str], phase: Phase) -> dict[str, float]:
    """Learning-rate multiplier of every layer, by layer name, for ``phase``: ``layer_decay
    ** depth`` (1 when ``layer_decay`` is None) times the ``lr_mult`` value of the longest
    prefix that matches the layer's name (1 when none does).

    Args:
        base_names: the backbone's layer names, bottom to top.
        head_names: the head's layer names (depth 0).
    """
    depths = block_depths(base_names, phase.top_block) if phase.layer_decay else [0] * len(base_names)
    out = {}
    for name, depth in [*zip(base_names, depths), *((n, 0) for n in head_names)]:
        m = phase.layer_decay ** depth if phase.layer_decay else 1.0
        match = max((p for p, _ in phase.lr_mult if name.startswith(p)), key=len, default=None)
        out[name] = m * dict(phase.lr_mult)[match] if match is not None else m
    return out


def check_lr_mult(base_names: list[str], head_names: list[str], phases: list[Phase], backbone: str = "backbone") -> None:
    """Refuse an ``lr_mult`` prefix that names no layer (a typo would silently train at
    the full rate).

    Raises:
        KbenchError: names the phase, the prefix and some valid block prefixes.
    """
    names = [*base_names, *head_names]
    for p in phases:
        for prefix, _ in p.lr_mult:
            if not any(n.startswith(prefix) for n in names):
                blocks = sorted({n.split("_")[0] for n in base_names[1:]})[:12]
                raise KbenchError(f"phase {p.name!r}: lr_mult prefix {prefix!r} matches no layer of {backbone!r} or "
                                  f"its head; use a layer-name prefix, e.g. one of {', '.join(blocks)}")


def variable_multiplier(layers, multipliers: dict[str, float]):
    """A function ``variable -> multiplier`` over the variables of ``layers`` (keras
    layers whose names key ``multipliers``); other variables get 1."""
    by_id = {id(v): multipliers.get(layer.name, 1.0) for layer in layers for v in layer.weights}
    return lambda v: by_id.get(id(v), 1.0)


def describe(multipliers: dict[str, float]) -> str:
    """The distinct multipliers with the first and last layer of each run, e.g.
    ``block4_conv1..block4_pool x0.49, block5_conv1..block5_pool x0.7`` (for logs)."""
    runs: list[list] = []
    for name, m in multipliers.items():
        if runs and runs[-1][2] == m:
            runs[-1][1] = name
        else:
            runs.append([name, name, m])
    return ", ".join(f"{a}..{b} x{m:.3g}" if a != b else f"{a} x{m:.3g}" for a, b, m in runs if m != 1.0) or "none"


__all__ = ["block_depths", "block_starts", "check_lr_mult", "describe", "layer_multipliers", "variable_multiplier"]
