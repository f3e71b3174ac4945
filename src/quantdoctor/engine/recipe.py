"""The engine side of the remedies: what a remedy may ask for (:class:`RecipeBackend`) and the
layer-by-layer walk of the quantized model that bias correction needs
(:func:`walk_quantized`). Remedies decide edits; this module runs models for them.

>>> backend = RecipeBackend(engine, engine.images("calibration"), plan, ranges)  # doctest: +SKIP
>>> edit = remedy.apply(backend)                                                 # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from ..data import ImageSet
from ..quant import LayerInfo, QuantPlan, Ranges, Target, build_qdq, calibrate
from ..quant.qdq import FLOAT_SUFFIX, tensors_to_calibrate
from ..quant.remedies.base import LayerCallback
from ..quant.remedies.bias_correction import with_bias_deltas
from .subgraph import ChunkedModel, _Session

if TYPE_CHECKING:
    from .engine import Engine


@dataclass
class RemedyRecord:
    """What one recipe command did (for the report): its stage, time and summary."""

    index: int
    command: str
    stage: str
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "command": self.command,
            "stage": self.stage,
            "seconds": round(self.seconds, 3),
            "summary": self.summary,
        }


def preactivation_name(layer: LayerInfo, model: onnx.ModelProto) -> str:
    """The tensor a layer's node computes (before its fused activation)."""
    node = next(n for n in model.graph.node if n.name == layer.name)
    return node.output[0]


class RecipeBackend:
    """The engine's answers to a remedy, over ``images`` (the calibration images) and the
    recipe's state so far (``plan``, ``ranges``); implements
    :class:`~quantdoctor.quant.remedies.base.RemedyBackend`."""

    def __init__(
        self,
        engine: Engine,
        images: ImageSet | None,
        plan: QuantPlan | None = None,
        ranges: Ranges | None = None,
        model: onnx.ModelProto | None = None,
    ) -> None:
        self.engine = engine
        self.images = images
        self._plan = plan
        self._ranges = ranges or {}
        self._model = model

    @property
    def target(self) -> Target:
        return self.engine.target

    @property
    def float_model(self) -> onnx.ModelProto:
        return self._model if self._model is not None else self.engine.float_model

    @property
    def layers(self) -> list[LayerInfo]:
        return self.engine.layers

    @property
    def plan(self) -> QuantPlan:
        return self._plan if self._plan is not None else self.engine.plan()

    @property
    def ranges(self) -> Ranges:
        return self._ranges

    def _images(self) -> ImageSet:
        if self.images is None:
            raise RuntimeError("this recipe stage has no images")  # a stage-order bug
        return self.images

    def tensors_to_calibrate(self) -> list[str]:
        return tensors_to_calibrate(self.float_model, self.layers)

    def float_tensors(self, names: Sequence[str]) -> Iterator[dict[str, np.ndarray]]:
        return self.engine.capture("fp_optimized", list(names), self._images())

    def tensor_bytes(self, names: Sequence[str]) -> dict[str, int]:
        images = self._images()
        first = next(iter(self.engine.capture("fp_optimized", list(names), images.subset([0]))))
        return {n: int(first[n].nbytes) * len(images) for n in names}

    def float_minmax(self, names: Sequence[str]) -> Ranges:
        return calibrate(
            lambda: self.engine.capture_minmax("fp_optimized", list(names), self._images()),
            names,
            "minmax",
        )

    def preactivation(self, layer: LayerInfo) -> str:
        return preactivation_name(layer, self.float_model)

    def task(self, description: str, total: int) -> AbstractContextManager[Callable[..., None]]:
        return self.engine.progress.task(description, total)

    def input_batches(self) -> Iterator[np.ndarray]:
        return self.engine.batches(self._images(), "fp_optimized")

    def trainable_copy(self) -> Any:
        from ..train import require_torch

        require_torch()
        from ..train.convert import trainable_copy

        return trainable_copy(self.engine, self.float_model, self.plan, self.ranges)

    def walk_quantized(self, layers: Sequence[LayerInfo], on_layer: LayerCallback) -> None:
        walk_quantized(self.engine, self.float_model, self.plan, self.ranges, self._images(),
                       layers, on_layer)


