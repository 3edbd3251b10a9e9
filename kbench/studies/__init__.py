"""``python -m kbench.studies NAME``: the seed article's five claims about transfer
learning, each measured by one command on the Ray sweep runner (see
:mod:`kbench.studies.cli` and docs/studies.md). Keras-free: every trial is a
``kbench.run`` subprocess."""
