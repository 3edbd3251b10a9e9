"""Best-epoch tracking (keras-free): the monitored metric's history, which epoch is
best, which epoch checkpoints to keep, and when early stopping ends a phase."""

from __future__ import annotations

import math

from kbench import KbenchError

MONITORS = ("val_accuracy", "val_loss", "accuracy", "loss")


def _mode(monitor: str) -> str:
    return "max" if monitor.endswith("accuracy") else "min"


def better(a: float | None, b: float | None, monitor: str) -> bool:
    """True when value ``a`` of ``monitor`` beats ``b`` (``None`` never wins / always loses)."""
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return False
    if b is None:
        return True
    return a > b if _mode(monitor) == "max" else a < b


class BestTracker:
    """The monitored metric's history and its best epochs: one rule for the best
    checkpoint, early stopping and the model that is tested.

    Args:
        monitor: one of :data:`MONITORS` (``val_*`` needs a validation split).
        save_top_k: how many best epoch checkpoints to keep besides the last one.
        patience: stop a phase after this many epochs without improvement (None = never).
    """

    def __init__(self, monitor: str = "val_accuracy", save_top_k: int = 1, patience: int | None = None):
        if monitor not in MONITORS:
            raise KbenchError(f"unknown monitor {monitor!r}; choose one of: {', '.join(MONITORS)}")
        self.monitor, self.save_top_k, self.patience = monitor, save_top_k, patience
        self.values: dict[int, float | None] = {}
        self.best_weights: list | None = None  # numpy arrays of the best epoch

    def update(self, epoch: int, value: float | None) -> None:
        self.values[epoch] = value

    @property
    def best_epoch(self) -> int | None:
        best = None
        for e, v in sorted(self.values.items()):
            if better(v, self.values.get(best) if best else None, self.monitor):
                best = e
        return best

    @property
    def best_value(self) -> float | None:
        return self.values.get(self.best_epoch) if self.best_epoch else None

    def top(self) -> list[int]:
        """Epochs of the ``save_top_k`` best values (ties: earliest first)."""
        scored = [(e, v) for e, v in self.values.items() if v is not None and not math.isnan(v)]
        sign = -1 if _mode(self.monitor) == "max" else 1
        return [e for e, _ in sorted(scored, key=lambda ev: (sign * ev[1], ev[0]))[: self.save_top_k]]

    def keep(self, last_tag: str) -> set[str]:
        return {last_tag, *(f"epoch-{e:04d}" for e in self.top())}

    def stale(self, epoch: int) -> bool:
        """True when early stopping should end the phase after ``epoch``."""
        if self.patience is None or self.best_epoch is None:
            return False
        return epoch - self.best_epoch >= self.patience

    def to_dict(self) -> dict:
        return {"monitor": self.monitor, "values": {str(k): v for k, v in self.values.items()}}

    def load(self, d: dict) -> None:
        self.values = {int(k): v for k, v in d.get("values", {}).items()}
