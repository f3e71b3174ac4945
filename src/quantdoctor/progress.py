"""A minimal progress interface so that the engine can report long work without knowing
about the terminal (the console provides a rich implementation)."""

from __future__ import annotations

import time
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


class StepTimer:
    """Seconds spent per named part of a step, for the evidence (``timer("coverage")`` as a
    context manager; repeated names add up)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 3)
