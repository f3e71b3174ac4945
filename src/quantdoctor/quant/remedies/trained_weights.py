"""``trained_weights: {model: trained.onnx}``: quantize the weights of another float ONNX
model of the same graph, e.g. one trained with quantization-aware training through
``quantdoctor.train`` (``save_trained_weights``), instead of the model's own. The native and
fp_optimized contexts keep the original model, so the three-way test measures the trained
quantized model against the original float one.

Weights are matched node by node (same node name and op, same input position), so a model
exported again from the same network with other initializer names still matches; a node or
a shape that does not match is an error naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ...errors import ConfigError
from ..plan import LayerInfo
from ..target import Target
from .base import FloatModelEdit, Remedy, RemedyBackend, register


def _float_inits(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {
        i.name: i
        for i in model.graph.initializer
        if onnx.helper.tensor_dtype_to_np_dtype(i.data_type).kind == "f"
    }


def with_weights_of(
    model: onnx.ModelProto, trained: onnx.ModelProto, where: str
) -> tuple[onnx.ModelProto, int, float]:
    """A copy of ``model`` whose float initializers feeding its nodes are ``trained``'s at the
    same node and input position; (copy, how many tensors were replaced, the largest
    relative change). Raises :class:`ConfigError` where the graphs differ."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    mine = _float_inits(out)
    theirs = _float_inits(trained)
    twins = {n.name: n for n in trained.graph.node}
    new: dict[str, np.ndarray] = {}
    added: list[onnx.TensorProto] = []
    for node in out.graph.node:
        inputs = [(k, name) for k, name in enumerate(node.input) if name in mine]
        if not inputs:
            continue
        twin = twins.get(node.name)
        if twin is not None and twin.op_type == node.op_type:
            # a bias the trained model has and the model lacks (BatchNorm folded into a
            # convolution without bias): added
            for k in range(len(node.input), len(twin.input)):
                if twin.input[k] in theirs:
                    while len(node.input) < k:
                        node.input.append("")
                    name = f"{node.name}__trained_input{k}"
                    node.input.append(name)
                    added.append(
                        numpy_helper.from_array(numpy_helper.to_array(theirs[twin.input[k]]), name)
                    )
        if twin is None or twin.op_type != node.op_type:
            raise ConfigError(
                f"{where}: the trained model has no {node.op_type} node '{node.name}'; it must "
                "be the same graph (written by quantdoctor.train.save_trained_weights)"
            )
        for k, name in inputs:
            other = twin.input[k] if k < len(twin.input) else ""
            if other not in theirs:
                continue  # e.g. a bias the trained model lacks: keep the original
            value = numpy_helper.to_array(theirs[other])
            base = numpy_helper.to_array(mine[name])
            if value.shape != base.shape:
                raise ConfigError(
                    f"{where}: node '{node.name}' input {k} has shape {list(value.shape)} in "
                    f"the trained model but {list(base.shape)} in the model"
                )
            new[name] = value.astype(base.dtype)
    change = 0.0
    for init in out.graph.initializer:
        if init.name in new:
            base = numpy_helper.to_array(init).astype(np.float64)
            scale = float(np.abs(base).max()) or 1.0
            change = max(change, float(np.abs(new[init.name] - base).max()) / scale)
            init.CopyFrom(numpy_helper.from_array(new[init.name], init.name))
    out.graph.initializer.extend(added)
    return out, len(new) + len(added), change


@register
class TrainedWeights(Remedy):
    command = "trained_weights"
    stage = "correction"
    description = "weights trained elsewhere (QAT), quantized with the recipe"

    @property
    def path(self) -> Path:
        return Path(self.params.model)

    def validate(self, layers: Sequence[LayerInfo], target: Target) -> None:
        if not self.path.is_file():
            raise ConfigError(
                f"{self.where}.model: {self.path} not found; write it with "
                "quantdoctor.train.save_trained_weights(module, path)"
            )

    def apply(self, backend: RemedyBackend) -> FloatModelEdit:
        try:
            trained = onnx.load(str(self.path))
        except Exception as err:  # noqa: BLE001 - onnx raises several kinds
            raise ConfigError(
                f"{self.where}.model: {self.path} is not an ONNX model ({err})"
            ) from None
        model, count, change = with_weights_of(backend.float_model, trained, self.where)
        return FloatModelEdit(
            model,
            float_equivalent=False,
            summary={
                "model": str(self.path),
                "tensors": count,
                "largest_relative_change": round(change, 6),
            },
        )
