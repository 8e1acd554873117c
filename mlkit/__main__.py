import sys

from mlkit.cli import main

sys.exit(main())
