"""A Ctrl-C whose KeyboardInterrupt is dropped (raised inside a ctypes callback, as when numba
compiles Crafter's world generation) is raised again at the next progress update, silently."""

from __future__ import annotations

import ctypes
import io
import os
import signal

import pytest

from pipelines import interrupts
from pipelines.progress import Progress


def interrupted_inside_a_ctypes_callback() -> None:
    def callback() -> None:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # the handler runs between two bytecodes of this loop
            pass

    ctypes.CFUNCTYPE(None)(callback)()


def test_a_dropped_interrupt_is_raised_at_the_next_progress_update(capfd: pytest.CaptureFixture[str]) -> None:
    bar = Progress("stage", 10, stream=io.StringIO())
    with interrupts.catching_interrupts():
        interrupted_inside_a_ctypes_callback()  # ctypes drops the KeyboardInterrupt
        with pytest.raises(KeyboardInterrupt):
            bar.update(1)
    assert "KeyboardInterrupt" not in capfd.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    interrupts.check()  # handled: nothing pending once the block is left


def test_without_the_handler_nothing_changes() -> None:
    bar = Progress("stage", 10, stream=io.StringIO())
    bar.update(1)
    interrupts.check()
