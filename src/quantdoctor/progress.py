"""A minimal progress interface so that the engine can report long work without knowing
about the terminal (the console provides a rich implementation)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

Advance = Callable[[int], None]


class Progress(Protocol):
    def task(self, description: str, total: int) -> AbstractContextManager[Advance]: ...


class NullProgress:
    """Reports nothing (the Python API's default)."""

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        yield lambda n=1: None
