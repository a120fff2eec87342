"""``python -m pneumolab``."""

import sys

from pneumolab.cli import main

sys.exit(main())
