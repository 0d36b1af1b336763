"""`python -m pipewarden.cli`: the `pipewarden` command."""

import sys

from pipewarden.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
