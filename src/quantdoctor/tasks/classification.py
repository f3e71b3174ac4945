"""Classification: scores → top-1 / top-5 correctness per image.

>>> task = ClassificationTask(metric="top1")
>>> task.scores({"logits": np.array([[0.1, 2.0], [3.0, 0.0]])}).argmax(1).tolist()
[1, 0]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DataError, QuantdoctorError
from .base import ClassificationScores, Task, load_plugin, plugin_meta

if TYPE_CHECKING:
    from ..config import DoctorConfig, PostprocessConfig
    from ..data import ImageSet


class ClassificationTask(Task):
    """Host postprocessing for classifiers: built-in (pick an output, it holds the scores) or a
    Python plugin ``fn(outputs, meta) -> 1-D scores`` called per image."""

    name = "classification"

    def __init__(
        self,
        metric: str = "top1",
        output: str | None = None,
        plugin: Callable[..., Any] | None = None,
    ) -> None:
        self.k = {"top1": 1, "top5": 5}[metric]
        self.metric = metric
        self.output = output
        self.plugin = plugin

    @classmethod
    def from_config(
        cls, config: DoctorConfig, post: PostprocessConfig | None = None
    ) -> ClassificationTask:
        post = post or config.postprocess
        plugin = None
        if post.type == "python" or post.function:
            if not post.function:
                raise QuantdoctorError(
                    "postprocess.type is python but postprocess.function is not set; give "
                    "'file.py:function'"
                )
            plugin = load_plugin(post.function, config.source.parent if config.source else None)
        elif post.type != "classification":
            raise QuantdoctorError(
                f"postprocess.type {post.type!r} does not fit task classification; use "
                "classification or python"
            )
        return cls(config.metric, post.output, plugin)

    def scores(self, outputs: dict[str, np.ndarray], images: ImageSet | None = None) -> np.ndarray:
        """Class scores [N, C] from raw model outputs."""
        if self.plugin is not None:
            return self._plugin_scores(outputs, images)
        name = self.output or next(iter(outputs))
        if name not in outputs:
            raise QuantdoctorError(
                f"postprocess.output {name!r} is not a model output; outputs: {', '.join(outputs)}"
            )
        x = outputs[name]
        return x.reshape(len(x), -1)

    def _plugin_scores(self, outputs: dict[str, np.ndarray], images: ImageSet | None) -> np.ndarray:
        n = len(next(iter(outputs.values())))
        rows = []
        for i in range(n):
            meta = plugin_meta(images, i) if images is not None else {}
            try:
                row = np.asarray(self.plugin({k: v[i] for k, v in outputs.items()}, meta))  # type: ignore[misc]
            except Exception as err:
                raise QuantdoctorError(
                    f"the postprocess plugin failed on image {meta.get('path', i)}: {err!r}"
                ) from None
            if row.ndim != 1:
                raise QuantdoctorError(
                    f"the postprocess plugin returned shape {row.shape} for image "
                    f"{meta.get('path', i)}; a classifier's plugin returns a 1-D score vector"
                )
            rows.append(row)
        if len({r.shape for r in rows}) > 1:
            raise QuantdoctorError(
                "the postprocess plugin returned score vectors of different lengths"
            )
        return np.stack(rows)

    def score(self, outputs: dict[str, np.ndarray], images: ImageSet) -> ClassificationScores:
        labels = images.labels
        if labels is None:
            raise DataError("the evaluation images have no labels; give data.evaluation.labels")
        scores = self.scores(outputs, images)
        if labels.max(initial=0) >= scores.shape[1]:
            raise DataError(
                f"a label ({int(labels.max())}) is out of range for a model with "
                f"{scores.shape[1]} classes; check the labels file or class_names"
            )
        if self.k == 1:
            top = scores.argmax(axis=1)[:, None]
        else:
            top = np.argsort(-scores, axis=1, kind="stable")[:, : self.k]
        correct = (top == labels[:, None]).any(axis=1).astype(np.float64)
        return ClassificationScores(self.metric, correct, top[:, 0])
