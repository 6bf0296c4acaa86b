"""``python -m pixnet`` (also what ``torchrun -m pixnet`` runs)."""

import sys

from pixnet.cli import main

sys.exit(main())
