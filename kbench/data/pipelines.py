"""Your own input pipelines in the role of a DataModule (:func:`kbench.data.from_pipelines`).

A ``keras.utils.PyDataset``, a ``tf.data.Dataset`` (TensorFlow installed) or a torch
``DataLoader`` (torch installed) is served to ``Model.fit`` through one
``keras.utils.PyDataset`` wrapper (:class:`PipelineSequence`) that pulls the
pipeline's batches in order (its own workers and prefetching still run). Why a
wrapper rather than handing the pipeline to keras: the trainer needs batch counts,
images per step, batch checks and a resume position from every input, and keras 3.15
refuses ``class_weight`` for a torch ``DataLoader`` (and for generators and grain) on
every backend, while its ``PyDataset`` adapter applies ``class_weight`` on every
backend: one path, the same weighted loss for every input.

Batches must be ``(images, labels)``: images ``(b, S, S, 3)`` RGB at the model's input
size ``S``, ``uint8`` or float in [0, 255] (kbench's Preprocess layer is the model's
first layer: do not normalise), labels integer class indices ``(b,)`` (or ``(b, 1)``)
in ``[0, num_classes)``. The first batch of each pipeline is checked before training
(:func:`check_batch`); the labels of every batch are checked.

Limits (said in the run's log): kbench cannot know that a pipeline gives the same
images each pass, so the frozen-prefix cache is off (pass arrays to get it); a
mid-epoch (position) resume skips the already-trained batches of a fresh pass, which
is exact only if the pipeline yields the same order each pass (epoch checkpoints are
always exact); the pipeline shuffles itself; ``len`` of a split is the sample count
when a DataLoader's dataset has a length, else batches x the first batch's size.
Type checks are duck typing on the class's module: no TensorFlow or torch import.
"""

from __future__ import annotations

import copy

import keras
import numpy as np

from kbench import KbenchError
from kbench.data.batches import count_batches
from kbench.data.weights import resolve_class_weight


def pipeline_kind(obj) -> str | None:
    """``"pydataset"``, ``"tf.data"``, ``"torch"`` or None, by type (duck typing on the
    class's module: no TensorFlow or torch import)."""
    if isinstance(obj, keras.utils.PyDataset):
        return "pydataset"
    mro = [(c.__module__ or "", c.__name__) for c in type(obj).__mro__]
    if any(m.startswith("tensorflow") and n == "DatasetV2" for m, n in mro):
        return "tf.data"
    if any(m.startswith("torch.utils.data") and n == "DataLoader" for m, n in mro):
        return "torch"
    return None


class PipelineSplit:
    """One split of a :class:`PipelineModule`: the user's pipeline (or None) and what
    is known of it: ``kind``, ``n_batches``, the first batch's size ``first_size``."""

    def __init__(self, name: str, pipeline):
        self.name, self.pipeline = name, pipeline
        self.kind = pipeline_kind(pipeline) if pipeline is not None else None
        self.n_batches, self.first_size, self._labels = 0, 0, None

    def setup(self) -> None:
        """Count the batches (``len``, a tf.data cardinality, else one pass)."""
        p = self.pipeline
        if p is None or self.n_batches:
            return
        if self.kind == "tf.data":
            n = int(p.cardinality())
            if n == -1:  # tf.data.INFINITE_CARDINALITY
                raise KbenchError(f"{self.name} pipeline is infinite (tf.data .repeat()); kbench needs finite "
                                  "epochs: drop the .repeat()")
        else:
            try:
                n = len(p)
            except TypeError:
                n = -2
        self.n_batches = n if n >= 0 else sum(1 for _ in self.batches())
        if self.n_batches == 0:
            raise KbenchError(f"{self.name} pipeline yields no batches")

    def batches(self, start: int = 0):
        """NumPy ``(x float32, y int32)`` batches ``start..`` of one fresh pass."""
        p = self.pipeline
        if self.kind == "pydataset":
            return (_to_numpy(self.name, p[i]) for i in range(start, len(p)))
        it = (_to_numpy(self.name, b) for b in p)
        for _ in range(start):
            next(it)
        return it

    def __len__(self) -> int:
        if self.pipeline is None:
            return 0
        if self.kind == "torch" and not getattr(self.pipeline, "drop_last", True):
            try:
                return len(self.pipeline.dataset)
            except TypeError:
                pass
        return self.n_batches * self.first_size

    @property
    def y(self) -> np.ndarray:
        """All labels ``int32 (N,)`` of one pass (computed once)."""
        if self._labels is None:
            self._labels = np.concatenate([y for _, y in self.batches()]).astype(np.int32)
        return self._labels


