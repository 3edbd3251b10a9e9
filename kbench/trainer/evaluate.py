"""Evaluation side of the :class:`~kbench.trainer.Trainer`: validate, test,
predict, the post-fit test (on cached features where the last phase trained on
them) and the end-to-end inference throughput written to ``results.json``.

An :class:`Evaluator` object the trainer holds (composition, not a mixin): it
needs only the trainer's :class:`~kbench.trainer.loop.LoopTools` (batch limits,
callbacks, compile) and the number of inference batches, and says so in its
constructor.
"""

from __future__ import annotations

import keras
import numpy as np

from kbench.data import BatchSequence, DataModule
from kbench.models import TransferModel
from kbench.trainer.cache import FeatureCache
from kbench.trainer.callbacks import ThroughputMeter
from kbench.trainer.loop import LoopTools


class Evaluator:
    """Runs a model without training it.

    Args:
        tools: the trainer's loop tools.
        inference_batches: batches timed end to end by :meth:`inference` (0 = skip).
    """

    def __init__(self, tools: LoopTools, inference_batches: int = 10):
        self.tools, self.inference_batches = tools, inference_batches

    def evaluate_sequence(self, model: TransferModel, net: keras.Model, seq, label: str) -> dict:
        """``{"loss", "accuracy", "images"}`` of ``net`` (all or part of ``model``) on ``seq``."""
        self.tools.compile(net, model.from_logits, 1e-3)
        out = net.evaluate(seq, verbose=0, return_dict=True, callbacks=self.tools.callbacks(label))
        return {"loss": float(out["loss"]), "accuracy": float(out["accuracy"]), "images": sum(seq.batch_sizes())}

    def evaluate(self, model: TransferModel, datamodule: DataModule, split: str) -> dict:
        """Loss, top-1 accuracy and image count of the end-to-end model on ``split``."""
        datamodule.setup()
        seq = datamodule.loader(split, model.image_size, limit_batches=self.tools.limit(split), augment=False)
        return self.evaluate_sequence(model, model.compose(base_training=None), seq, split)

    def test_after_fit(self, model: TransferModel, datamodule: DataModule, cache: FeatureCache,
                       cut: str | None) -> dict:
        """The test split's metrics after ``fit``: on the cached features at ``cut`` (the
        last phase's cut) when there is one, else end to end; ``via_cache`` says which."""
        if cut:
            x = cache.get("test", cut)
            seq = BatchSequence(x, cache.labels("test"), datamodule.batch_size, None)
            return {**self.evaluate_sequence(model, model.split(cut)[1], seq, "test"), "via_cache": cut}
        return {**self.evaluate(model, datamodule, "test"), "via_cache": None}

    def inference(self, model: TransferModel, datamodule: DataModule) -> dict:
        """End-to-end inference images/s on real test images (2 warm-up batches excluded)."""
        n = 0 if self.tools.fast_dev_run else self.inference_batches
        if n <= 0:
            return {"images_per_s": None, "batches": 0}
        seq = datamodule.loader("test", model.image_size, limit_batches=n + 2)
        net = model.compose(base_training=None)
        meter = ThroughputMeter(seq.batch_sizes(), warmup=2)
        net.predict(seq, verbose=0, callbacks=[meter, *self.tools.callbacks("inference benchmark")])
        return {"images_per_s": meter.images_per_s, "batches": len(meter.step_times),
                "batch_size": datamodule.batch_size, "first_steps_s": meter.first_steps_s}

    def predict(self, model: TransferModel, datamodule: DataModule, split: str = "test") -> np.ndarray:
        """Class probabilities ``float32 (N, num_classes)`` for ``split``."""
        datamodule.setup()
        seq = datamodule.loader(split, model.image_size, limit_batches=self.tools.limit(split), augment=False)
        out = model.compose(base_training=None).predict(seq, verbose=0, callbacks=self.tools.callbacks("predict"))
        out = np.asarray(out, np.float32)
        return np.asarray(keras.ops.softmax(out, axis=-1)) if model.from_logits else out


__all__ = ["Evaluator"]
