"""Evaluation side of the :class:`~kbench.trainer.Trainer`: validate, test,
predict, the post-fit test (on cached features where the last phase trained on
them) and the end-to-end inference throughput written to ``results.json``.

A mixin, so that ``trainer.py`` stays about running phases; it uses the
trainer's ``_compile``, ``_progress``, ``_limit``, ``fast_dev_run`` and
``inference_batches``.
"""

from __future__ import annotations

import keras
import numpy as np

from kbench.data.module import BatchSequence, DataModule
from kbench.models.transfer import TransferModel
from kbench.recipes.phases import Recipe
from kbench.trainer.cache import FeatureCache
from kbench.trainer.callbacks import ThroughputMeter


class EvaluateMixin:
    """Trainer methods that evaluate or run a model without training it."""

    def _test_after_fit(self, model: TransferModel, datamodule: DataModule, cache: FeatureCache,
                        cut: str | None) -> dict:
        if cut:
            x = cache.get("test", cut)
            seq = BatchSequence(x, cache.labels("test"), datamodule.batch_size, None)
            return {**self._evaluate_seq(model, model.split(cut)[1], seq, "test"), "via_cache": cut}
        return {**self.test(model, datamodule), "via_cache": None}

    def _evaluate_seq(self, model: TransferModel, net: keras.Model, seq: BatchSequence, label: str) -> dict:
        self._compile(net, model, Recipe("eval", []), 1e-3)
        out = net.evaluate(seq, verbose=0, return_dict=True, callbacks=self._progress(label))
        return {"loss": float(out["loss"]), "accuracy": float(out["accuracy"]), "images": sum(seq.batch_sizes())}

    def measure_inference(self, model: TransferModel, datamodule: DataModule) -> dict:
        """End-to-end inference images/s on real test images (2 warm-up batches excluded)."""
        n = 0 if self.fast_dev_run else self.inference_batches
        if n <= 0:
            return {"images_per_s": None, "batches": 0}
        seq = datamodule.loader("test", model.image_size, limit_batches=n + 2)
        net = model.compose(base_training=None)
        meter = ThroughputMeter(seq.batch_sizes(), warmup=2)
        net.predict(seq, verbose=0, callbacks=[meter, *self._progress("inference benchmark")])
        return {"images_per_s": meter.images_per_s, "batches": len(meter.step_times),
                "batch_size": datamodule.batch_size, "first_steps_s": meter.first_steps_s}

    def validate(self, model: TransferModel, datamodule: DataModule) -> dict:
        """Loss and top-1 accuracy of the end-to-end model on the validation split."""
        return self._evaluate(model, datamodule, "val")

    def test(self, model: TransferModel, datamodule: DataModule) -> dict:
        """Loss and top-1 accuracy of the end-to-end model on the test split."""
        return self._evaluate(model, datamodule, "test")

    def _evaluate(self, model: TransferModel, datamodule: DataModule, split: str) -> dict:
        datamodule.setup()
        seq = datamodule.loader(split, model.image_size, limit_batches=self._limit(split))
        return self._evaluate_seq(model, model.compose(base_training=None), seq, split)

    def predict(self, model: TransferModel, datamodule: DataModule, split: str = "test") -> np.ndarray:
        """Class probabilities ``float32 (N, num_classes)`` for ``split``."""
        datamodule.setup()
        seq = datamodule.loader(split, model.image_size, limit_batches=self._limit(split))
        out = model.compose(base_training=None).predict(seq, verbose=0, callbacks=self._progress("predict"))
        out = np.asarray(out, np.float32)
        return np.asarray(keras.ops.softmax(out, axis=-1)) if model.from_logits else out
