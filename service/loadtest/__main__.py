"""``python -m service.loadtest``: the same as the ``lstm-bench`` console script."""

import sys

from service.loadtest.cli import main

sys.exit(main())
