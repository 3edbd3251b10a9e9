"""Run ``kbench.run`` with injected faults, for the reliability tests (a script, run
in a subprocess so that a real SIGKILL/SIGINT hits a real run).

    python tests/faults.py [--signal NAME@EPOCH:BATCH] [--rank R] [--nan-at EPOCH] [--noise-at EPOCH] -- <kbench.run args>

EPOCH is the global 1-based epoch, BATCH the 1-based batch within it.
``--signal KILL@4:2`` sends SIGKILL to this process at the end of batch 2 of
epoch 4; ``--nan-at 2`` writes NaN into the logits kernel as epoch 2 begins;
``--noise-at 2`` replaces the logits kernel with large noise as epoch 2 begins
(so epoch 2 validates worse than epoch 1). ``--rank 1``: only the torchrun process of
``RANK`` 1 sends its signal.
"""

from __future__ import annotations

import os
import signal
import sys

import keras
import numpy as np


class Fault(keras.callbacks.Callback):
    def __init__(self, sig=None, at=None, nan_at=None, noise_at=None):
        super().__init__()
        self.sig, self.at, self.nan_at, self.noise_at = sig, at, nan_at, noise_at
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1
        kernel = self.model.get_layer("logits").kernel
        if self.epoch == self.nan_at:
            kernel.assign(np.full(kernel.shape, np.nan, np.float32))
        if self.epoch == self.noise_at:
            kernel.assign(np.random.default_rng(0).normal(0, 50, kernel.shape).astype(np.float32))

    def on_train_batch_end(self, batch, logs=None):
        if self.sig is not None and (self.epoch, batch + 1) == self.at:
            os.kill(os.getpid(), self.sig)


def main(argv: list[str]) -> int:
    split = argv.index("--")
    opts, rest = argv[:split], argv[split + 1:]
    kw = {}
    for flag, value in zip(opts[::2], opts[1::2]):
        if flag == "--signal":
            name, where = value.split("@")
            e, b = where.split(":")
            kw["sig"], kw["at"] = getattr(signal, f"SIG{name}"), (int(e), int(b))
        elif flag == "--rank" and os.environ.get("RANK", "0") != value:
            kw["sig"] = None
        elif flag == "--nan-at":
            kw["nan_at"] = int(value)
        elif flag == "--noise-at":
            kw["noise_at"] = int(value)
    from kbench.run import main as kbench_main

    return kbench_main(rest, callbacks=[Fault(**kw)])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
