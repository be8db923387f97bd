"""Errors of the episode storage. Every one names the store (or manifest) it is about."""

from __future__ import annotations


class StoreError(Exception):
    """Something is wrong with the store at ``store`` (a URL or path)."""

    def __init__(self, store: str, problem: str) -> None:
        super().__init__(f"{store}: {problem}")
        self.store = store
        self.problem = problem

    def __reduce__(self) -> tuple[object, ...]:
        # Keeps both arguments when the error crosses a process boundary (DataLoader workers).
        return (type(self), (self.store, self.problem))


class StoreNotFoundError(StoreError, FileNotFoundError):
    """There is no store (or manifest) at that location."""


class StoreCorruptedError(StoreError):
    """The store's bytes are damaged: unreadable chunk, arrays shorter than the index, bad index."""


class SchemaVersionError(StoreError):
    """The store was written by a newer version of this code."""


class TableValidationError(StoreError):
    """The per-episode table fails its schema."""
