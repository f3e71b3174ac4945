"""``calibration: {method: minmax | percentile | mse | entropy, size: 64}``: the activation
ranges of every quantized tensor from the calibration images (the observers live in
:mod:`quantdoctor.quant.calibration`)."""

from __future__ import annotations

from ..calibration import calibrate
from .base import RangeEdit, Remedy, RemedyBackend, register


@register
class Calibration(Remedy):
    command = "calibration"
    stage = "calibration"
    description = "activation ranges from the calibration images"

    def apply(self, backend: RemedyBackend) -> RangeEdit:
        method = self.params.method
        names = backend.tensors_to_calibrate()
        if method == "minmax":
            ranges = backend.float_minmax(names)  # reduced inside the graph: one fast pass
        else:
            ranges = calibrate(
                lambda: backend.float_tensors(names),
                names,
                method,
                self.params.percentile,
                scheme=backend.target.activations,
            )
        summary = {"method": method, "tensors": len(ranges)}
        if method == "percentile":
            summary["percentile"] = self.params.percentile
        return RangeEdit(ranges, replace_all=True, summary=summary)
