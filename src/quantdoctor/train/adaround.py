"""AdaRound (Nagel et al., "Up or Down? Adaptive Rounding for Post-Training Quantization",
ICML 2020) on the trainable copy: each layer's weight rounding learned, layer by layer in
graph order.

For a layer with float weight ``W`` and weight scale ``s`` (the plan's, as the QDQ builder
computes it), the soft-quantized weight is ``s * clamp(floor(W / s) + h(V), qmin, qmax)``
with the rectified sigmoid ``h(V) = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)``. ``V``
minimises, on the calibration images,

    sum_channels (f(W~ x_q + b) - f(W x + b))^2  +  lambda * sum (1 - |2 h(V) - 1|^beta)

where ``x_q`` is the layer's input in the quantized model with the layers before it already
rounded (so each layer also compensates its upstream's error: the paper's "asymmetric
reconstruction"), ``x`` the float model's, and ``f`` the layer's fused ReLU when it has one.
``beta`` anneals from 20 to 2 after a warm start without the regulariser (20% of the
iterations), which drives every ``h`` to 0 or 1. At ``h = frac(W / s)`` (the start) the hard
rounding is round-to-nearest.

The largest magnitude of each scale group (tensor or channel) keeps its nearest rounding, so
the rounded weights give back the same scale when the QDQ builder recomputes it from them;
the weights written back are exactly ``s * q``.

Decided from tensors (the float targets come from the engine); runs only torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..quant.plan import LayerInfo
from .fake_quant import along
from .interpreter import QuantizedTorchModel

ZETA, GAMMA = 1.1, -0.1
BETA_START, BETA_END = 20.0, 2.0
WARM_START = 0.2


@dataclass
class AdaroundSettings:
    """AdaRound's knobs (the recipe command's parameters)."""

    iterations: int = 1000
    batch_size: int = 32
    learning_rate: float = 1e-2
    regularization: float = 0.01
    seed: int = 0


@dataclass
class LayerRounding:
    """What AdaRound did to one layer: the reconstruction error (mean over the calibration
    images of the summed squared output error) with nearest rounding and with the learned
    rounding, and how many weights were rounded the other way than nearest."""

    layer: str
    nearest_error: float
    adaround_error: float
    flipped: int
    weights: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "nearest_error": round(self.nearest_error, 6),
            "adaround_error": round(self.adaround_error, 6),
            "flipped": self.flipped,
            "weights": self.weights,
        }


@dataclass
class AdaroundResult:
    """Per-layer results, in graph order; ``kept_nearest``: layers where the learned rounding
    did not reconstruct better and round-to-nearest was kept."""

    layers: list[LayerRounding] = field(default_factory=list)
    kept_nearest: list[str] = field(default_factory=list)


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def initial_v(rest: torch.Tensor) -> torch.Tensor:
    """``V`` with ``h(V) = rest`` (the fractional part of ``W / s``)."""
    p = ((rest - GAMMA) / (ZETA - GAMMA)).clamp(1e-6, 1 - 1e-6)
    return torch.log(p / (1 - p))


def rounding_regularizer(h: torch.Tensor, beta: float) -> torch.Tensor:
    return (1 - (2 * h - 1).abs().pow(beta)).sum()


def beta_at(step: int, iterations: int) -> float:
    """The annealed exponent (after the warm start; before it the regulariser is off)."""
    start = WARM_START * iterations
    t = (step - start) / max(iterations - start, 1)
    return BETA_END + 0.5 * (BETA_START - BETA_END) * (1 + math.cos(math.pi * min(max(t, 0), 1)))


def _activation(layer: LayerInfo) -> Callable[[torch.Tensor], torch.Tensor]:
    if layer.fused_activation in ("Relu", "Relu+Min"):
        return torch.relu
    return lambda x: x


def _keep_group_max(
    w: torch.Tensor, axis: int | None, nearest: torch.Tensor, q: torch.Tensor
) -> torch.Tensor:
    """``q`` with the largest magnitude of each scale group set to its nearest rounding."""
    a = w.abs()
    if axis is None:
        mask = a == a.max()
    else:
        flat = a.movedim(axis, 0).reshape(a.shape[axis], -1)
        peak = along(flat.amax(1), w.ndim, axis)
        mask = a == peak
    return torch.where(mask, nearest, q)


def _error(y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Summed squared error over channels (axis 1), averaged over everything else."""
    d = (y - target).pow(2)
    return d.sum(1).mean() if d.ndim > 1 else d.mean()


