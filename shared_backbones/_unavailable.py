"""Entry point for a command whose pipeline is not part of this version yet: a clear message, exit code 2."""

from __future__ import annotations

import sys


def unavailable(prog: str, what: str) -> int:
    """Print ``<prog>: error: <what> is not available in this version of convsuite`` and return 2."""
    print(f"{prog}: error: {what} is not available in this version of convsuite "
          f"(see README: 'What works today')", file=sys.stderr)
    return 2
