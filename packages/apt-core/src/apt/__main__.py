"""``python -m apt`` is the ``apt`` command (also under ``torchrun -m apt``)."""

from apt.cli._main import console_main


console_main()
