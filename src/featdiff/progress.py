"""Progress bars that suit a terminal and a log file alike.

In a terminal they refresh often and vanish when done; in a log (CI, nohup) they update rarely so
that a long run leaves a readable trace instead of thousands of carriage returns. Inside
`silenced()` no bar is drawn: a stage that shows its own bar (a federated run's rounds) keeps the
loops it calls (each client's local training) from drawing hundreds more.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from tqdm.auto import tqdm

_SILENCED: ContextVar[bool] = ContextVar("featdiff_progress_silenced", default=False)


@contextmanager
def silenced() -> Iterator[None]:
    """No progress bar is drawn inside the block (in this thread or task)."""
    token = _SILENCED.set(True)
    try:
        yield
    finally:
        _SILENCED.reset(token)


def progress(iterable: Iterable | None = None, **kwargs: Any) -> tqdm:
    interactive = sys.stderr.isatty()
    kwargs.setdefault("mininterval", 0.1 if interactive else 30.0)
    kwargs.setdefault("leave", not interactive)
    kwargs.setdefault("dynamic_ncols", True)
    if _SILENCED.get():
        kwargs["disable"] = True
    return tqdm(iterable, **kwargs)
