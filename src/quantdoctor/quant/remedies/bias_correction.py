"""``bias_correction: {layers: [...]}``: empirical bias correction (Nagel et al. 2019, §4.2;
Hailo's and AIMET's command of the same name). Quantized weights (and the quantized inputs
that reach a layer) shift the mean of its output; the shift per output channel is measured
on the calibration images and removed through the layer's bias, layer by layer in graph
order, each with the corrections of the layers before it applied.

It changes the float function on purpose (it compensates quantization), so it applies to the
model that is quantized, not to ``fp_optimized``; and it is computed for the recipe's plan
and ranges, so it is applied to quantized models built with the recipe's plan.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from ..plan import LayerInfo
from ..target import Target
from .base import FloatModelEdit, Remedy, RemedyBackend, match_layers, register

#: Ops whose bias (input 2, added per output channel) can absorb a correction.
CORRECTABLE_OPS = ("Conv", "Gemm", "ConvTranspose")


def correctable(layer: LayerInfo) -> bool:
    return layer.weight is not None and layer.op_type in CORRECTABLE_OPS


def channel_sum(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Sum per output channel (axis 1 of Conv/Gemm outputs) over every other axis, and how
    many values each channel summed."""
    axes = tuple(a for a in range(x.ndim) if a != 1)
    return x.astype(np.float64).sum(axis=axes), x.size // x.shape[1]


def with_bias_deltas(model: onnx.ModelProto, deltas: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` whose layers (by node name) have ``bias - delta`` (a bias input is
    added where a layer has none)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {i.name: i for i in g.initializer}
    for node in g.node:
        delta = deltas.get(node.name)
        if delta is None:
            continue
        name = f"{node.name}__bias_corrected"
        if len(node.input) > 2 and node.input[2]:
            b = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
            node.input[2] = name
        else:
            b = np.zeros(delta.shape)
            while len(node.input) < 2:
                node.input.append("")
            node.input.append(name)
        g.initializer.append(numpy_helper.from_array((b - delta).astype(np.float32), name))
    used = {i for n in g.node for i in n.input}
    for init in [i for i in g.initializer if i.name not in used]:
        g.initializer.remove(init)
    return out


@register
class BiasCorrection(Remedy):
    command = "bias_correction"
    stage = "correction"
    description = "empirical bias correction on calibration images"

    def _layers(self, layers: Sequence[LayerInfo]) -> list[LayerInfo]:
        patterns = self.params.layers or ["*"]
        return match_layers(patterns, layers, self.where, keep=correctable,
                            what="Conv/Gemm layer")

    def validate(self, layers: Sequence[LayerInfo], target: Target) -> None:
        self._layers(layers)

    def apply(self, backend: RemedyBackend) -> FloatModelEdit:
        layers = [
            layer for layer in self._layers(backend.layers)
            if backend.plan.weight_scheme(layer) is not None
        ]
        float_means = self._float_means(backend, layers)
        deltas: dict[str, np.ndarray] = {}

        def on_layer(layer: LayerInfo, quant_mean: np.ndarray) -> np.ndarray | None:
            ref = float_means.get(layer.name)
            if ref is None or ref.shape != quant_mean.shape:
                return None
            deltas[layer.name] = quant_mean - ref
            return deltas[layer.name]

        backend.walk_quantized(layers, on_layer)
        shifts = {k: float(np.abs(v).max()) for k, v in deltas.items()}
        top = sorted(shifts.items(), key=lambda kv: -kv[1])[:8]
        return FloatModelEdit(
            with_bias_deltas(backend.float_model, deltas),
            float_equivalent=False,
            summary={
                "layers": len(deltas),
                "largest_mean_shift_removed": {k: round(v, 6) for k, v in top},
            },
        )

    @staticmethod
    def _float_means(backend: RemedyBackend, layers: list[LayerInfo]) -> dict[str, np.ndarray]:
        """Per-channel means of each layer's float pre-activation over the calibration
        images (one float pass, reduced batch by batch)."""
        names = {layer.name: backend.preactivation(layer) for layer in layers}
        sums: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}
        for batch in backend.float_tensors(list(dict.fromkeys(names.values()))):
            for layer in layers:
                total, count = channel_sum(batch[names[layer.name]])
                sums[layer.name] = sums.get(layer.name, 0) + total
                counts[layer.name] = counts.get(layer.name, 0) + count
        return {k: sums[k] / counts[k] for k in sums}
