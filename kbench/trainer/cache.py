"""Frozen-prefix feature cache.

When the bottom of the network is frozen (its BatchNormalization in inference
mode) and the input pipeline has no random augmentation, the output of the
frozen prefix is computed once per split and the rest of the network is
trained on it. The shallowest cut any phase needs is computed from images;
deeper cuts are derived from it by running only the layers in between. Features
that a phase made stale (it trained layers of their prefix) are dropped after it
and recomputed if a later phase needs them, so any order of phases is exact.

Two-view flip cache: with random horizontal flips as the only augmentation, the
training split is cached twice, as it is and mirrored (``mirror=True``: the resized
images flipped left-right before the prefix; deeper cuts derived from the mirrored
view), and :class:`~kbench.data.TwoViewSequence` serves one view per image per epoch
by the uncached flip's rule: twice the memory and time of one view, exact flips.
"""

from __future__ import annotations

import time

import keras
import numpy as np

from kbench.data import BatchSequence, DataModule
from kbench.models import TransferModel
from kbench.trainer import replicas
from kbench.trainer.callbacks import LineProgressCallback
from kbench.trainer.loop import LoopTools


class Mirrored(keras.utils.PyDataset):
    """The batches of ``seq`` with every image flipped left-right (``x[:, :, ::-1]``)."""

    def __init__(self, seq):
        super().__init__(workers=1, use_multiprocessing=False)
        self.seq = seq

    def __len__(self) -> int:
        return len(self.seq)

    def batch_sizes(self) -> list[int]:
        """Samples in each batch (those of ``seq``)."""
        return self.seq.batch_sizes()

    def __getitem__(self, i: int):
        x, y = self.seq[i]
        return np.ascontiguousarray(x[:, :, ::-1]), y


class FeatureCache:
    """Outputs of frozen backbone prefixes, per split, computed once.

    The shallowest cut that any phase needs is computed from images; deeper cuts
    are derived from it by running only the layers in between. Arrays are
    ``float32 (N, h, w, c)`` in sample order of the split (never modified).

    Args:
        model, datamodule: what the features are computed from.
        tools: the trainer's :class:`~kbench.trainer.loop.LoopTools` (batch limits, progress callbacks).

    Attributes:
        seconds: time spent computing features (s).
        peak_mb: the most memory the stored features took at once (MiB).
    """

    def __init__(self, model: TransferModel, datamodule: DataModule, tools: LoopTools):
        self.tm, self.dm, self.tools = model, datamodule, tools
        self.store: dict[tuple[str, str, bool], np.ndarray] = {}
        self.root_cut: str | None = None
        self.seconds = 0.0
        self.peak_mb = 0.0

    def _index(self, cut: str) -> int:
        return [layer.name for layer in self.tm.base.layers].index(cut)

    def plan(self, cuts: list[str]) -> None:
        """Declare the cuts the run will need; the shallowest is computed from images."""
        self.root_cut = min(cuts, key=self._index) if cuts else None

    def invalidate_from(self, index: int) -> None:
        """Forget the features whose prefix reaches base layer ``index`` or above: call
        after a phase that trained the layers from ``index`` up (they are stale now;
        :meth:`get` recomputes them from images when a later phase needs them)."""
        self.store = {key: v for key, v in self.store.items() if self._index(key[1]) < index}

    def get(self, split: str, cut: str, mirror: bool = False) -> np.ndarray:
        """Features of ``split`` (its images mirrored left-right with ``mirror``) at the
        output of base layer ``cut``; adds the time spent computing them to :attr:`seconds`."""
        t0 = time.perf_counter()
        out = self._get(split, cut, mirror)
        self.seconds += time.perf_counter() - t0
        self.peak_mb = max(self.peak_mb, sum(v.nbytes for v in self.store.values()) / 2**20)
        return out

    def _get(self, split: str, cut: str, mirror: bool = False) -> np.ndarray:
        key = (split, cut, mirror)
        if key in self.store:
            return self.store[key]
        root = self.root_cut if self.root_cut and self._index(self.root_cut) <= self._index(cut) else cut
        limit = self.tools.limit(split)
        if root == cut:
            prefix, _ = self.tm.split(cut)
            seq = self.dm.loader(split, self.tm.image_size, limit_batches=limit, augment=False)
            seq = Mirrored(seq) if mirror else seq
        else:
            src = self._get(split, root, mirror)
            prefix = keras.Model(self.tm.base.get_layer(root).output, self.tm.base.get_layer(cut).output)
            seq = BatchSequence(src, np.zeros(len(src), np.int32), self.dm.batch_size, None)
        what = f"cache {cut} ({split}{', mirrored' if mirror else ''})"
        bar = self.tools.callbacks(what)
        if self.tools.enable_progress_bar and not self.tools.console.is_terminal:
            bar.append(LineProgressCallback(what, seq.batch_sizes()))  # plain lines in logs and pipes
        self.store[key] = replicas.predict_shared(prefix, seq, bar)  # several processes: a share each
        return self.store[key]

    def labels(self, split: str) -> np.ndarray:
        """Labels aligned with the cached features of ``split`` (limits applied)."""
        s = getattr(self.dm, split)
        n = next(len(v) for (sp, *_), v in self.store.items() if sp == split)
        return s.y[:n]


__all__ = ["FeatureCache", "Mirrored"]
