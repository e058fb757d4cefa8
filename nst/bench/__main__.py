"""``python -m nst.bench``: see ``nst.bench.races``."""

import sys

from nst.bench.races import main

sys.exit(main())
