"""``quantization_param: {layers: [...], precision: a16_w16 | a8_w4 | ...}``: per-layer
precision (Hailo's command of the same name), only among the target's precisions."""

from __future__ import annotations

from collections.abc import Sequence

from ...errors import ConfigError
from ..plan import LayerInfo
from ..target import Target
from .base import PlanEdit, Remedy, RemedyBackend, match_layers, register


@register
class QuantizationParam(Remedy):
    command = "quantization_param"
    stage = "plan"
    description = "per-layer precision"

    def validate(self, layers: Sequence[LayerInfo], target: Target) -> None:
        precision = self.params.precision
        if precision not in target.precisions:
            raise ConfigError(
                f"{self.where}: precision {precision!r} is not available on target "
                f"{target.name}; allowed: {', '.join(target.precisions)}"
            )
        match_layers(self.params.layers, layers, self.where)

    def apply(self, backend: RemedyBackend) -> PlanEdit:
        matched = match_layers(self.params.layers, backend.layers, self.where)
        plan = backend.plan.set_precision(self.params.layers, self.params.precision)
        return PlanEdit(
            plan,
            {"precision": self.params.precision, "layers": [layer.name for layer in matched]},
        )
