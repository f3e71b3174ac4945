"""Which layers and tensors are quantized, and at which precision.

The public way to enable or disable quantization per layer and per tensor and to set a
layer's precision; the QDQ builder reads it::

    plan = QuantPlan(target)
    plan = plan.set_precision(["/head/*"], "a16_w16")   # fnmatch patterns on layer names
    plan = plan.disable_layers(["/stem/conv/Conv"])
    plan = plan.only(["/blocks.3/conv_dw/Conv"])        # sensitivity: one layer quantized
    plan = plan.replace(quantize_weights=False)          # activations only
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import onnx
from onnx import numpy_helper

from ..errors import ConfigError
from .target import PRECISIONS, QuantScheme, Target

#: Ops whose weights (second input, an initializer) are quantized.
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")

#: Ops that only move or select values: their output shares the input's quantization
#: parameters instead of getting its own (as ONNX Runtime's quantizer does).
PASSTHROUGH_OPS = (
    "Reshape",
    "Flatten",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Identity",
    "MaxPool",
    "Slice",
    "Split",
    "Gather",
    "Expand",
    "DepthToSpace",
    "SpaceToDepth",
    "Pad",
    "Tile",
)


@dataclass(frozen=True)
class LayerInfo:
    """One quantizable layer: a node, its weight (if any) and the tensor whose quantized value
    it produces (after a fused activation)."""

    name: str
    op_type: str
    weight: str | None
    output: str
    fused_activation: str | None = None


@dataclass(frozen=True)
class QuantPlan:
    """Per-layer and per-tensor quantization switches over a :class:`Target`."""

    target: Target
    precision: dict[str, str] = field(default_factory=dict)
    disabled_layers: frozenset[str] = frozenset()
    disabled_tensors: frozenset[str] = frozenset()
    enabled_only: frozenset[str] | None = None
    quantize_weights: bool = True
    quantize_activations: bool = True
    #: Clipped weight ranges by layer name (``weights_clipping``): the largest magnitude kept,
    #: one value (per tensor) or one per output channel. Tuples, not arrays: the plan's repr
    #: is its cache key.
    weight_ranges: dict[str, tuple[float, ...]] = field(default_factory=dict)
    #: Exact weight scales by layer name (one, or one per output channel), read from a QDQ
    #: model made elsewhere (``quantized_model``): used as they are instead of computed.
    weight_scales: dict[str, tuple[float, ...]] = field(default_factory=dict)

    def replace(self, **changes: object) -> QuantPlan:
        return replace(self, **changes)  # type: ignore[arg-type]

    def set_precision(self, patterns: Iterable[str], precision: str) -> QuantPlan:
        if precision not in self.target.precisions:
            raise ConfigError(
                f"precision {precision!r} is not available on target {self.target.name}; "
                f"allowed: {', '.join(self.target.precisions)}"
            )
        return replace(self, precision={**self.precision, **dict.fromkeys(patterns, precision)})

    def clip_weights(self, clips: dict[str, tuple[float, ...]]) -> QuantPlan:
        """Quantize these layers' weights with a clipped range (layer name → max |w| kept)."""
        return replace(self, weight_ranges={**self.weight_ranges, **clips})

    def disable_layers(self, patterns: Iterable[str]) -> QuantPlan:
        return replace(self, disabled_layers=self.disabled_layers | frozenset(patterns))

    def disable_tensors(self, names: Iterable[str]) -> QuantPlan:
        return replace(self, disabled_tensors=self.disabled_tensors | frozenset(names))

    def only(self, patterns: Iterable[str]) -> QuantPlan:
        """Quantize these layers alone (weights and output); everything else stays float."""
        return replace(self, enabled_only=frozenset(patterns))

    # --- queries used by the builder -------------------------------------------------------
    def uses_non_8bit(self) -> bool:
        """Whether any tensor may be quantized to other than 8 bits."""
        t = self.target
        return (
            t.activations.bits != 8
            or t.weights.bits != 8
            or any(PRECISIONS[p] != (8, 8) for p in self.precision.values())
        )

    def layer_enabled(self, layer: LayerInfo) -> bool:
        if _matches(layer, self.disabled_layers):
            return False
        return self.enabled_only is None or _matches(layer, self.enabled_only)

    def layer_precision(self, layer: LayerInfo) -> tuple[int, int] | None:
        """(activation bits, weight bits) set for this layer, or None: the target's default."""
        found = None
        for pattern, precision in self.precision.items():
            if _matches(layer, [pattern]):
                found = precision
        return PRECISIONS[found] if found else None

    def weight_scale(self, layer: LayerInfo) -> tuple[float, ...] | None:
        """The imported weight scales of this layer, or None: computed from the weights."""
        return self.weight_scales.get(layer.name)

    def weight_range(self, layer: LayerInfo) -> tuple[float, ...] | None:
        """The clipped weight range of this layer (max |w| kept), or None: the full range."""
        return self.weight_ranges.get(layer.name)

    def weight_scheme(self, layer: LayerInfo) -> QuantScheme | None:
        if not (self.quantize_weights and self.layer_enabled(layer)) or layer.weight is None:
            return None
        bits = self.layer_precision(layer)
        return self.target.weights if bits is None else self.target.weights.with_bits(bits[1])

    def activation_scheme(self, layer: LayerInfo | None, tensor: str) -> QuantScheme | None:
        """The scheme of an activation tensor (``layer`` = its producer; None: a graph input)."""
        if not self.quantize_activations or tensor in self.disabled_tensors:
            return None
        if layer is None:
            enabled = self.enabled_only is None
            return self.target.activations if enabled else None
        if not self.layer_enabled(layer):
            return None
        bits = self.layer_precision(layer)
        return (
            self.target.activations if bits is None else self.target.activations.with_bits(bits[0])
        )


