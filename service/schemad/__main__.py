"""``python -m schemad``."""

import sys

from schemad.cli import main

sys.exit(main())
