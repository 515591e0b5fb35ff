"""The one exception type that means "the user asked for something we cannot do".

The CLI turns it into a one-line message and exit status 2; everything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad input: the message names the problem and how to fix it, on one line."""


def exit_status(main: Callable[[], None], program: str) -> int:
    """Runs a script's `main` as the CLI runs a command: a UserError becomes one line on stderr and
    status 2, so that the benchmarks refuse bad input the way `featdiff` does."""
    try:
        main()
    except UserError as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        return 2
    return 0
