"""What every task provides: outputs → per-image scores → a metric value."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import DoctorConfig
    from .classification import ClassificationTask


@dataclass(frozen=True)
class TaskScores:
    """Per-image results of one context on one split.

    ``per_image`` is what the metric averages (1.0 / 0.0 correctness for top-k) so that two
    contexts on the same images can be compared pair-wise; ``prediction`` is the decoded
    answer (class index) used for the two-way agreement between contexts."""

    metric: str
    per_image: np.ndarray
    prediction: np.ndarray

    @property
    def value(self) -> float:
        return float(self.per_image.mean() * 100.0) if len(self.per_image) else float("nan")

    def values_for(self, index: np.ndarray) -> np.ndarray:
        """Metric values for resampled index sets [B, n] (bootstrap)."""
        return self.per_image[index].mean(axis=-1) * 100.0


def load_plugin(spec: str, base: Path | None) -> Callable[..., Any]:
    """Load ``"file.py:function"`` (path relative to the config's folder)."""
    file, sep, name = spec.rpartition(":")
    if not sep or not file or not name:
        raise ConfigError(f"postprocess.function = {spec!r}: expected 'file.py:function_name'")
    path = Path(file)
    if not path.is_absolute() and base is not None:
        path = base / path
    if not path.is_file():
        raise ConfigError(f"postprocess.function: file {path} not found")
    module_spec = importlib.util.spec_from_file_location(f"quantdoctor_plugin_{path.stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"postprocess.function: cannot import {path}")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:
        raise ConfigError(f"postprocess.function: importing {path} failed: {err!r}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"postprocess.function: {path} has no function {name!r}")
    return fn


def make_task(config: DoctorConfig) -> ClassificationTask:
    from .classification import ClassificationTask

    if config.task == "classification":
        return ClassificationTask.from_config(config)
    raise ConfigError(f"task {config.task!r} is not supported")
