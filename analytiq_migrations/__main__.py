"""``python -m analytiq_migrations``: the same command line as ``analytiq-migrations``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
