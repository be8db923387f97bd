"""Progress of a long phase: a live bar on a terminal, a plain line every few seconds otherwise
(under DVC or a Prefect worker), so a run never sits silent."""

from __future__ import annotations

import sys
from collections.abc import Mapping

from tqdm import tqdm

PLAIN_EVERY_SECONDS = 15.0


class Progress:
    def __init__(self, description: str, total: int, unit: str = "step") -> None:
        interactive = sys.stderr.isatty()
        self.bar = tqdm(
            total=total,
            desc=description,
            unit=unit,
            file=sys.stderr,
            mininterval=0.5 if interactive else PLAIN_EVERY_SECONDS,
            dynamic_ncols=interactive,
            ncols=None if interactive else 120,
            ascii=not interactive,
        )
        self.done = 0

    def update(self, done: int, values: Mapping[str, float] | None = None) -> None:
        if values:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in list(values.items())[:3]}, refresh=False)
        self.bar.update(done - self.done)
        self.done = done

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
