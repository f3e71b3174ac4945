"""Where a run's time and memory went: wall time and peak resident memory per step.

>>> profiler = StepProfiler()
>>> with profiler.measure("setup"):
...     _ = sum(range(10))
>>> sorted(profiler.steps["setup"])
['peak_rss_mb', 'rss_mb', 'wall_s']

The peak is sampled (every :data:`SAMPLE_S` seconds, from ``/proc/self/statm``) while a step
runs, so that each step gets its own peak, not the process's peak so far; where ``/proc`` is
missing, the process's peak so far (``getrusage``) stands in.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: Seconds between two samples of the resident memory during a step.
SAMPLE_S = 0.05
_STATM = Path("/proc/self/statm")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_mb() -> float | None:
    """The process's resident memory now (MB), or None where it cannot be read."""
    try:
        return int(_STATM.read_text().split()[1]) * _PAGE / 2**20
    except (OSError, ValueError, IndexError):
        return None


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (MB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS


class StepProfiler:
    """Wall time, peak and final resident memory of each named step (``steps``: name →
    ``{"wall_s", "peak_rss_mb", "rss_mb"}``; a repeated name adds its time)."""

    def __init__(self) -> None:
        self.steps: dict[str, dict[str, float]] = {}

    @contextmanager
    def measure(self, name: str) -> Iterator[None]:
        peak = [rss_mb() or 0.0]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(SAMPLE_S):
                now = rss_mb()
                if now is not None and now > peak[0]:
                    peak[0] = now

        sampler = threading.Thread(target=sample, name="quantdoctor-rss", daemon=True)
        sampled = rss_mb() is not None
        if sampled:
            sampler.start()
        start = time.perf_counter()
        try:
            yield
        finally:
            wall = time.perf_counter() - start
            done.set()
            if sampled:
                sampler.join()
            now = rss_mb()
            top = max(peak[0], now or 0.0) if sampled else peak_rss_mb()
            before = self.steps.get(name, {})
            self.steps[name] = {
                "wall_s": round(before.get("wall_s", 0.0) + wall, 3),
                "peak_rss_mb": round(max(before.get("peak_rss_mb", 0.0), top), 1),
                "rss_mb": round(now if now is not None else top, 1),
            }

    def summary(self) -> dict[str, Any]:
        """The steps and the whole run (total wall time, highest peak)."""
        return {
            "steps": self.steps,
            "total_wall_s": round(sum(s["wall_s"] for s in self.steps.values()), 3),
            "peak_rss_mb": round(max((s["peak_rss_mb"] for s in self.steps.values()),
                                     default=0.0), 1),
        }


__all__ = ["StepProfiler", "peak_rss_mb", "rss_mb"]
