"""``python -m rstar ...``: the same as the ``rstar`` command."""

from rstar.cli import main

if __name__ == "__main__":
    main()
