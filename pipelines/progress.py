"""Progress of a long phase: a live bar on a terminal, a plain line every few seconds otherwise
(under DVC or a Prefect worker, whose logs read lines), so a run never sits silent."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TextIO

from tqdm import tqdm

from pipelines import interrupts

PLAIN_EVERY_SECONDS = 15.0


def _duration(value: float) -> str:
    seconds = round(value)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 1e12 else f"{value:.4g}"


class Progress:
    def __init__(
        self, description: str, total: int, unit: str = "step", stream: TextIO | None = None
    ) -> None:
        self.stream = stream or sys.stderr
        self.description, self.total, self.unit = description, total, unit
        self.done = 0
        self.values: dict[str, float] = {}
        self.started = self.last_line = time.monotonic()
        self.bar: tqdm | None = None
        if self.stream.isatty():
            self.bar = tqdm(total=total, desc=description, unit=unit, file=self.stream, dynamic_ncols=True)
        else:
            self._line(f"{total} {unit}s to go")

    def _line(self, text: str) -> None:
        self.stream.write(f"{self.description}: {text}\n")
        self.stream.flush()

    def _status(self) -> str:
        elapsed = time.monotonic() - self.started
        parts = [f"{self.done}/{self.total} {self.unit}s"]
        if self.done > 0:
            rate = elapsed / self.done
            parts.append(f"{rate:.3g} s/{self.unit}")
            parts.append(f"ETA {_duration(rate * (self.total - self.done))}")
        parts += [f"{k} {_number(v)}" for k, v in self.values.items()]
        return ", ".join(parts)

    def update(self, done: int, values: Mapping[str, float] | None = None) -> None:
        interrupts.check()  # a Ctrl-C whose KeyboardInterrupt was dropped stops the run here
        if values:
            self.values = {k: float(v) for k, v in list(values.items())[:3]}
        if self.bar is not None:
            if self.values:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in self.values.items()}, refresh=False)
            self.bar.update(done - self.done)
        self.done = done
        now = time.monotonic()
        if self.bar is None and now - self.last_line >= PLAIN_EVERY_SECONDS:
            self.last_line = now
            self._line(self._status())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        else:
            self._line(f"{self._status()} in {_duration(time.monotonic() - self.started)}")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def episode_progress(description: str, num_episodes: int) -> Iterator[Callable[[int, int], None]]:
    """Progress of test episodes, for ``play_test_episodes(..., on_step=...)``: episodes done and
    env steps so far, so a long episode (Atari: up to 27,000 steps) is not a silent one."""
    with Progress(description, num_episodes, unit="test episode") as bar:

        def on_step(episodes_done: int, env_steps: int) -> None:
            bar.update(episodes_done, {"env_steps": env_steps})

        yield on_step
