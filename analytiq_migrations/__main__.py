"""``python -m analytiq_migrations``: the same command line as ``analytiq-migrations``."""

from .cli import console

if __name__ == "__main__":
    console()
