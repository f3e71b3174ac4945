"""``activation_clipping: {layers: [...], mode: percentile | manual | mse, values: [...]}``:
narrower ranges for the outputs of the matched layers, so that rare outliers stop wasting
quantization levels (Hailo's command of the same name).

- ``manual``: ``values: [low, high]`` as given (the range is widened to contain 0, as every
  range is);
- ``percentile``: ``values: [low, high]`` percentiles of the tensor over the calibration
  images (exact);
- ``mse``: the range of least quantization MSE of the tensor.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from ..calibration import Ranges, clip_range
from ..plan import LayerInfo
from ..target import Target
from .base import RangeEdit, Remedy, RemedyBackend, match_layers, register

#: Captured values held at once while computing percentiles/MSE ranges (bytes).
MEMORY_BUDGET = 512 << 20


def tensor_groups(
    names: Sequence[str], sizes: dict[str, int], budget: int = MEMORY_BUDGET
) -> Iterator[list[str]]:
    """Consecutive groups of tensors whose captured values fit in ``budget`` together."""
    group: list[str] = []
    used = 0
    for name in names:
        if group and used + sizes.get(name, 0) > budget:
            yield group
            group, used = [], 0
        group.append(name)
        used += sizes.get(name, 0)
    if group:
        yield group


@register
class ActivationClipping(Remedy):
    command = "activation_clipping"
    stage = "ranges"
    description = "clipped activation ranges"

    def validate(self, layers: Sequence[LayerInfo], target: Target) -> None:
        match_layers(self.params.layers, layers, self.where)

    def apply(self, backend: RemedyBackend) -> RangeEdit:
        matched = match_layers(self.params.layers, backend.layers, self.where)
        tensors = [layer.output for layer in matched if layer.output in backend.ranges]
        mode, values = self.params.mode, self.params.values
        if mode == "manual":
            new: Ranges = {t: (float(values[0]), float(values[1])) for t in tensors}
        else:
            new = self._measured(backend, tensors)
        changed = {
            t: [round(r, 6) for r in new[t]] for t in tensors if new[t] != backend.ranges[t]
        }
        return RangeEdit(
            new,
            summary={
                "mode": mode,
                "values": values,
                "tensors": len(tensors),
                "changed": len(changed),
                "ranges": dict(list(changed.items())[:20]),
            },
        )

    def _measured(self, backend: RemedyBackend, tensors: list[str]) -> Ranges:
        """Percentile or MSE ranges from the tensors' values over the calibration images,
        a memory-bounded group of tensors per model pass."""
        scheme = backend.target.activations
        out: Ranges = {}
        if not tensors:
            return out
        sizes = backend.tensor_bytes(tensors)
        for group in tensor_groups(tensors, sizes):
            values: dict[str, list[np.ndarray]] = {t: [] for t in group}
            for batch in backend.float_tensors(group):
                for t in group:
                    values[t].append(batch[t].ravel())
            for t in group:
                x = np.concatenate(values.pop(t))
                out[t] = clip_range(x, self.params.mode, self.params.values, scheme)
        return out
