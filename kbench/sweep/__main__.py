"""``python -m kbench.sweep``: see :mod:`kbench.sweep.cli`."""

import sys

from kbench.sweep.cli import main

sys.exit(main())
