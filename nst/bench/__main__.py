"""``python -m nst.bench``: see ``nst.bench.cli``."""

import sys

from nst.bench.cli import main

sys.exit(main())