class _LayerProblem:
    """One layer's objective over stacked inputs ``x_q`` and float targets."""

    def __init__(
        self,
        module: QuantizedTorchModel,
        layer: LayerInfo,
        x_q: torch.Tensor,
        env_extra: dict[str, torch.Tensor],
        target: torch.Tensor,
    ) -> None:
        self.module = module
        self.layer = layer
        self.x_q = x_q
        self.extra = env_extra
        self.target = target
        self.f = _activation(layer)
        _, self.step = module.weight_step(layer.name)
        self.inputs = module.node_inputs(layer.name)
        self.weight_pos = self.inputs.index(self.step.output)
        with torch.no_grad():
            self.w = module.weights[module.param_keys[self.step.weight]].detach().clone()
            self.scale = along(
                module.weight_scale(self.step).double(), self.w.ndim, self.step.axis
            )
            ratio = self.w.double() / self.scale
            self.floor = torch.floor(ratio)
            self.rest = (ratio - self.floor).float()
        self.qmin, self.qmax = self.step.scheme.qmin, self.step.scheme.qmax
        #: round-to-nearest, clamped to the integer range
        self.nearest = torch.round(ratio).clamp(self.qmin, self.qmax)

    def weight(self, h: torch.Tensor) -> torch.Tensor:
        q = torch.clamp(self.floor.float() + h, self.qmin, self.qmax)
        return q * self.scale.float()

    def output(self, w: torch.Tensor, rows: torch.Tensor | slice) -> torch.Tensor:
        env = {self.inputs[0]: self.x_q[rows], **self.extra}
        return self.module.run_node_with(self.layer.name, env, {self.weight_pos: w})[0]

    def error(self, w: torch.Tensor, chunk: int = 256) -> float:
        with torch.no_grad():
            n = self.x_q.shape[0]
            total = 0.0
            for start in range(0, n, chunk):
                rows = slice(start, start + chunk)
                y = self.f(self.output(w, rows))
                total += float(_error(y, self.f(self.target[rows]))) * min(chunk, n - start)
            return total / n

    def hard_q(self, v: torch.Tensor) -> torch.Tensor:
        q = torch.clamp(self.floor + (v >= 0).double(), self.qmin, self.qmax)
        return _keep_group_max(self.w, self.step.axis, self.nearest, q)


def optimize_layer(problem: _LayerProblem, settings: AdaroundSettings) -> torch.Tensor:
    """Learn ``V`` for one layer; returns it."""
    v = initial_v(problem.rest).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=settings.learning_rate)
    gen = torch.Generator().manual_seed(settings.seed)
    n = problem.x_q.shape[0]
    target = problem.f(problem.target)
    for it in range(settings.iterations):
        rows = torch.randint(0, n, (min(settings.batch_size, n),), generator=gen)
        h = rectified_sigmoid(v)
        y = problem.f(problem.output(problem.weight(h), rows))
        loss = _error(y, target[rows])
        if it >= WARM_START * settings.iterations and settings.regularization > 0:
            loss = loss + settings.regularization * rounding_regularizer(
                h, beta_at(it, settings.iterations)
            )
        opt.zero_grad()
        loss.backward()
        opt.step()
    return v.detach()


def adaround(
    module: QuantizedTorchModel,
    layers: Sequence[LayerInfo],
    input_batches: Iterable[np.ndarray],
    float_target: Callable[[LayerInfo], np.ndarray],
    settings: AdaroundSettings | None = None,
    advance: Callable[[int], None] = lambda k: None,
) -> AdaroundResult:
    """Round the weights of ``layers`` (graph order) adaptively, in place in ``module``
    (whose parameters become exactly ``s * q``). ``float_target(layer)``: the float model's
    output of the layer's node over the same images, stacked. The module walks the quantized
    graph over all images once, layer by layer, holding only the tensors later steps read."""
    settings = settings or AdaroundSettings()
    module.quant_mode()
    result = AdaroundResult()
    envs = [
        {module.input_names[0]: torch.from_numpy(np.ascontiguousarray(x))} for x in input_batches
    ]
    position = 0
    torch.manual_seed(settings.seed)
    for layer in layers:
        node = module.node_step(layer.name)
        with torch.no_grad():
            for env in envs:
                module.run_steps(env, position, node)
        position = node
        inputs = module.node_inputs(layer.name)
        x_q = torch.cat([env[inputs[0]] for env in envs])
        extra = {name: envs[0][name] for name in inputs[1:] if name and name in envs[0]}
        target = torch.from_numpy(np.ascontiguousarray(float_target(layer), dtype=np.float32))
        problem = _LayerProblem(module, layer, x_q, extra, target)
        v = optimize_layer(problem, settings)
        with torch.no_grad():
            q = problem.hard_q(v)
            learned = (q * problem.scale).float()
            nearest_w = (problem.nearest * problem.scale).float()
            errors = problem.error(nearest_w), problem.error(learned)
            if errors[1] > errors[0]:
                learned = nearest_w
                result.kept_nearest.append(layer.name)
            flipped = int((q != problem.nearest).sum())
            module.weights[module.param_keys[problem.step.weight]].copy_(learned)
            k, _ = module.weight_step(layer.name)
            for env in envs:  # the layer's dequantized weight, recomputed from the new one
                module.run_steps(env, k, k + 1)
        result.layers.append(
            LayerRounding(layer.name, errors[0], min(errors), flipped, int(problem.w.numel()))
        )
        advance(1)
    return result
