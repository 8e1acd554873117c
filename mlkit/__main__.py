"""``python -m mlkit``: the ``mlkit`` command."""

import sys

from mlkit.cli import main

sys.exit(main())
