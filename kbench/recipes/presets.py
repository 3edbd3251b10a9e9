"""The named recipes (presets), as a table: adding a named recipe is one row here.

A preset writes its phases from the ``recipe`` config keys in :data:`PRESET_KEYS`,
in the same form as a user's ``recipe.phases`` entries (``name``, ``epochs``,
``learning_rate``, ``train``, ``base_inference``; see
:class:`~kbench.recipes.phases.PhaseConfig`), so presets and user phase lists are
checked and resolved by the same code. Keras-free: the config lists the presets'
names without importing a backend.

* ``feature_extraction``: backbone frozen, head trained.
* ``fine_tune``: feature extraction, then the top of the backbone (``recipe.unfreeze``)
  unfrozen at a lower learning rate (default 10x lower). BatchNormalization stays in
  inference mode, so its moving statistics never change.
* ``full``: pretrained weights as the initializer, everything trainable
  (BatchNormalization trains too).
* ``scratch``: architecture only (``model.weights`` is ignored), everything trainable.
* ``seed_tutorial``: the reference article as written (one epoch, frozen backbone, the
  article's head, pixels / 255, Adam 1e-3, batch 32; ``configs/seed_tutorial.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

# The recipe config keys the presets read. recipe.phases replaces them (each phase has its
# own epochs, learning rate and trainable set), so one changed from its default next to
# recipe.phases is refused (kbench.recipes.phases.build_recipe).
PRESET_KEYS = ("epochs", "learning_rate", "fine_tune_epochs", "fine_tune_learning_rate", "unfreeze")


def phase(name: str, epochs: int, learning_rate: float, train: str, base_inference: bool | None = None) -> dict:
    """One phase as a ``recipe.phases`` entry (``base_inference`` ``None`` = the default rule)."""
    return {"name": name, "epochs": epochs, "learning_rate": learning_rate, "train": train,
            "base_inference": base_inference}


def fine_tune_learning_rate(cfg: Any) -> float:
    """``recipe.fine_tune_learning_rate``, or ``learning_rate / 10`` when it is null."""
    lr = cfg.fine_tune_learning_rate
    return lr if lr is not None else cfg.learning_rate / 10


@dataclass(frozen=True)
class Preset:
    """A named recipe.

    Attributes:
        phases: maps the ``recipe`` config (its :data:`PRESET_KEYS`) to the phase list,
            entries as :func:`phase` writes them.
        pretrained: False when the recipe trains the architecture from scratch
            (``model.weights`` is then ignored).
    """

    phases: Callable[[Any], list[dict]]
    pretrained: bool = True


PRESETS: dict[str, Preset] = {
    "feature_extraction": Preset(lambda c: [phase("feature_extraction", c.epochs, c.learning_rate, "none")]),
    "fine_tune": Preset(lambda c: [
        phase("feature_extraction", c.epochs, c.learning_rate, "none"),
        phase("fine_tune", c.fine_tune_epochs, fine_tune_learning_rate(c), c.unfreeze, base_inference=True)]),
    "full": Preset(lambda c: [phase("full", c.epochs, c.learning_rate, "all", base_inference=False)]),
    "scratch": Preset(lambda c: [phase("scratch", c.epochs, c.learning_rate, "all", base_inference=False)],
                      pretrained=False),
    "seed_tutorial": Preset(lambda c: [phase("seed_tutorial", c.epochs, c.learning_rate, "none")]),
}
