"""Ctrl-C (and SIGTERM) that is never lost.

Python turns SIGINT into a ``KeyboardInterrupt`` wherever the main thread happens to be; inside a
ctypes callback (numba compiling Crafter's world generation, for one) or a ``__del__`` it is
printed ("Exception ignored ... KeyboardInterrupt") and dropped, and the run would go on. Under
:func:`catching_interrupts` the signal is also remembered, the dropped exception is not printed,
and :func:`check` (called by every progress update) raises it again.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

_pending = False


def _interrupt(signum: int, frame: FrameType | None) -> None:
    global _pending
    _pending = True
    raise KeyboardInterrupt


def check() -> None:
    """Raise ``KeyboardInterrupt`` if an interrupt arrived (its first one may have been dropped)."""
    if _pending:
        raise KeyboardInterrupt


@contextlib.contextmanager
def catching_interrupts(*signals: signal.Signals) -> Iterator[None]:
    """SIGINT (and ``signals``, e.g. SIGTERM) raise ``KeyboardInterrupt`` and are remembered
    while the block runs (main thread only; elsewhere nothing changes)."""
    global _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = (signal.SIGINT, *signals)
    previous = {s: signal.getsignal(s) for s in caught}
    previous_hook = sys.unraisablehook

    def quiet_hook(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            previous_hook(unraisable)
        # else: remembered; check() raises it again (no "Exception ignored" traceback)

    _pending = False
    sys.unraisablehook = quiet_hook
    for s in caught:
        signal.signal(s, _interrupt)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        sys.unraisablehook = previous_hook
        _pending = False
