"""``python -m kbench.bench``: see :mod:`kbench.bench.cli`."""

import sys

from kbench.bench.cli import main

sys.exit(main())
