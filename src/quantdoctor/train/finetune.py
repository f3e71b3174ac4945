"""Label-free fine-tuning of the quantized model (Hailo's ``finetune``, a.k.a. QFT): the
trainable copy, in quant mode (fake quantization with ONNX Runtime's numerics,
straight-through gradients), trains its weights and biases so that its outputs reproduce the
float model's on the calibration images (distillation; no labels).

The loss is the squared error of each output normalised by the float output's mean square
(so outputs of different scales count alike), summed over the outputs. Adam with a cosine
learning-rate decay; the weight scales follow the weights (recomputed as the QDQ builder
does), the activation scales stay fixed, so the result is exactly what the recipe's QDQ model
computes with the new weights. If the loss over all images ends higher than it started, the
original weights are kept (reported).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .interpreter import QuantizedTorchModel


@dataclass
class FinetuneSettings:
    """The recipe command's parameters."""

    epochs: int = 4
    dataset_size: int | None = None
    learning_rate: float = 1e-4
    batch_size: int = 8
    seed: int = 0


@dataclass
class FinetuneResult:
    """Distillation loss over the images before and after, and what was trained."""

    images: int
    epochs: int
    steps: int
    loss_before: float
    loss_after: float
    kept_original: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "epochs": self.epochs,
            "steps": self.steps,
            "distillation_loss_before": round(self.loss_before, 6),
            "distillation_loss_after": round(self.loss_after, 6),
            "kept_original": self.kept_original,
            "seconds": round(self.seconds, 1),
        }


def distillation_loss(
    student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], norms: dict[str, float]
) -> torch.Tensor:
    """Sum over outputs of mean squared error / the float output's mean square."""
    total = torch.zeros(())
    for name, t in teacher.items():
        total = total + (student[name] - t).pow(2).mean() / norms[name]
    return total


def _stack(
    inputs: Iterable[np.ndarray], teacher: Iterable[dict[str, np.ndarray]], limit: int | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    xs, ts, n = [], [], 0
    for x, t in zip(inputs, teacher, strict=True):
        xs.append(x)
        ts.append(t)
        n += len(x)
        if limit is not None and n >= limit:
            break
    x = torch.from_numpy(np.ascontiguousarray(np.concatenate(xs)[:limit]))
    names = list(ts[0])
    t = {
        k: torch.from_numpy(np.concatenate([b[k] for b in ts])[:limit].astype(np.float32))
        for k in names
    }
    return x, t


def _loss_over(
    module: QuantizedTorchModel,
    x: torch.Tensor,
    teacher: dict[str, torch.Tensor],
    norms: dict[str, float],
    chunk: int,
) -> float:
    with torch.no_grad():
        total = 0.0
        for start in range(0, len(x), chunk):
            rows = slice(start, start + chunk)
            out = module(x[rows])
            part = {k: v[rows] for k, v in teacher.items()}
            total += float(distillation_loss(out, part, norms)) * len(x[rows])
        return total / len(x)


def finetune(
    module: QuantizedTorchModel,
    input_batches: Iterable[np.ndarray],
    float_outputs: Iterable[dict[str, np.ndarray]],
    settings: FinetuneSettings | None = None,
    advance: Callable[[int], None] = lambda k: None,
) -> FinetuneResult:
    """Fine-tune ``module``'s weights and biases in place (quant mode) to reproduce
    ``float_outputs`` (the float model's outputs for ``input_batches``, batch by batch);
    ``advance(1)`` after each epoch."""
    settings = settings or FinetuneSettings()
    started = time.perf_counter()
    x, teacher = _stack(input_batches, float_outputs, settings.dataset_size)
    norms = {k: max(float(v.pow(2).mean()), 1e-12) for k, v in teacher.items()}
    module.quant_mode()
    params = list(module.weights.values())
    original = [p.detach().clone() for p in params]
    chunk = max(settings.batch_size, 32)
    before = _loss_over(module, x, teacher, norms, chunk)
    n = len(x)
    per_epoch = max(n // settings.batch_size, 1)
    total = per_epoch * settings.epochs
    opt = torch.optim.Adam(params, lr=settings.learning_rate)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    gen = torch.Generator().manual_seed(settings.seed)
    module.train()
    for _ in range(settings.epochs):
        order = torch.randperm(n, generator=gen)
        for k in range(per_epoch):
            rows = order[k * settings.batch_size : (k + 1) * settings.batch_size]
            loss = distillation_loss(
                module(x[rows]), {a: b[rows] for a, b in teacher.items()}, norms
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        advance(1)
    module.eval()
    after = _loss_over(module, x, teacher, norms, chunk)
    kept = after > before
    if kept:
        with torch.no_grad():
            for p, value in zip(params, original, strict=True):
                p.copy_(value)
    return FinetuneResult(
        n, settings.epochs, total, before, min(after, before), kept, time.perf_counter() - started
    )