def _to_numpy(name: str, batch) -> tuple[np.ndarray, np.ndarray]:
    """A pipeline batch as NumPy ``(float32 images, int32 labels)`` (tf / torch tensors
    by duck typing: ``.detach().cpu()``, ``.numpy()``)."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise KbenchError(f"{name} pipeline: a batch must be a pair (images, labels), got a {type(batch).__name__}"
                          + (f" of {len(batch)}" if isinstance(batch, (tuple, list)) else "")
                          + " (class weights: use data.class_weight instead of sample weights)")
    out = []
    for t in batch:
        if hasattr(t, "detach"):
            t = t.detach().cpu()
        out.append(np.asarray(t.numpy() if hasattr(t, "numpy") else t))
    x, y = out
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    return x, y


def check_batch(name: str, x: np.ndarray, y: np.ndarray, image_size: int, num_classes: int) -> None:
    """Refuse a batch kbench cannot train on (the first of each pipeline: all of it;
    later batches: the labels' range).

    Raises:
        KbenchError: images not ``(b, S, S, 3)`` at the model's input size, not
            ``uint8`` / float, NaN, outside [0, 255] or scaled to [0, 1]; labels not
            integer ``(b,)`` class indices in ``[0, num_classes)``.
    """
    want = f"(batch, {image_size}, {image_size}, 3)"
    if x.ndim != 4 or x.shape[1:] != (image_size, image_size, 3):
        raise KbenchError(f"{name} pipeline: images have shape {x.shape}; kbench needs {want} RGB channels-last at "
                          "the model's input size: resize in your pipeline")
    if not (x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating)):
        raise KbenchError(f"{name} pipeline: images have dtype {x.dtype}; use uint8 or float pixels in [0, 255]")
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -0.5 or hi > 255.5 or (x.dtype != np.uint8 and 0 < hi <= 1):
        raise KbenchError(f"{name} pipeline: image values range {lo:g}..{hi:g}; kbench needs raw pixels in [0, 255] "
                          "(the model normalises them itself: drop the normalisation or rescaling from your pipeline)")
    if y.ndim != 1 or len(y) != len(x) or not (np.issubdtype(y.dtype, np.integer)
                                                or (np.issubdtype(y.dtype, np.floating) and (y == np.round(y)).all())):
        raise KbenchError(f"{name} pipeline: labels have shape {y.shape} and dtype {y.dtype}; kbench needs integer "
                          f"class indices of shape ({len(x)},) (no one-hot labels)")
    check_label_range(name, y, num_classes)


def check_label_range(name: str, y: np.ndarray, num_classes: int) -> None:
    """Raises KbenchError when a label of ``y`` is outside ``[0, num_classes)``."""
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise KbenchError(f"{name} pipeline: labels range {y.min()}..{y.max()}, outside [0, {num_classes}) for "
                          f"{num_classes} classes; fix the labels or class_names")


class PipelineModule:
    """Your own pipelines in the role of a :class:`~kbench.data.DataModule` (made by
    :func:`from_pipelines`): ``train``/``val``/``test`` are :class:`PipelineSplit`,
    :meth:`loader` returns a :class:`PipelineSequence`. ``batch_size`` is the first
    training batch's size (after :meth:`check`); ``augment`` is False (augment in
    your pipeline); ``deterministic`` False (no frozen-prefix cache)."""

    deterministic = False
    augment = False

    def __init__(self, train, val, test, class_names: list[str], seed: int, class_weight):
        self.source, self.class_names, self.seed, self.class_weight = "pipelines", class_names, seed, class_weight
        self.train, self.val = PipelineSplit("train", train), PipelineSplit("val", val)
        self.test_from = "test" if test is not None else "val" if val is not None else "train"
        self.test = PipelineSplit("test", test) if test is not None else getattr(self, self.test_from)
        self.batch_size, self._weights, self._checked = 0, None, set()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def setup(self) -> PipelineModule:
        """Count each pipeline's batches; idempotent."""
        for s in (self.train, self.val, self.test):
            s.setup()
        return self

    def check(self, image_size: int) -> None:
        """Check the first batch of every pipeline against the model's input size and
        the classes (see :func:`check_batch`); sets :attr:`batch_size`. Once per size."""
        if image_size in self._checked:
            return
        for s in (self.train, self.val, self.test):
            if s.pipeline is not None:
                x, y = next(iter(s.batches()))
                check_batch(s.name, x, y, image_size, self.num_classes)
                s.first_size = len(y)
        self.batch_size = self.train.first_size
        self._checked.add(image_size)

    def notes(self) -> list[str]:
        """What the run's log says about these pipelines."""
        out = [f"data: your own pipelines (train {self.train.kind}, {self.train.n_batches} batches/epoch); "
               "frozen-prefix cache off: kbench cannot know a pipeline gives the same images each pass (pass "
               "NumPy arrays with kbench.data.from_arrays for the cache); a mid-epoch resume skips the trained "
               "batches of a fresh pass (exact only if the pipeline's order repeats; epoch checkpoints are exact)"]
        if self.test_from != "test":
            out.append(f"[yellow]data: no test pipeline: the final test runs on the {self.test_from} pipeline")
        return out

    def class_weights(self) -> dict[int, float] | None:
        """``class_weight`` resolved (``balanced``: one pass over the training labels, once)."""
        if self._weights is None and self.class_weight is not None:
            self._weights = resolve_class_weight(self.class_weight, self.class_names, lambda: self.train.y)
        return self._weights

    def loader(self, split: str, image_size: int | None, shuffle: bool = False,
               limit_batches: int | float | None = None, batch_size: int | None = None, augment: bool = True,
               targets: dict | None = None) -> PipelineSequence:
        """A :class:`PipelineSequence` over ``split``'s pipeline (``shuffle``, ``batch_size``
        and augmentation are the pipeline's own: ``augment`` and ``targets`` are ignored;
        MixUp / CutMix on pipelines are refused before training by
        :func:`kbench.data.external.prepare_data`)."""
        s = {"train": self.train, "val": self.val, "test": self.test}[split]
        return PipelineSequence(s, count_batches(s.n_batches, 1, limit_batches), self.num_classes)


