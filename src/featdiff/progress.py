"""Progress bars that suit a terminal and a log file alike.

In a terminal they refresh often and vanish when done; in a log (CI, nohup) they update rarely so
that a long run leaves a readable trace instead of thousands of carriage returns.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def progress(iterable: Iterable | None = None, **kwargs: Any) -> tqdm:
    interactive = sys.stderr.isatty()
    kwargs.setdefault("mininterval", 0.1 if interactive else 30.0)
    kwargs.setdefault("leave", not interactive)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
