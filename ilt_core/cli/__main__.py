"""``python -m ilt_core.cli ...``: the same as ``ilt ...`` (torchrun needs a module)."""

import sys

from ilt_core.cli.main import main

sys.exit(main())
