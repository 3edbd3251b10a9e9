"""``python -m kbench.studies``: see :mod:`kbench.studies.cli`."""

import sys

from kbench.studies.cli import main

sys.exit(main())
