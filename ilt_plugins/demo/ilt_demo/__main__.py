"""``python -m ilt_demo``: the demo (see :mod:`ilt_demo.demo`)."""

import sys

from ilt_demo.demo import main

sys.exit(main())
