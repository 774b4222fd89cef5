"""``python -m nmsparse`` runs the ``nmsparse`` command."""

import sys

from .cli import main

sys.exit(main())
