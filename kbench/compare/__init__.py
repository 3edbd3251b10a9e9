"""``python -m kbench.compare``: one config run on several backends and seeds
(``kbench.run`` subprocesses), and the report (tables, plots) rendered from ``rows.json``.
The parent imports no keras (any single installed backend is enough)."""
