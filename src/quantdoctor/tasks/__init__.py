"""Per task: host postprocessing (decoders) and the metric, with per-image results kept for
paired statistics."""

from .base import ClassificationScores, Task, TaskScores, make_native_task, make_task
from .classification import ClassificationTask

__all__ = [
    "ClassificationScores",
    "ClassificationTask",
    "Task",
    "TaskScores",
    "make_native_task",
    "make_task",
]
