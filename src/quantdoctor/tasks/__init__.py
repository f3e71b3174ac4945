"""Per task: host postprocessing (decoders) and the metric, with per-image scores kept for
paired statistics."""

from .base import TaskScores, make_task
from .classification import ClassificationTask

__all__ = ["ClassificationTask", "TaskScores", "make_task"]
