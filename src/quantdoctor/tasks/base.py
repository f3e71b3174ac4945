"""What every task provides: outputs → per-image scores → a metric value."""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError
from ..stats import mcnemar_exact

if TYPE_CHECKING:
    from ..config import DoctorConfig, PostprocessConfig
    from ..data import ImageSet


class TaskScores(ABC):
    """Results of one context on one split, kept per image so that two contexts on the same
    images can be compared pair-wise (paired bootstrap over images) without running any
    model again."""

    metric: str
    n: int
    #: Bootstrap resamples used for CIs (each costs one metric evaluation).
    n_bootstrap: int = 2000

    @property
    @abstractmethod
    def value(self) -> float:
        """The metric on all images (percent for top-k, 0..1 for mAP)."""

    @abstractmethod
    def values_for(self, index: np.ndarray) -> np.ndarray:
        """The metric for each row of resampled image indices [B, n] (bootstrap)."""

    def paired_test(self, other: TaskScores) -> dict[str, Any] | None:
        """An exact paired test against ``other`` where the task has one (else the caller uses
        the paired bootstrap's own p-value)."""
        return None

    @abstractmethod
    def agreement(self, other: TaskScores) -> tuple[str, float, str]:
        """(name, value, note) of the two-way agreement between the two contexts' answers."""


@dataclass(frozen=True)
class ClassificationScores(TaskScores):
    """``per_image`` is 1.0 / 0.0 correctness (top-k); ``prediction`` the top-1 class."""

    metric: str
    per_image: np.ndarray
    prediction: np.ndarray

    @property
    def n(self) -> int:  # type: ignore[override]
        return len(self.per_image)

    @property
    def value(self) -> float:
        return float(self.per_image.mean() * 100.0) if len(self.per_image) else float("nan")

    def values_for(self, index: np.ndarray) -> np.ndarray:
        return self.per_image[index].mean(axis=-1) * 100.0

    def paired_test(self, other: TaskScores) -> dict[str, Any] | None:
        assert isinstance(other, ClassificationScores)
        test = mcnemar_exact(self.per_image, other.per_image)
        return {
            "test": "McNemar exact (paired, per image)",
            "p_value": test.p_value,
            "only_reference_correct": test.only_a,
            "only_context_correct": test.only_b,
        }

    def agreement(self, other: TaskScores) -> tuple[str, float, str]:
        assert isinstance(other, ClassificationScores)
        return (
            "top1_agreement",
            float((self.prediction == other.prediction).mean() * 100.0),
            "two-way: how often both predict the same class; it says nothing about accuracy "
            "against ground truth",
        )


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


class Task(ABC):
    """Host postprocessing + metric of one task."""

    name: str
    metric: str

    @abstractmethod
    def score(self, outputs: dict[str, np.ndarray], images: ImageSet) -> TaskScores:
        """Decode the model outputs of all images of a split and score them against ground
        truth."""


def make_task(config: DoctorConfig, postprocess: PostprocessConfig | None = None) -> Task:
    """The task of a config, with its postprocess (or another one, e.g. a hypothesis or the
    native_postprocess that decodes the full graph)."""
    from .classification import ClassificationTask
    from .detection import DetectionTask

    post = postprocess or config.postprocess
    if config.task == "classification":
        return ClassificationTask.from_config(config, post)
    if config.task == "detection":
        return DetectionTask.from_config(config, post)
    raise ConfigError(f"task {config.task!r} is not supported")


def make_native_task(config: DoctorConfig) -> Task | None:
    """The task that decodes the full graph when end_nodes cut the deployed model."""
    if config.end_nodes and config.native_postprocess is not None:
        return make_task(config, config.native_postprocess)
    return None


def plugin_meta(images: ImageSet, i: int) -> dict[str, Any]:
    """The ``meta`` argument of a postprocess plugin for image ``i`` (DESIGN §3)."""
    m = images.metas[i]
    return {
        "path": str(images.paths[i]),
        "orig_hw": m.orig_hw,
        "scale_hw": m.scale_hw,
        "pad_tl": m.pad_tl,
    }