def weight_axis(node: onnx.NodeProto, ndim: int) -> int | None:
    """The output-channel axis of a weighted node's weight (per-channel quantization)."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type == "MatMul":
        return ndim - 1
    return None


def _matches(layer: LayerInfo, patterns: Iterable[str]) -> bool:
    return any(
        fnmatch.fnmatchcase(layer.name, p) or fnmatch.fnmatchcase(layer.output, p) for p in patterns
    )


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    out = set()
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            out.add(vi.name)
    return out


def find_layers(model: onnx.ModelProto, target: Target) -> list[LayerInfo]:
    """The layers of a (cleaned) float model, in graph order. Passthrough ops and nodes without
    a float output are not layers; an activation in ``target.fused_activations`` that is the
    only consumer of a layer's output is folded into that layer. A folded Relu whose only
    consumer is ``Min(x, constant)`` (a ReLU6 with per-channel bounds, as cross-layer
    equalization writes it) is folded together with the Min: ``fused_activation="Relu+Min"``."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    floats = _float_tensors(model)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in g.output}
    init_dtype = {i.name: numpy_helper.to_array(i).dtype.kind for i in g.initializer}
    absorbed: set[str] = set()
    layers: list[LayerInfo] = []
    for node in g.node:
        if node.name in absorbed or node.op_type in PASSTHROUGH_OPS or node.op_type == "Constant":
            continue
        if not node.output or node.output[0] not in floats:
            continue
        if node.input and all((not i) or i in inits for i in node.input):
            continue  # constant subgraph left unfolded: not a layer
        out = node.output[0]
        fused = None
        users = consumers.get(out, [])
        if (
            len(users) == 1
            and users[0].op_type in target.fused_activations
            and out not in graph_outputs
            and node.op_type not in target.fused_activations
        ):
            fused = users[0]
            absorbed.add(fused.name)
            out = fused.output[0]
        fused_op = fused.op_type if fused else None
        bounded = consumers.get(out, [])
        if (
            fused_op == "Relu"
            and len(bounded) == 1
            and bounded[0].op_type == "Min"
            and out not in graph_outputs
            and len(bounded[0].input) == 2
            and sum(i == out for i in bounded[0].input) == 1
            and all(i == out or i in inits for i in bounded[0].input)
        ):
            absorbed.add(bounded[0].name)
            out = bounded[0].output[0]
            fused_op = "Relu+Min"
        weight = (
            node.input[1]
            if node.op_type in WEIGHTED_OPS and len(node.input) > 1 and node.input[1] in inits
            else None
        )
        if weight is not None and init_dtype[weight] != "f":
            weight = None
        layers.append(LayerInfo(node.name, node.op_type, weight, out, fused_op))
    return layers
