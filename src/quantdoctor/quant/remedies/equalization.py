"""``equalization: {layers: [...]}``: cross-layer equalization (Nagel et al. 2019, DFQ) of
consecutive Conv/Gemm pairs, so that per-tensor weights lose less to channels of very
different ranges — the remedy for ``layers.weight_range_imbalance`` on targets without
per-channel weights (hailo8). Float-equivalent: it becomes part of ``fp_optimized``, which
must still match ``native``. The graph transform lives in :mod:`quantdoctor.quant.equalize`.

A model with no equalizable pair is not an error: the edit is empty and says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

from ..equalize import equalize
from ..plan import LayerInfo
from ..target import Target
from .base import FloatModelEdit, Remedy, RemedyBackend, match_layers, register
from .bias_correction import correctable


@register
class Equalization(Remedy):
    command = "equalization"
    stage = "float"
    description = "cross-layer equalization (float-equivalent)"

    def _layers(self, layers: Sequence[LayerInfo]) -> list[str] | None:
        """The node names the ``layers`` patterns select (None: all); a pattern that matches
        no Conv/Gemm layer is an error, not an equalization that silently changes nothing."""
        if not self.params.layers:
            return None
        return [layer.name for layer in match_layers(
            self.params.layers, layers, self.where, keep=correctable, what="Conv/Gemm layer"
        )]

    def validate(self, layers: Sequence[LayerInfo], target: Target) -> None:
        self._layers(layers)

    def apply(self, backend: RemedyBackend) -> FloatModelEdit:
        result = equalize(backend.float_model, self._layers(backend.layers))
        pairs = [asdict(p) for p in result.pairs]
        summary = {
            "pairs": len(pairs),
            "examples": pairs[:8],
            "skipped": len(result.skipped),
            "skipped_examples": [list(s) for s in result.skipped[:8]],
        }
        if not pairs:
            summary["note"] = (
                "no equalizable pair (Conv/Gemm → optional ReLU/ReLU6/LeakyReLU → Conv/Gemm "
                "with a single consumer) in the model"
                + (f" among the layers {self.params.layers}" if self.params.layers else "")
                + ": nothing changed"
            )
        return FloatModelEdit(result.model, float_equivalent=True, summary=summary)
