"""The console output of a stage, kept: what the stage prints (progress lines, warnings, its error
or "done" line) also goes to ``.iris/logs/<stage>.log`` in the workspace, appended run after run
under a header line, and each run's part is logged to the stage's MLflow run
(:mod:`pipelines.stages.tracking`).

Python-level: ``sys.stdout`` and ``sys.stderr`` are teed while the block runs; output that other
processes write to the same terminal (environment workers, DVC) is not in the file. A terminal's
live progress bar is kept as its last state (the text after the last carriage return of each
line). A log file that cannot be written (a full disk) is given up on silently: the console
still shows everything.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO


@dataclass
class ConsoleLog:
    """The log file and where this run's part of it starts."""

    path: Path
    start: int

    def text(self) -> str:
        """This run's part of the file so far."""
        try:
            with self.path.open("rb") as f:
                f.seek(self.start)
                return f.read().decode(errors="replace")
        except OSError:
            return ""


_active: list[ConsoleLog] = []


def active() -> ConsoleLog | None:
    """The log being written by the innermost :func:`console_log` block, if any."""
    return _active[-1] if _active else None


class _Tee:
    """Writes to the console stream as it is and to the log file line by line."""

    def __init__(self, stream: TextIO, sink: _Sink) -> None:
        self.stream = stream
        self.sink = sink
        self.pending = ""

    def write(self, text: str) -> int:
        written = self.stream.write(text)
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self.sink.write(line.rpartition("\r")[2] + "\n")
        return written

    def flush(self) -> None:
        self.stream.flush()
        self.sink.flush()

    def close_line(self) -> None:
        if self.pending.rpartition("\r")[2].strip():
            self.sink.write(self.pending.rpartition("\r")[2] + "\n")
        self.pending = ""

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    def __getattr__(self, name: str) -> object:
        return getattr(self.stream, name)


class _Sink:
    def __init__(self, file: TextIO) -> None:
        self.file: TextIO | None = file

    def write(self, text: str) -> None:
        if self.file is None:
            return
        try:
            self.file.write(text)
            self.file.flush()
        except OSError:
            self.close()

    def flush(self) -> None:
        if self.file is not None:
            try:
                self.file.flush()
            except OSError:
                self.close()

    def close(self) -> None:
        file, self.file = self.file, None
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()


@contextlib.contextmanager
def console_log(path: Path, title: str) -> Iterator[ConsoleLog | None]:
    """Tee ``sys.stdout`` and ``sys.stderr`` into ``path`` (appended) while the block runs.

    Yields None, and tees nothing, if the file cannot be opened (e.g. a read-only workspace)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        file = path.open("a", encoding="utf-8", errors="replace")
    except OSError:
        yield None
        return
    log = ConsoleLog(path, file.tell())
    sink = _Sink(file)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %z")
    sink.write(f"--- {title}: started {stamp}, pid {os.getpid()} ---\n")
    out, err = sys.stdout, sys.stderr
    tees = [_Tee(out, sink), _Tee(err, sink)]
    sys.stdout, sys.stderr = tees
    _active.append(log)
    try:
        yield log
    finally:
        _active.remove(log)
        sys.stdout, sys.stderr = out, err
        for tee in tees:
            tee.close_line()
        sink.close()
