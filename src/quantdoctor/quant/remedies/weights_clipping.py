"""``weights_clipping: {layers: [...], mode: percentile | manual | mse, values: [...]}``:
a narrower range for the weights of the matched layers (Hailo's command of the same name).
Weights are quantized symmetrically, so a clip is one magnitude: ``manual`` and
``percentile`` keep ``max(-low, high)`` of the given bounds / percentiles of the weight
values; ``mse`` picks, per tensor (or per channel where the target quantizes weights per
channel), the magnitude of least quantization MSE of the weights themselves."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from onnx import numpy_helper

from ..plan import LayerInfo, weight_axis
from ..target import QuantScheme, Target
from .base import PlanEdit, Remedy, RemedyBackend, match_layers, register

#: Candidate clips for ``mse``, as fractions of the full range.
MSE_FRACTIONS = np.linspace(0.2, 1.0, 81)


def mse_clip(w: np.ndarray, scheme: QuantScheme, axis: int | None) -> np.ndarray:
    """The max |w| of least quantize-dequantize MSE, per channel along ``axis`` (or one)."""
    rows = (
        w.reshape(1, -1) if axis is None else np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    ).astype(np.float64)
    amax = np.abs(rows).max(axis=1)
    best = np.full(len(rows), np.inf)
    best_clip = amax.copy()
    for f in MSE_FRACTIONS:
        clip = np.where(amax > 0, f * amax, 1.0)
        scale = (clip / scheme.qmax)[:, None]
        q = np.clip(np.rint(rows / scale), scheme.qmin, scheme.qmax) * scale
        err = ((q - rows) ** 2).sum(axis=1)
        better = err < best
        best = np.where(better, err, best)
        best_clip = np.where(better, f * amax, best_clip)
    return best_clip


@register
class WeightsClipping(Remedy):
    command = "weights_clipping"
    stage = "plan"
    description = "clipped weight ranges"

    def validate(self, layers: Sequence[LayerInfo], target: Target) -> None:
        match_layers(
            self.params.layers, layers, self.where, keep=lambda layer: layer.weight is not None,
            what="layer with weights",
        )

    def apply(self, backend: RemedyBackend) -> PlanEdit:
        matched = match_layers(
            self.params.layers, backend.layers, self.where,
            keep=lambda layer: layer.weight is not None, what="layer with weights",
        )
        inits = {i.name: i for i in backend.float_model.graph.initializer}
        nodes = {n.name: n for n in backend.float_model.graph.node}
        clips: dict[str, tuple[float, ...]] = {}
        ratios = []
        for layer in matched:
            scheme = backend.plan.weight_scheme(layer)
            if scheme is None:
                continue
            w = numpy_helper.to_array(inits[layer.weight]).astype(np.float64)
            axis = weight_axis(nodes[layer.name], w.ndim) if scheme.per_channel else None
            clip = self._clip(w, scheme, axis)
            clips[layer.name] = tuple(float(c) for c in np.atleast_1d(clip))
            ratios.append(float(np.mean(np.atleast_1d(clip)) / max(np.abs(w).max(), 1e-30)))
        return PlanEdit(
            backend.plan.clip_weights(clips),
            {
                "mode": self.params.mode,
                "values": self.params.values,
                "layers": len(clips),
                "mean_kept_fraction_of_range": round(float(np.mean(ratios)), 4) if ratios else None,
            },
        )

    def _clip(self, w: np.ndarray, scheme: QuantScheme, axis: int | None) -> np.ndarray:
        mode, values = self.params.mode, self.params.values
        if mode == "mse":
            return mse_clip(w, scheme, axis)
        if mode == "percentile":
            lo, hi = np.percentile(w, values)
        else:
            lo, hi = values
        return np.asarray(max(-float(lo), float(hi), 0.0))
