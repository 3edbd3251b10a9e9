"""``python -m kbench.compare``: see :mod:`kbench.compare.cli`."""

import sys

from kbench.compare.cli import main

sys.exit(main())
