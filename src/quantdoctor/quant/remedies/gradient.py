"""``adaround: {...}`` and ``finetune: {...}``: the gradient remedies, on the trainable copy
(``quantdoctor[train]``). Both change the weights the recipe quantizes (not fp_optimized),
label-free, on the calibration images, like their Hailo and AIMET namesakes:

- ``adaround``: each layer's weight rounding learned to reproduce the float layer's output
  (:mod:`quantdoctor.train.adaround`);
- ``finetune``: the weights and biases trained with fake quantization to reproduce the float
  model's outputs (:mod:`quantdoctor.train.finetune`).

They run after bias correction when both are in the recipe (recipe order within the
correction stage), on the plan and ranges the recipe has by then.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...errors import ConfigError
from ...train import torch_available
from ..plan import LayerInfo
from ..target import Target
from .base import FloatModelEdit, Remedy, RemedyBackend, match_layers, register

INSTALL = "pip install 'quantdoctor[train]'"


def _require_torch(where: str) -> None:
    if not torch_available():
        raise ConfigError(f"{where} needs PyTorch, which is not installed: {INSTALL}")


def _weighted(layer: LayerInfo) -> bool:
    return layer.weight is not None and layer.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose")


@register
class Adaround(Remedy):
    command = "adaround"
    stage = "correction"
    description = "adaptive rounding of the weights, layer by layer (AdaRound)"

    def _layers(self, layers: Sequence[LayerInfo]) -> list[LayerInfo]:
        return match_layers(
            self.params.layers or ["*"],
            layers,
            self.where,
            keep=_weighted,
            what="layer with weights",
        )

    def validate(self, layers: Sequence[LayerInfo], target: Target) -> None:
        _require_torch(self.where)
        self._layers(layers)

    def apply(self, backend: RemedyBackend) -> FloatModelEdit:
        from ...train.adaround import AdaroundSettings, adaround
        from ...train.convert import float_model_of

        module = backend.trainable_copy()
        quantized = {s.layer.name for s in module.weight_steps()}
        layers = [la for la in self._layers(backend.layers) if la.name in quantized]

        def target(layer: LayerInfo) -> np.ndarray:
            name = backend.preactivation(layer)
            return np.concatenate([b[name] for b in backend.float_tensors([name])])

        p = self.params
        settings = AdaroundSettings(p.iterations, p.batch_size, p.learning_rate, p.regularization)
        with backend.task(f"adaround ({len(layers)} layers)", len(layers)) as advance:
            result = adaround(module, layers, backend.input_batches(), target, settings, advance)
        worst = sorted(result.layers, key=lambda r: -(r.nearest_error - r.adaround_error))[:8]
        nearest = sum(r.nearest_error for r in result.layers)
        learned = sum(r.adaround_error for r in result.layers)
        return FloatModelEdit(
            float_model_of(module),
            float_equivalent=False,
            summary={
                "layers": len(result.layers),
                "iterations": p.iterations,
                "reconstruction_error_nearest": round(nearest, 6),
                "reconstruction_error_adaround": round(learned, 6),
                "kept_nearest": result.kept_nearest,
                "largest_gains": [r.to_dict() for r in worst],
            },
        )


@register
class Finetune(Remedy):
    command = "finetune"
    stage = "correction"
    description = "fine-tuning with fake quantization, distilled from the float outputs"

    def validate(self, layers: Sequence[LayerInfo], target: Target) -> None:
        _require_torch(self.where)

    def apply(self, backend: RemedyBackend) -> FloatModelEdit:
        from ...train.convert import float_model_of
        from ...train.finetune import FinetuneSettings, finetune

        module = backend.trainable_copy()
        p = self.params
        settings = FinetuneSettings(p.epochs, p.dataset_size, p.learning_rate, p.batch_size)
        with backend.task(f"finetune ({p.epochs} epochs)", p.epochs) as advance:
            result = finetune(
                module,
                backend.input_batches(),
                backend.float_tensors(module.output_names),
                settings,
                advance,
            )
        return FloatModelEdit(
            float_model_of(module), float_equivalent=False, summary=result.to_dict()
        )