def walk_quantized(
    engine: Engine,
    model: onnx.ModelProto,
    plan: QuantPlan,
    ranges: Ranges,
    images: ImageSet,
    layers: Sequence[LayerInfo],
    on_layer: LayerCallback,
) -> None:
    """Run the quantized model one layer at a time over ``images``, keeping the quantized
    tensors that later layers read in memory; at each of ``layers`` report the per-channel
    mean of its quantized pre-activation and apply the bias change it returns before going
    on (so every later layer sees the corrected upstream)."""
    wanted = {layer.name for layer in layers}
    chunked = ChunkedModel(model, engine.layers, layers_per_chunk=1)
    graph_input = engine.input.name
    values: dict[str, np.ndarray] = {
        graph_input: np.concatenate(list(engine.batches(images, "fp_optimized")))
    }
    n = len(images)
    last_read: dict[str, int] = {}
    for chunk in chunked.chunks:
        for name in chunk.inputs:
            last_read[name] = chunk.index
    fixed = engine.input.fixed_batch
    batch = engine.batch_size
    with engine.progress.task("bias correction (layer by layer)", len(chunked.chunks)) as advance:
        for chunk in chunked.chunks:
            dtypes = {k: v.dtype for k, v in values.items()}
            sub = chunked.submodel(chunk.index, chunk.index, dtypes)
            # Chunk inputs were quantized upstream (they hold dequantized values): only the
            # real graph input is quantized as an input here.
            chunk_ranges = {
                k: v for k, v in ranges.items() if k == graph_input or k not in chunk.inputs
            }
            target = next((la for la in chunk.layers if la.name in wanted), None)
            extra: list[str] = []
            if target is not None:
                pre = preactivation_name(target, sub)
                extra = [pre + FLOAT_SUFFIX if pre == target.output else pre]
            outs = _run_chunk(sub, plan, ranges=chunk_ranges, layers=chunk.layers,
                              values=values, extra=extra, n=n, batch=batch, fixed=fixed)
            if target is not None:
                x = outs.pop(extra[0])
                mean = x.astype(np.float64).mean(axis=tuple(a for a in range(x.ndim) if a != 1))
                delta = on_layer(target, mean)
                if delta is not None:
                    sub = with_bias_deltas(sub, {target.name: np.asarray(delta)})
                    outs = _run_chunk(sub, plan, ranges=chunk_ranges, layers=chunk.layers,
                                      values=values, extra=[], n=n, batch=batch, fixed=fixed)
            values.update(outs)
            for name in [k for k, last in last_read.items() if last == chunk.index]:
                values.pop(name, None)
            advance(1)


def _run_chunk(
    sub: onnx.ModelProto,
    plan: QuantPlan,
    *,
    ranges: Ranges,
    layers: list[LayerInfo],
    values: dict[str, np.ndarray],
    extra: list[str],
    n: int,
    batch: int,
    fixed: int | None,
) -> dict[str, np.ndarray]:
    """One chunk quantized as ``plan`` (float emulation), run on ``values`` in batches."""
    qsub = build_qdq(sub, plan, ranges, layers)
    known = {o.name for o in qsub.graph.output}
    qsub.graph.output.extend(
        onnx.helper.make_empty_tensor_value_info(e) for e in extra if e not in known
    )
    session = _Session(qsub, emulate=True, fixed_batch=fixed)
    step = fixed or batch
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, n, step):
        feeds = {k: v[start : start + step] for k, v in values.items() if k in session.input_names}
        parts.append(session.run(feeds, min(step, n - start)))
    return {k: np.concatenate([p[k] for p in parts]) for k in session.output_names}
