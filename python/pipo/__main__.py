"""``python -m pipo`` runs the ``pipo`` command."""

import sys

from .cli import main

sys.exit(main())
