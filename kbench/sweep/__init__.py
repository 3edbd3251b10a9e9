"""``python -m kbench.sweep``: grids of ``kbench.run`` trials over config keys, seeds and
backends, each trial its own process, dispatched through Ray (a local instance or a
cluster), resumable, gathered into one rows file (see :mod:`kbench.sweep.cli`).
The driver imports no keras and no backend."""
