"""``python -m kbench.bench``: throughput (images/s, step times, MFU) per model, size,
batch, precision and backend, each backend in its own worker subprocess.
The parent imports no keras (any single installed backend is enough)."""
