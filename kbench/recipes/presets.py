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
  inference mode, so its moving statistics never change (unless ``recipe.bn: train``).
* ``gradual_unfreeze``: progressive unfreezing (ULMFiT gradual unfreezing, Howard &
  Ruder 2018; Lightning ``BackboneFinetuning``): the head first (``epochs`` at
  ``learning_rate``, backbone frozen), then the top block (``blocks:1``), then the top
  two (``blocks:2``), ... down to ``blocks:<unfreeze_blocks>``, each stage
  ``fine_tune_epochs`` epochs with a fresh optimizer at ``fine_tune_learning_rate``
  (default ``learning_rate / 10``). Every stage starts at the same rate; the deeper,
  newly unfrozen blocks get lower ones with ``recipe.layer_decay`` (ULMFiT's
  discriminative fine-tuning divides the rate by 2.6 per layer down: ``layer_decay``
  0.385). The frozen-prefix cache cut moves down one block per stage.
* ``full``: pretrained weights as the initializer, everything trainable
  (BatchNormalization trains too).
* ``scratch``: architecture only (``model.weights`` is ignored), everything trainable.
* ``seed_tutorial``: the reference article as written (one epoch, frozen backbone, the
  article's head, pixels / 255, Adam 1e-3, batch 32; ``configs/seed_tutorial.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from kbench import KbenchError

# The recipe config keys the presets read. recipe.phases replaces them (each phase has its
# own epochs, learning rate and trainable set), so one changed from its default next to
# recipe.phases is refused (kbench.recipes.phases.build_recipe).
PRESET_KEYS = ("epochs", "learning_rate", "fine_tune_epochs", "fine_tune_learning_rate", "unfreeze",
               "unfreeze_blocks")


def phase(name: str, epochs: int, learning_rate: float, train: str, base_inference: bool | None = None) -> dict:
    """One phase as a ``recipe.phases`` entry (``base_inference`` ``None`` = the default rule)."""
    return {"name": name, "epochs": epochs, "learning_rate": learning_rate, "train": train,
            "base_inference": base_inference}


def fine_tune_learning_rate(cfg: Any) -> float:
    """``recipe.fine_tune_learning_rate``, or ``learning_rate / 10`` when it is null."""
    lr = cfg.fine_tune_learning_rate
    return lr if lr is not None else cfg.learning_rate / 10


def check_unfreeze_blocks(cfg: Any) -> None:
    """Check ``recipe.unfreeze_blocks`` (``gradual_unfreeze``'s deepest stage).

    Raises:
        KbenchError: not an integer >= 1 (whether the backbone has that many numbered
            blocks is checked against the model: :func:`kbench.recipes.check_train_layers`).
    """
    v = cfg.unfreeze_blocks
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise KbenchError(f"recipe.unfreeze_blocks must be an integer >= 1 (gradual_unfreeze trains the top block, "
                          f"then the top 2, ... then the top unfreeze_blocks blocks), got {v!r}")


def bn_inference(cfg, default: bool) -> bool | None:
    """A preset phase's ``base_inference``: ``default`` when ``recipe.bn`` is null, else
    None, so that the phase follows ``recipe.bn`` (``frozen`` or ``train``)."""
    return default if getattr(cfg, "bn", None) is None else None


def gradual_unfreeze(cfg) -> list[dict]:
    """The ``gradual_unfreeze`` phases: head, then ``blocks:1`` ... ``blocks:<unfreeze_blocks>``
    (see the module docstring)."""
    lr = fine_tune_learning_rate(cfg)
    return [phase("feature_extraction", cfg.epochs, cfg.learning_rate, "none"),
            *(phase(f"unfreeze_{k}", cfg.fine_tune_epochs, lr, f"blocks:{k}", bn_inference(cfg, True))
              for k in range(1, cfg.unfreeze_blocks + 1))]


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
        phase("fine_tune", c.fine_tune_epochs, fine_tune_learning_rate(c), c.unfreeze, bn_inference(c, True))]),
    "full": Preset(lambda c: [phase("full", c.epochs, c.learning_rate, "all", bn_inference(c, False))]),
    "scratch": Preset(lambda c: [phase("scratch", c.epochs, c.learning_rate, "all", bn_inference(c, False))],
                      pretrained=False),
    "seed_tutorial": Preset(lambda c: [phase("seed_tutorial", c.epochs, c.learning_rate, "none")]),
    "gradual_unfreeze": Preset(gradual_unfreeze),
}
