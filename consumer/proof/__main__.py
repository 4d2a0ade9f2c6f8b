"""``python -m consumer.proof``."""

import sys

from .cli import main

sys.exit(main())