class PipelineSequence(keras.utils.PyDataset):
    """Batches ``(float32 images, int32 labels)`` of a :class:`PipelineSplit`, pulled in
    order from a fresh pass of the pipeline each epoch (keras asks for indices in
    order: one worker, no multiprocessing). :meth:`batch_sizes` is a list the sequence
    fills in as it serves batches (the first batch's size until then)."""

    def __init__(self, split: PipelineSplit, n_batches: int, num_classes: int):
        super().__init__(workers=1, use_multiprocessing=False)
        self.split, self.n_batches, self.num_classes = split, n_batches, num_classes
        self.offset, self.epoch, self._it, self._pos = 0, 0, None, 0
        self.sizes = [split.first_size] * n_batches

    def __len__(self) -> int:
        return self.n_batches - self.offset

    def __getitem__(self, i: int):
        if i >= len(self):
            raise IndexError(i)
        j = i + self.offset
        if self._it is None or j < self._pos:
            self._it, self._pos = self.split.batches(j), j
        while self._pos < j:
            next(self._it)
            self._pos += 1
        x, y = next(self._it)
        self._pos += 1
        check_label_range(self.split.name, y, self.num_classes)
        self.sizes[i] = len(y)
        return x.astype(np.float32, copy=False), y.astype(np.int32, copy=False)

    def batch_sizes(self) -> list[int]:
        """Samples per served batch (filled in while serving; see the class docstring)."""
        return self.sizes

    def tail(self, start: int) -> PipelineSequence:
        """Batches ``start..`` of a fresh pass (the first ``start`` are skipped): exact
        only if the pipeline repeats its order (see the module docstring).

        Raises:
            ValueError: ``start`` is not in ``[0, len(self))``.
        """
        if not 0 <= start < len(self):
            raise ValueError(f"tail start {start} outside [0, {len(self)})")
        out = copy.copy(self)
        out.offset, out._it, out._pos = self.offset + start, None, 0
        out.sizes = self.sizes[start:]
        return out

    def on_epoch_end(self):
        self.epoch += 1
        self._it = None
        if self.split.kind == "pydataset":
            self.split.pipeline.on_epoch_end()


__all__ = ["PipelineModule", "PipelineSequence", "PipelineSplit", "check_batch", "check_label_range",
           "pipeline_kind"]
