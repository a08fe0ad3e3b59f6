"""``python -m service``: the same as ``lstm-serve``."""

from service.cli import main

main()
