"""``python -m apt`` is the ``apt`` command (also under ``torchrun -m apt``)."""

import sys

from apt.cli import main


sys.exit(main())
