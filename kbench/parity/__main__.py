"""``python -m kbench.parity``: see :mod:`kbench.parity.cli`."""

import sys

from kbench.parity.cli import main

sys.exit(main())
