"""``python -m kbench.parity``: numerical parity of kbench models across Keras backends
(logits, loss, gradients, training steps), each backend in its own worker subprocess.
The parent imports no keras (any single installed backend is enough)."""
